"""One behaviour event checked against `finegrain.events.schema`, whoever received it: the API checks a
posted JSON object or protobuf message before producing it, the streaming sidecar checks every record
it reads from the events topic again (another producer may write there) before it counts it.

Errors are (field path, message) pairs, e.g. `("events[3].timestamp", "... is more than 5 minutes in
the future ...")`, with a "did you mean" for a misspelt field.
"""

from __future__ import annotations

import difflib
import uuid
from typing import Any

from google.protobuf.unknown_fields import UnknownFieldSet
from pydantic import ValidationError

from finegrain.events.schema import TYPE_NAMES, EventContextIn, EventIn
from finegrain.schemas import BehaviorEvent, EventContext, EventType

# The protobuf message names the event time `timestamp_ms` where the JSON body says `timestamp`.
PROTO_RENAMES = {"timestamp": "timestamp_ms"}


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



def validate_event(raw: Any, index: int, now_ms: int, *, renames: dict[str, str] | None = None,
                   prefix: str | None = None) -> BehaviorEvent | list[tuple[str, str]]:
    """The event as a BehaviorEvent ready to produce, or its (field path, message) errors; paths start
    with `prefix` (default `events[index]`, its place in a posted batch)."""
    prefix = f"events[{index}]" if prefix is None else prefix
    if not isinstance(raw, dict):
        return [(prefix or "event", f"must be a JSON object, got {type(raw).__name__}")]
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



def unknown_field_numbers(message: Any) -> list[int]:
    fields = UnknownFieldSet(message)
    return sorted({fields[i].field_number for i in range(len(fields))})


def proto_as_json(event: BehaviorEvent) -> dict[str, Any]:
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


def check_stored_event(message: BehaviorEvent, now_ms: int) -> list[tuple[str, str]]:
    """What is wrong with an event read back from the events topic (empty: nothing). Besides the
    schema, a stored event must carry the `event_id` and `timestamp_ms` the API gives every event."""
    errors: list[tuple[str, str]] = []
    unknown = unknown_field_numbers(message) + (
        unknown_field_numbers(message.context) if message.HasField("context") else [])
    if unknown:
        errors.append(("event", f"unknown field number(s) {unknown}"))
    for name in ("event_id", "timestamp_ms"):
        if not getattr(message, name):
            errors.append((name, "is required in a stored event"))
    result = validate_event(proto_as_json(message), 0, now_ms, renames=PROTO_RENAMES, prefix="")
    if not isinstance(result, BehaviorEvent):
        errors.extend(result)
    return errors
