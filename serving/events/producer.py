"""The process's Kafka producer of the events topic and its dead-letter topic.

A batch is produced keyed by user id and waited for until the broker has acknowledged every event
(acks=all, idempotent), within a bound; otherwise `BrokerUnavailable` and nothing is reported as
accepted. Dead letters are queued without waiting. The producer is created on first use in the process,
because gunicorn forks its workers after import and a librdkafka client does not survive a fork;
`EventProducer.close()` flushes it at worker exit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Histogram

from finegrain.codecs import encode
from finegrain.schemas import BehaviorEvent, DeadLetter
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, kafka_producer
from finegrain.storage.contract import KafkaTopics

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter("finegrain_event_dead_letters", "Dead letters of refused events by delivery "
                       "outcome (produced, failed).", ["outcome"])
PRODUCE_SECONDS = Histogram("finegrain_event_produce_seconds", "Time from producing a valid batch to the "
                            "broker's last acknowledgement.",
                            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


# The broker no longer accepts this producer's id or epoch (seen after an outage: the idempotent
# producer bumps its epoch when messages time out, and tansu then fences it on every later batch, which
# librdkafka does not flag as fatal). Only a new producer, with a new id, gets its batches taken again.
_PRODUCER_STATE_ERRORS = frozenset({KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                                    KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError._FENCED})


# While the broker is known to be down, a batch first checks that a bootstrap server accepts a TCP
# connection at all, within this bound, and is refused at once if none does: each POST would otherwise
# hold a sync worker for the whole delivery bound, and with two workers the recommendations queued
# behind the event posts (17 answers in 10 s of broker outage instead of ~300, bench/faults.py). Nothing
# is produced on that path, so nothing can be delivered after the 503.
PROBE_TIMEOUT_S = 0.3
# How long a POST waits for the broker to acknowledge a batch before answering 503: a broker away for
# less than this is waited out, and the posts are acknowledged when it is back.
DELIVERY_TIMEOUT_S = 5.0


class BrokerUnavailable(Exception):
    """The broker did not take or acknowledge the batch in time; nothing may be reported as accepted."""


@dataclass
class _Deliveries:
    """Delivery reports of one batch; librdkafka may run the callbacks in whichever thread polls."""

    pending: int
    errors: list[str] = field(default_factory=list)
    fatal: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def report(self, error: KafkaError | None, message: Message) -> None:
        with self.lock:
            if error is not None:
                self.errors.append(error.str())
                self.fatal = self.fatal or error.fatal() or error.code() in _PRODUCER_STATE_ERRORS
            self.pending -= 1
            if self.pending <= 0:
                self.done.set()


class EventProducer:
    """The process's Kafka producer for the events and dead-letter topics, created on first use."""

    def __init__(self, settings: Settings, *, delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
                 create_topics: bool = True,
                 producer_factory: Callable[..., Producer] = kafka_producer) -> None:
        self.settings = settings
        self.topics = KafkaTopics(settings.kafka_topic_prefix)
        self.delivery_timeout_s = delivery_timeout_s
        self._create_topics = create_topics
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._pid = 0
        self._topics_ready = False
        self._broker_down = False  # the last batch was refused for want of the broker
        self._lock = threading.Lock()

    @property
    def broker(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def _get(self) -> Producer:
        with self._lock:
            # A producer inherited through a fork has no running librdkafka threads: make a new one.
            if self._producer is None or self._pid != os.getpid():
                if self._create_topics and not self._topics_ready:
                    try:
                        ensure_topics(self.settings, [self.topics.events, self.topics.events_dead_letter],
                                      timeout_s=self.delivery_timeout_s)
                    except KafkaException as exc:
                        raise BrokerUnavailable(f"Kafka broker {self.broker} unreachable: {exc}") from None
                    self._topics_ready = True
                timeout_ms = max(1, int(self.delivery_timeout_s * 1000))
                # librdkafka fails a message it could not deliver within our bound itself, so a batch we
                # answer 503 for does not linger in the queue and get delivered long after. Its own log
                # goes to ours rather than to the worker's stderr.
                self._producer = self._factory(self.settings, **{"message.timeout.ms": timeout_ms,
                                                                 "logger": _librdkafka_log})
                self._pid = os.getpid()
            return self._producer

    def produce_batch(self, events: list[BehaviorEvent]) -> None:
        """Produce and wait for every acknowledgement; raises BrokerUnavailable otherwise."""
        if self._broker_down and not self._reachable():
            raise BrokerUnavailable(f"Kafka broker {self.broker} unreachable (no bootstrap server accepts a "
                                    "connection); nothing was accepted, resend it")
        try:
            self._produce(events)
        except BrokerUnavailable:
            self._broker_down = True
            raise
        self._broker_down = False

    def _reachable(self) -> bool:
        for server in self.broker.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                              timeout=PROBE_TIMEOUT_S):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def _produce(self, events: list[BehaviorEvent]) -> None:
        started = time.perf_counter()
        producer = self._get()
        deliveries = _Deliveries(pending=len(events))
        # A little longer than librdkafka's own message timeout, so its verdict usually arrives first.
        deadline = time.monotonic() + self.delivery_timeout_s + 0.5
        for event in events:
            while True:
                try:
                    producer.produce(self.topics.events, key=event.user_id.encode("utf-8"),
                                     value=encode(event), on_delivery=deliveries.report)
                    break
                except BufferError:
                    # The local queue is full: serve delivery reports to make room, within the deadline.
                    if time.monotonic() >= deadline:
                        raise BrokerUnavailable(f"Kafka broker {self.broker} is not keeping up: the "
                                                "producer queue stayed full") from None
                    producer.poll(0.05)
                except KafkaException as exc:
                    if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].fatal():
                        self._discard()
                    raise BrokerUnavailable(f"Kafka broker {self.broker} refused the batch: {exc}") from None
        while not deliveries.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(f"Kafka broker {self.broker} did not acknowledge the batch within "
                                        f"{self.delivery_timeout_s:g} s; nothing was accepted, resend it")
            producer.poll(min(0.05, remaining))
        if deliveries.errors:
            if deliveries.fatal:
                self._discard()
            raise BrokerUnavailable(f"Kafka broker {self.broker} did not take the batch "
                                    f"({deliveries.errors[0]}); nothing was accepted, resend it")
        PRODUCE_SECONDS.observe(time.perf_counter() - started)

    def dead_letter(self, letters: list[DeadLetter]) -> None:
        """Queue dead letters without waiting: the client's 400 must not wait on (or fail with) the DLQ."""
        if not letters:
            return
        try:
            producer = self._get()
            for letter in letters:
                producer.produce(self.topics.events_dead_letter, value=encode(letter),
                                 on_delivery=_dead_letter_report)
            producer.poll(0)
        except (BrokerUnavailable, KafkaException, BufferError) as exc:
            DEAD_LETTERS.labels("failed").inc(len(letters))
            log.warning("could not queue %d dead letter(s) of refused events: %s", len(letters), exc)

    def _discard(self) -> None:
        # After a fatal error (e.g. the idempotent producer lost its sequence state) or a fenced id the
        # producer refuses every later message, so the next request builds a new one instead of failing
        # forever. The old one is not flushed: what it still holds was answered 503, never accepted.
        with self._lock:
            self._producer = None
        log.error("Kafka producer hit a fatal error; a new one will be created on the next batch")

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None and self._pid == os.getpid():
            left = producer.flush(timeout_s)
            if left:
                log.warning("%d event message(s) still unacknowledged at close", left)


_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")


def _dead_letter_report(error: KafkaError | None, message: Message) -> None:
    if error is None:
        DEAD_LETTERS.labels("produced").inc()
    else:
        DEAD_LETTERS.labels("failed").inc()
        log.warning("dead letter not delivered: %s", error.str())
