"""Behaviour events, defined once: what an event is (`schema`: fields, limits, types, timestamps) and
how one is checked (`validation`), for the API that accepts them and the streaming sidecar that reads
them back from Kafka."""
