"""A posted body -> validated events: `parse_json_batch` for `{"events": [...]}`, `parse_protobuf_batch`
for a `finegrain.v1.EventBatch`. Both check the body (size, syntax, count) and every event against
`serving.events.schema`, and refuse the whole batch with a `BatchRejected` that names every bad field
(with a "did you mean" for a misspelt one) and carries the refused records as dead letters.
"""

from __future__ import annotations

import difflib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from pydantic import ValidationError

from finegrain.schemas import BehaviorEvent, DeadLetter, EventBatch, EventContext, EventType
from serving.events.schema import MAX_BODY_BYTES, MAX_EVENTS, TYPE_NAMES, EventContextIn, EventIn

log = logging.getLogger(__name__)

# A dead letter of a whole refused body keeps at most this much of it: enough to see what the client
# sent, and far below the broker's message size limit (about 1 MB by default, less than a full body).
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024
SOURCE = "POST /v1/events"

JSON_MEDIA_TYPE = "application/json"
PROTOBUF_MEDIA_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})


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
