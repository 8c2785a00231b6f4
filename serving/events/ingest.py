"""What `POST /v1/events` calls: parse the body, produce the batch, and count the outcome; a refused
batch is dead-lettered. The HTTP resource (`serving.api.events`) only maps outcomes to responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from finegrain.settings import Settings
from serving.events.parsing import JSON_MEDIA_TYPE, BatchRejected, parse_json_batch, parse_protobuf_batch
from serving.events.producer import DELIVERY_TIMEOUT_S, BrokerUnavailable, EventProducer

log = logging.getLogger(__name__)

EVENTS = Counter("finegrain_events", "Posted behaviour events by outcome: accepted (delivered to the "
                 "broker), rejected (in a batch refused as invalid), failed (broker did not acknowledge).",
                 ["outcome"])
BATCHES = Counter("finegrain_event_batches", "POST /v1/events requests by outcome.", ["outcome"])


@dataclass(frozen=True)
class Accepted:
    event_ids: list[str]


class EventIngest:
    """Validate a posted batch and produce it; the HTTP resource only maps the outcomes to responses."""

    def __init__(self, producer: EventProducer, *, clock: Callable[[], float] = time.time) -> None:
        self.producer = producer
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *,
                      delivery_timeout_s: float = DELIVERY_TIMEOUT_S) -> EventIngest:
        return cls(EventProducer(settings, delivery_timeout_s=delivery_timeout_s))

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def ingest(self, media_type: str, body: bytes, received_ms: int | None = None) -> Accepted:
        """Raises BatchRejected (already dead-lettered) or BrokerUnavailable."""
        received_ms = received_ms if received_ms is not None else self.now_ms()
        parse = parse_json_batch if media_type == JSON_MEDIA_TYPE else parse_protobuf_batch
        try:
            events = parse(body, received_ms)
        except BatchRejected as rejection:
            self.refuse(rejection)
            raise
        try:
            self.producer.produce_batch(events)
        except BrokerUnavailable:
            EVENTS.labels("failed").inc(len(events))
            BATCHES.labels("failed").inc()
            log.warning("batch of %d events not acknowledged by the broker", len(events), exc_info=True)
            raise
        EVENTS.labels("accepted").inc(len(events))
        BATCHES.labels("accepted").inc()
        return Accepted([event.event_id for event in events])

    def refuse(self, rejection: BatchRejected) -> None:
        """Count a refused batch and keep what was refused in the dead-letter topic."""
        EVENTS.labels("rejected").inc(rejection.event_count)
        BATCHES.labels("rejected").inc()
        self.producer.dead_letter(rejection.dead_letters)

    def close(self) -> None:
        self.producer.close()
