"""Online serving: the Falcon application gunicorn runs (recall, merge, ranking, hot swap)."""
