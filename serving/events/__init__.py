"""Behaviour events posted by client applications (`POST /v1/events`): parsing, validation and
production to Kafka, one module per concern. What an event is and how one is checked is the core's
(`finegrain.events`), shared with the streaming sidecar.

A batch is all-or-nothing. If any event is invalid, nothing of the batch reaches the events topic (the
client fixes it and resends the whole batch, so it never has to work out which half got in), and every
refused record goes to the dead-letter topic with the reason, so operators can see what clients send
wrong. A valid batch is produced keyed by user id (one user's events keep their order) and is only
reported as accepted once the broker has acknowledged every event (acks=all).

    parsing    a JSON or protobuf `EventBatch` body -> validated `BehaviorEvent`s, or a `BatchRejected`
               naming every bad field and holding the dead letters
    producer   the process's Kafka producer of the events and dead-letter topics (`EventProducer`)
    ingest     what the HTTP resource calls: parse, produce, count (`EventIngest`)
"""
