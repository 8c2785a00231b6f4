"""A posted body -> validated events: `parse_json_batch` for `{"events": [...]}`, `parse_protobuf_batch`
for a `finegrain.v1.EventBatch`. Both check the body (size, syntax, count) and every event against
`finegrain.events` (the one definition of a valid event, which the streaming sidecar checks
too), and refuse the whole batch with a `BatchRejected` that names every bad field
(with a "did you mean" for a misspelt one) and carries the refused records as dead letters.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from finegrain.events.schema import MAX_BODY_BYTES, MAX_EVENTS
from finegrain.events.validation import PROTO_RENAMES, proto_as_json, unknown_field_numbers, validate_event
from finegrain.schemas import BehaviorEvent, DeadLetter, EventBatch

log = logging.getLogger(__name__)

# A dead letter of a whole refused body keeps at most this much of it: enough to see what the client
# sent, and far below the broker's message size limit (about 1 MB by default, less than a full body).
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024
SOURCE = "POST /v1/events"

JSON_MEDIA_TYPE = "application/json"
PROTOBUF_MEDIA_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})


BODY_TOO_LARGE = "body_too_large"  # the code of a batch over MAX_BODY_BYTES: a 413, not a 400


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


@dataclass(frozen=True)
class EventProblem:
    """Everything wrong with one event of a batch."""

    index: int
    errors: list[tuple[str, str]]  # (field path, message)
    payload: bytes


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
                    event_count: int = 0, code: str = "invalid_body") -> BatchRejected:
    payload = body[:MAX_DEAD_LETTER_PAYLOAD]
    reason = message
    if len(payload) < len(body):
        reason += f" (payload truncated to the first {len(payload):,} of {len(body):,} bytes)"
    letter = DeadLetter(payload=payload, reason=reason, source=SOURCE, received_ms=received_ms, field=field)
    return BatchRejected(field, message, code=code, event_count=event_count, dead_letters=[letter])


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
        raise _body_rejection("body", _too_large(len(body)), body, received_ms, code=BODY_TOO_LARGE)
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




def parse_protobuf_batch(body: bytes, received_ms: int) -> list[BehaviorEvent]:
    """The events of an EventBatch body; proto3 zero values mean "not set" (quantity 0 is the default 1,
    timestamp_ms 0 is now, an empty event_id gets a uuid4). Raises BatchRejected like the JSON path."""
    if len(body) > MAX_BODY_BYTES:
        raise _body_rejection("body", _too_large(len(body)), body, received_ms, code=BODY_TOO_LARGE)
    batch = EventBatch()
    try:
        batch.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise _body_rejection("body", f"malformed protobuf: not a finegrain.v1.EventBatch ({exc})",
                              body, received_ms) from None
    unknown = unknown_field_numbers(batch)
    if unknown:
        # Random bytes often parse as unknown fields rather than failing outright.
        raise _body_rejection("body", f"malformed protobuf: unknown EventBatch field number(s) {unknown}; "
                              "not a finegrain.v1.EventBatch", body, received_ms)
    _check_count(len(batch.events), body, received_ms)
    events: list[BehaviorEvent] = []
    problems: list[EventProblem] = []
    for index, message in enumerate(batch.events):
        errors: list[tuple[str, str]] = []
        unknown = unknown_field_numbers(message) + (
            unknown_field_numbers(message.context) if message.HasField("context") else [])
        if unknown:
            errors.append((f"events[{index}]", f"unknown field number(s) {unknown} (is the client's schema "
                           "newer than the server's?)"))
        result = validate_event(proto_as_json(message), index, received_ms, renames=PROTO_RENAMES)
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
    return _body_rejection("body", _too_large(declared), head, received_ms, code=BODY_TOO_LARGE)
