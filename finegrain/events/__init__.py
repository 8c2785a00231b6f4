"""Behaviour events, defined once: what an event is (`schema`: fields, limits, types, timestamps) and
how one is checked (`validation`), for the API that accepts them and the streaming sidecar that reads
them back from Kafka; and where accepted events are kept (`archive`: the event archive the sidecar
writes and the nightly ingest reads)."""
