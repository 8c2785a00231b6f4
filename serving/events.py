"""Behaviour events posted by client applications: parsing, validation and production to Kafka.

A batch is all-or-nothing. If any event is invalid, nothing of the batch reaches the events topic (the
client fixes it and resends the whole batch, so it never has to work out which half got in), and every
refused record goes to the dead-letter topic with the reason, so operators can see what clients send
wrong. A valid batch is produced keyed by user id (one user's events keep their order) and is only
reported as accepted once the broker has acknowledged every event (acks=all).

The Kafka producer is created on first use in the process, because gunicorn forks its workers after
import and a librdkafka client does not survive a fork; `EventIngest.close()` flushes it at worker exit.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from prometheus_client import Counter, Histogram
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from finegrain.codecs import encode
from finegrain.schemas import BehaviorEvent, DeadLetter, EventBatch, EventContext, EventType
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, kafka_producer
from finegrain.storage.contract import KafkaTopics

log = logging.getLogger(__name__)

MAX_EVENTS = 500
MAX_BODY_BYTES = 1024 * 1024
MAX_QUANTITY = 10_000
MAX_ID_CHARS = 64
MAX_CONTEXT_CHARS = 256
MAX_CONTEXT_EXTRA = 32
MAX_FUTURE_MS = 5 * 60 * 1000
MIN_TIMESTAMP_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
# A dead letter of a whole refused body keeps at most this much of it: enough to see what the client
# sent, and far below the broker's message size limit (about 1 MB by default, less than a full body).
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024
SOURCE = "POST /v1/events"

JSON_MEDIA_TYPE = "application/json"
PROTOBUF_MEDIA_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})

TYPE_NAMES: dict[str, int] = {
    "view": EventType.VIEW,
    "click": EventType.CLICK,
    "add_to_cart": EventType.ADD_TO_CART,
    "purchase": EventType.PURCHASE,
}

EVENTS = Counter("finegrain_events", "Posted behaviour events by outcome: accepted (delivered to the "
                 "broker), rejected (in a batch refused as invalid), failed (broker did not acknowledge).",
                 ["outcome"])
BATCHES = Counter("finegrain_event_batches", "POST /v1/events requests by outcome.", ["outcome"])
DEAD_LETTERS = Counter("finegrain_event_dead_letters", "Dead letters of refused events by delivery "
                       "outcome (produced, failed).", ["outcome"])
PRODUCE_SECONDS = Histogram("finegrain_event_produce_seconds", "Time from producing a valid batch to the "
                            "broker's last acknowledgement.",
                            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


class BatchRejected(Exception):
    """A batch refused as a whole; `field` and `details` name what was wrong, `dead_letters` keep it."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_body", event_count: int = 0,
                 details: list[dict[str, Any]] | None = None,
                 dead_letters: list[DeadLetter] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code
        self.event_count = event_count
        self.details = details or []
        self.dead_letters = dead_letters or []


class BrokerUnavailable(Exception):
    """The broker did not take or acknowledge the batch in time; nothing may be reported as accepted."""


# ---------------------------------------------------------------------------------------------------
# Validation


def _identifier(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return value


Text = Annotated[str, Field(max_length=MAX_CONTEXT_CHARS)]
# pydantic already refuses a lone surrogate ("\ud800"), which no UTF-8 consumer downstream could read.
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_identifier)]


