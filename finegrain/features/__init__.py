"""Feature definitions shared by the batch jobs and serving, so both compute a feature the same way."""