class EventContextIn(BaseModel):
    """Where the event happened; every field is optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    scene: Text | None = None
    session_id: Text | None = None
    country: Text | None = None
    device: Text | None = None
    request_id: Text | None = None
    extra: dict[Text, Text] = Field(default_factory=dict, max_length=MAX_CONTEXT_EXTRA)


class EventIn(BaseModel):
    """One posted event, as a client sends it in JSON. Validate with `context={"now_ms": ...}`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Identifier
    item_id: Identifier
    type: Literal["view", "click", "add_to_cart", "purchase"]
    quantity: int = Field(1, ge=1, le=MAX_QUANTITY)
    price: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    timestamp: int | None = None
    event_id: Identifier | None = None
    context: EventContextIn | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _type_case_insensitive(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in TYPE_NAMES:
            return value.lower()
        raise PydanticCustomError(
            "event_type", "must be one of {allowed} (case-insensitive), got {got}",
            {"allowed": ", ".join(TYPE_NAMES), "got": json.dumps(value, default=str)})

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_ms(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        now_ms = int((info.context or {}).get("now_ms") or time.time() * 1000)
        return parse_timestamp(value, now_ms)


def parse_timestamp(value: Any, now_ms: int) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 string with an offset, within the accepted window."""
    if isinstance(value, int) and not isinstance(value, bool):
        millis = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "timestamp", "is not an ISO-8601 date-time (e.g. 2010-12-01T08:26:00Z): {got}",
                {"got": json.dumps(value)}) from None
        if parsed.tzinfo is None:
            # A time without an offset could be any zone; guessing UTC would shift a client's events by hours.
            raise PydanticCustomError(
                "timestamp", "needs a UTC offset (e.g. 2010-12-01T08:26:00Z or +01:00): {got}",
                {"got": json.dumps(value)})
        millis = int(parsed.timestamp() * 1000)
    else:
        raise PydanticCustomError(
            "timestamp", "must be epoch milliseconds (integer) or an ISO-8601 string, got {got}",
            {"got": json.dumps(value, default=str)})
    if millis < MIN_TIMESTAMP_MS:
        # The usual cause is seconds sent where milliseconds are expected.
        raise PydanticCustomError(
            "timestamp", "{got} is before 2000-01-01; timestamps are epoch milliseconds, not seconds",
            {"got": millis})
    if millis > now_ms + MAX_FUTURE_MS:
        raise PydanticCustomError(
            "timestamp", "{got} is more than 5 minutes in the future (server time {now})",
            {"got": millis, "now": now_ms})
    return millis


def _path(prefix: str, location: tuple[int | str, ...], renames: dict[str, str]) -> str:
    path = prefix
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            path += f".{renames.get(part, part)}" if path else renames.get(part, part)
    return path


_EVENT_FIELDS = list(EventIn.model_fields)
_CONTEXT_FIELDS = list(EventContextIn.model_fields)


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        known = _CONTEXT_FIELDS if len(error["loc"]) > 1 else _EVENT_FIELDS
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
        return f"unknown field {name!r}{hint}"
    return str(error["msg"])


@dataclass(frozen=True)
class EventProblem:
    """Everything wrong with one event of a batch."""

    index: int
    errors: list[tuple[str, str]]  # (field path, message)
    payload: bytes


def validate_event(raw: Any, index: int, now_ms: int, *,
                   renames: dict[str, str] | None = None) -> BehaviorEvent | list[tuple[str, str]]:
    """The event as a BehaviorEvent ready to produce, or its (field path, message) errors."""
    prefix = f"events[{index}]"
    if not isinstance(raw, dict):
        return [(prefix, f"must be a JSON object, got {type(raw).__name__}")]
    try:
        event = EventIn.model_validate(raw, context={"now_ms": now_ms})
    except ValidationError as exc:
        # An unknown field is usually a typo of a known one, so its "did you mean" comes first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        return [(_path(prefix, tuple(e["loc"]), renames or {}), _message(e)) for e in errors]
    return to_behavior_event(event, now_ms)


def to_behavior_event(event: EventIn, now_ms: int) -> BehaviorEvent:
    message = BehaviorEvent(
        event_id=event.event_id or str(uuid.uuid4()),
        user_id=event.user_id,
        item_id=event.item_id,
        type=TYPE_NAMES[event.type],  # type: ignore[arg-type]
        quantity=event.quantity,
        price=event.price,
        timestamp_ms=event.timestamp if event.timestamp is not None else now_ms,
    )
    if event.context is not None:
        c = event.context
        message.context.CopyFrom(EventContext(
            scene=c.scene or "", session_id=c.session_id or "", country=c.country or "",
            device=c.device or "", request_id=c.request_id or "", extra=c.extra))
    return message


def _rejection(problems: list[EventProblem], total: int, received_ms: int, *,
               protobuf: bool) -> BatchRejected:
    details = [{"index": p.index, "field": f, "message": m} for p in problems for f, m in p.errors]
    first_field, first_message = problems[0].errors[0]
    bad = len(problems)
    summary = (f"{bad} of {total} event{'s' if total != 1 else ''} {'is' if bad == 1 else 'are'} invalid, "
               f"so none of the batch was accepted; fix and resend the whole batch. "
               f"First: {first_field}: {first_message}")
    letters = [DeadLetter(payload=p.payload, reason="; ".join(f"{f}: {m}" for f, m in p.errors),
                          source=SOURCE, received_ms=received_ms, field=p.errors[0][0])
               for p in problems]
    kind = "protobuf " if protobuf else ""
    log.info("refused a %sbatch of %d events: %d invalid, first %s", kind, total, bad, first_field)
    return BatchRejected(first_field, summary, code="invalid_event", event_count=total, details=details,
                         dead_letters=letters)


def _body_rejection(field: str, message: str, body: bytes, received_ms: int,
                    event_count: int = 0) -> BatchRejected:
    payload = body[:MAX_DEAD_LETTER_PAYLOAD]
    reason = message
    if len(payload) < len(body):
        reason += f" (payload truncated to the first {len(payload):,} of {len(body):,} bytes)"
    letter = DeadLetter(payload=payload, reason=reason, source=SOURCE, received_ms=received_ms, field=field)
    return BatchRejected(field, message, event_count=event_count, dead_letters=[letter])


def _check_count(count: int, body: bytes, received_ms: int) -> None:
    if count == 0:
        raise _body_rejection("events", f"the batch is empty: send between 1 and {MAX_EVENTS} events", body,
                              received_ms)
    if count > MAX_EVENTS:
        raise _body_rejection("events", f"{count} events in one batch; at most {MAX_EVENTS} are accepted, "
                              "split the batch", body, received_ms, count)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_batch(body: bytes, received_ms: int) -> list[BehaviorEvent]:
    """The events of a JSON body `{"events": [...]}`; raises BatchRejected naming every bad field."""
    if len(body) > MAX_BODY_BYTES:
        raise _body_rejection("body", _too_large(len(body)), body, received_ms)
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = "the body is empty" if not body.strip() else str(exc)
        raise _body_rejection("body", f"malformed JSON: {detail}", body, received_ms) from None
    if not isinstance(document, dict):
        raise _body_rejection("body", 'expected a JSON object {"events": [...]}, got '
                              f"{type(document).__name__}", body, received_ms)
    unknown = sorted(set(document) - {"events"})
    if unknown:
        raise _body_rejection(unknown[0], f"unknown top-level field(s) {', '.join(map(repr, unknown))}; the "
                              'body is {"events": [...]}', body, received_ms)
    if "events" not in document:
        raise _body_rejection("events", 'is required: the body is {"events": [...]}', body, received_ms)
    raw_events = document["events"]
    if not isinstance(raw_events, list):
        raise _body_rejection("events", f"must be a JSON array, got {type(raw_events).__name__}",
                              body, received_ms)
    _check_count(len(raw_events), body, received_ms)
    events: list[BehaviorEvent] = []
    problems: list[EventProblem] = []
    for index, raw in enumerate(raw_events):
        result = validate_event(raw, index, received_ms)
        if isinstance(result, BehaviorEvent):
            events.append(result)
        else:
            payload = json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
            problems.append(EventProblem(index, result, payload))
    if problems:
        raise _rejection(problems, len(raw_events), received_ms, protobuf=False)
    return events


_PROTO_RENAMES = {"timestamp": "timestamp_ms"}


def _unknown_field_numbers(message: Any) -> list[int]:
    fields = UnknownFieldSet(message)
    return sorted({fields[i].field_number for i in range(len(fields))})


def _proto_as_json(event: BehaviorEvent) -> dict[str, Any]:
    """The protobuf event in the JSON shape, with proto3 zero values read as "not set"."""
    raw: dict[str, Any] = {}
    for name in ("user_id", "item_id", "event_id"):
        if getattr(event, name):
            raw[name] = getattr(event, name)
    if event.type != EventType.EVENT_TYPE_UNSPECIFIED:
        names = {number: name for name, number in TYPE_NAMES.items()}
        raw["type"] = names.get(event.type, event.type)
    if event.quantity:
        raw["quantity"] = event.quantity
    if event.price:
        raw["price"] = event.price
    if event.timestamp_ms:
        raw["timestamp"] = event.timestamp_ms
    if event.HasField("context"):
        c = event.context
        context: dict[str, Any] = {name: getattr(c, name) for name in _CONTEXT_FIELDS
                                   if name != "extra" and getattr(c, name)}
        if c.extra:
            context["extra"] = dict(c.extra)
        raw["context"] = context
    return raw


def parse_protobuf_batch(body: bytes, received_ms: int) -> list[BehaviorEvent]:
    """The events of an EventBatch body; proto3 zero values mean "not set" (quantity 0 is the default 1,
    timestamp_ms 0 is now, an empty event_id gets a uuid4). Raises BatchRejected like the JSON path."""
    if len(body) > MAX_BODY_BYTES:
        raise _body_rejection("body", _too_large(len(body)), body, received_ms)
    batch = EventBatch()
    try:
        batch.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise _body_rejection("body", f"malformed protobuf: not a finegrain.v1.EventBatch ({exc})",
                              body, received_ms) from None
    unknown = _unknown_field_numbers(batch)
    if unknown:
        # Random bytes often parse as unknown fields rather than failing outright.
        raise _body_rejection("body", f"malformed protobuf: unknown EventBatch field number(s) {unknown}; "
                              "not a finegrain.v1.EventBatch", body, received_ms)
    _check_count(len(batch.events), body, received_ms)
    events: list[BehaviorEvent] = []
    problems: list[EventProblem] = []
    for index, message in enumerate(batch.events):
        errors: list[tuple[str, str]] = []
        unknown = _unknown_field_numbers(message) + (
            _unknown_field_numbers(message.context) if message.HasField("context") else [])
        if unknown:
            errors.append((f"events[{index}]", f"unknown field number(s) {unknown} (is the client's schema "
                           "newer than the server's?)"))
        result = validate_event(_proto_as_json(message), index, received_ms, renames=_PROTO_RENAMES)
        if isinstance(result, BehaviorEvent) and not errors:
            events.append(result)
        else:
            errors.extend([] if isinstance(result, BehaviorEvent) else result)
            problems.append(EventProblem(index, errors, message.SerializeToString()))
    if problems:
        raise _rejection(problems, len(batch.events), received_ms, protobuf=True)
    return events


def _too_large(size: int | None) -> str:
    shown = f"{size:,} bytes" if size is not None else f"over {MAX_BODY_BYTES:,} bytes"
    return f"the body is {shown}; at most {MAX_BODY_BYTES:,} bytes (1 MiB) per batch, split the batch"


def oversized(declared: int | None, received_ms: int, head: bytes = b"") -> BatchRejected:
    """The refusal of a body over the limit; `head` is what was read of it, if anything."""
    return _body_rejection("body", _too_large(declared), head, received_ms)


# ---------------------------------------------------------------------------------------------------
# Producing


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
                self.fatal = self.fatal or error.fatal()
            self.pending -= 1
            if self.pending <= 0:
                self.done.set()


class EventProducer:
    """The process's Kafka producer for the events and dead-letter topics, created on first use."""

    def __init__(self, settings: Settings, *, delivery_timeout_s: float = 5.0, create_topics: bool = True,
                 producer_factory: Callable[..., Producer] = kafka_producer) -> None:
        self.settings = settings
        self.topics = KafkaTopics(settings.kafka_topic_prefix)
        self.delivery_timeout_s = delivery_timeout_s
        self._create_topics = create_topics
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._pid = 0
        self._topics_ready = False
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
        # After a fatal error (e.g. the idempotent producer lost its sequence state) the producer refuses
        # every later message, so the next request builds a new one instead of failing forever.
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


# ---------------------------------------------------------------------------------------------------
# The service the HTTP resource calls


@dataclass(frozen=True)
class Accepted:
    event_ids: list[str]


class EventIngest:
    """Validate a posted batch and produce it; the HTTP resource only maps the outcomes to responses."""

    def __init__(self, producer: EventProducer, *, clock: Callable[[], float] = time.time) -> None:
        self.producer = producer
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, delivery_timeout_s: float = 5.0) -> EventIngest:
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
