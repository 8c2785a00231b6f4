"""Validation of posted event batches, without any service: what is accepted, how it is normalised, and
that every refusal names the field and keeps the refused record for the dead-letter topic."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from finegrain.events.schema import MAX_BODY_BYTES, MAX_EVENTS
from finegrain.schemas import BehaviorEvent, EventBatch, EventContext, EventType
from serving.api.body import read_bounded
from serving.api.events import media_type
from serving.events.parsing import (
    MAX_DEAD_LETTER_PAYLOAD,
    SOURCE,
    BatchRejected,
    parse_json_batch,
    parse_protobuf_batch,
)

NOW_MS = int(datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp() * 1000)
DEC_1_2010_MS = 1291191960000  # 2010-12-01T08:26:00Z, the first invoice of the data


def _event(**fields: Any) -> dict[str, Any]:
    return {"user_id": "13085", "item_id": "85048", "type": "purchase", **fields}


def _body(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def _refusal(body: bytes, parse: Any = parse_json_batch) -> BatchRejected:
    with pytest.raises(BatchRejected) as caught:
        parse(body, NOW_MS)
    return caught.value


def test_a_full_event_becomes_the_behavior_event_with_every_field() -> None:
    raw = _event(type="ADD_TO_CART", quantity=12, price=6.95, timestamp="2010-12-01T08:26:00Z",
                 event_id="e-1", context={"scene": "cart", "session_id": "s1", "country": "United Kingdom",
                                          "device": "ios", "request_id": "r9", "extra": {"ab": "b"}})
    [event] = parse_json_batch(_body(raw), NOW_MS)
    expected = BehaviorEvent(
        event_id="e-1", user_id="13085", item_id="85048", type=EventType.ADD_TO_CART, quantity=12,
        price=6.95, timestamp_ms=DEC_1_2010_MS,
        context=EventContext(scene="cart", session_id="s1", country="United Kingdom", device="ios",
                             request_id="r9", extra={"ab": "b"}))
    assert event == expected


def test_defaults_are_one_unit_free_now_and_a_fresh_uuid() -> None:
    first, second = parse_json_batch(_body(_event(), _event(type="View")), NOW_MS)
    assert (first.quantity, first.price, first.timestamp_ms) == (1, 0.0, NOW_MS)
    assert second.type == EventType.VIEW
    assert uuid.UUID(first.event_id).version == 4
    assert first.event_id != second.event_id
    assert not first.HasField("context")


@pytest.mark.parametrize(("timestamp", "expected_ms"), [
    (DEC_1_2010_MS, DEC_1_2010_MS),
    ("2010-12-01T09:26:00+01:00", DEC_1_2010_MS),
    ("2010-12-01 08:26:00.000Z", DEC_1_2010_MS),
    (NOW_MS + 4 * 60 * 1000, NOW_MS + 4 * 60 * 1000),  # a client clock a little ahead is fine
])
def test_timestamps_in_milliseconds_or_iso_with_an_offset(timestamp: Any, expected_ms: int) -> None:
    [event] = parse_json_batch(_body(_event(timestamp=timestamp)), NOW_MS)
    assert event.timestamp_ms == expected_ms


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"user_id": None}, "user_id", "is required"),
    ({"user_id": ""}, "user_id", "at least 1"),
    ({"user_id": "   "}, "user_id", "blank"),
    ({"user_id": "u" * 65}, "user_id", "at most 64"),
    ({"user_id": 13085}, "user_id", "valid string"),
    ({"item_id": ""}, "item_id", "at least 1"),
    ({"type": "buy"}, "type", "must be one of view, click, add_to_cart, purchase"),
    ({"type": 4}, "type", "must be one of"),
    ({"quantity": 0}, "quantity", "greater than or equal to 1"),
    ({"quantity": 10_001}, "quantity", "less than or equal to 10000"),
    ({"quantity": 2.5}, "quantity", "valid integer"),
    ({"quantity": "2"}, "quantity", "valid integer"),
    ({"quantity": True}, "quantity", "valid integer"),
    ({"price": -0.01}, "price", "greater than or equal to 0"),
    ({"price": "1.0"}, "price", "valid number"),
    ({"timestamp": 1291191960}, "timestamp", "milliseconds, not seconds"),
    ({"timestamp": NOW_MS + 6 * 60 * 1000}, "timestamp", "5 minutes in the future"),
    ({"timestamp": "2010-12-01T08:26:00"}, "timestamp", "UTC offset"),
    ({"timestamp": "yesterday"}, "timestamp", "ISO-8601"),
    ({"timestamp": 1.29e12}, "timestamp", "epoch milliseconds (integer)"),
    ({"event_id": ""}, "event_id", "at least 1"),
    ({"context": {"scene": "home", "page": "x"}}, "context.page", "unknown field 'page'"),
    ({"context": {"extra": {"ab": 1}}}, "context.extra.ab", "valid string"),
    ({"context": "home"}, "context", "valid dictionary"),
    ({"user": "13085"}, "user", "did you mean 'user_id'?"),
    ({"item_id": "\ud800"}, "item_id", "unicode string"),
])
def test_each_bad_field_is_named_with_its_path(fields: dict[str, Any], field: str, words: str) -> None:
    raw = {k: v for k, v in _event(**fields).items() if v is not None}
    refusal = _refusal(_body(_event(), raw))
    assert refusal.field == f"events[1].{field}"
    assert refusal.code == "invalid_event"
    assert any(d["field"] == f"events[1].{field}" and words in d["message"] for d in refusal.details), \
        refusal.details
    assert {d["index"] for d in refusal.details} == {1}


def test_a_missing_field_is_required() -> None:
    raw = _event()
    del raw["type"]
    refusal = _refusal(_body(raw))
    assert refusal.details == [{"index": 0, "field": "events[0].type", "message": "is required"}]


def test_every_bad_event_is_listed_and_kept_whole_for_the_dead_letter_topic() -> None:
    bad_type = _event(type="like")
    typo = {"user": "1", "item_id": "22423", "type": "view", "qty": 3}
    refusal = _refusal(_body(_event(), bad_type, _event(), typo, "not an event"))
    # The typo's unknown fields come before what they leave missing: that is the fix to make.
    assert refusal.field == "events[1].type"
    assert [(d["index"], d["field"]) for d in refusal.details] == [
        (1, "events[1].type"), (3, "events[3].user"), (3, "events[3].qty"), (3, "events[3].user_id"),
        (4, "events[4]")]
    assert refusal.event_count == 5
    assert "3 of 5 events are invalid" in refusal.message
    letters = refusal.dead_letters
    assert [json.loads(letter.payload) for letter in letters] == [bad_type, typo, "not an event"]
    assert [letter.field for letter in letters] == ["events[1].type", "events[3].user", "events[4]"]
    assert all(letter.source == SOURCE and letter.received_ms == NOW_MS for letter in letters)
    assert "events[3].qty: unknown field 'qty'" in letters[1].reason


@pytest.mark.parametrize(("body", "field", "words"), [
    (b"", "body", "empty"),
    (b'{"events": [', "body", "malformed JSON"),
    (b'{"events": [{"price": NaN}]}', "body", "NaN is not valid JSON"),
    (b"\xff\xfe{", "body", "malformed JSON"),
    (b"[]", "body", "JSON object"),
    (b'{"event": []}', "event", "unknown top-level field"),
    (b"{}", "events", "required"),
    (b'{"events": {"user_id": "1"}}', "events", "JSON array"),
    (b'{"events": []}', "events", "empty"),
])
def test_body_level_refusals(body: bytes, field: str, words: str) -> None:
    refusal = _refusal(body)
    assert (refusal.field, refusal.code) == (field, "invalid_body")
    assert words in refusal.message
    [letter] = refusal.dead_letters
    assert (letter.payload, letter.field) == (body, field)


def test_too_many_events_are_refused_before_any_is_validated() -> None:
    refusal = _refusal(_body(*[{"bad": n} for n in range(MAX_EVENTS + 1)]))
    assert refusal.field == "events"
    assert f"at most {MAX_EVENTS}" in refusal.message
    assert refusal.event_count == MAX_EVENTS + 1
    [letter] = refusal.dead_letters
    assert len(letter.payload) <= MAX_DEAD_LETTER_PAYLOAD or letter.payload.startswith(b'{"events"')
    assert parse_json_batch(_body(*[_event()] * MAX_EVENTS), NOW_MS)[MAX_EVENTS - 1].user_id == "13085"


def test_an_oversized_body_keeps_only_a_truncated_dead_letter() -> None:
    body = _body(_event(item_id="x" * (MAX_BODY_BYTES + 1)))
    refusal = _refusal(body)
    assert refusal.field == "body"
    assert "1 MiB" in refusal.message
    [letter] = refusal.dead_letters
    assert letter.payload == body[:MAX_DEAD_LETTER_PAYLOAD]
    assert "truncated" in letter.reason


def test_a_protobuf_batch_uses_proto3_zero_values_as_defaults() -> None:
    batch = EventBatch(events=[
        BehaviorEvent(event_id="p1", user_id="12347", item_id="21171", type=EventType.CLICK, quantity=3,
                      price=1.45, timestamp_ms=DEC_1_2010_MS, context=EventContext(scene="home")),
        BehaviorEvent(user_id="12347", item_id="22195", type=EventType.VIEW),
    ])
    first, second = parse_protobuf_batch(batch.SerializeToString(), NOW_MS)
    assert first == batch.events[0]
    assert (second.quantity, second.price, second.timestamp_ms) == (1, 0.0, NOW_MS)
    assert uuid.UUID(second.event_id).version == 4


def test_protobuf_refusals_name_the_protobuf_field() -> None:
    batch = EventBatch(events=[
        BehaviorEvent(user_id="1", item_id="2", type=EventType.VIEW),
        BehaviorEvent(user_id="1", item_id="2"),
        BehaviorEvent(user_id="1", item_id="2", type=EventType.VIEW, timestamp_ms=NOW_MS + 3_600_000),
        BehaviorEvent(user_id="1", item_id="2", type=EventType.VIEW, quantity=-1, price=-2.0),
    ])
    body = batch.SerializeToString()
    refusal = _refusal(body, parse_protobuf_batch)
    assert [d["field"] for d in refusal.details] == [
        "events[1].type", "events[2].timestamp_ms", "events[3].quantity", "events[3].price"]
    assert [BehaviorEvent.FromString(letter.payload) for letter in refusal.dead_letters] == batch.events[1:]


def test_protobuf_unknown_fields_and_garbage_are_refused() -> None:
    event = BehaviorEvent(user_id="1", item_id="2", type=EventType.VIEW).SerializeToString()
    newer = event + bytes([0x48, 0x05])  # field 9 (varint): a field this server's schema lacks
    batch = EventBatch()
    batch.events.add().MergeFromString(newer)
    refusal = _refusal(batch.SerializeToString(), parse_protobuf_batch)
    assert refusal.details[0]["field"] == "events[0]"
    assert "field number(s) [9]" in refusal.details[0]["message"]
    for garbage in (b"not protobuf at all", b"\xff\xff\xff", b'{"events": []}'):
        assert _refusal(garbage, parse_protobuf_batch).field == "body"
    assert _refusal(b"", parse_protobuf_batch).field == "events"


def test_bounded_reads_stop_one_byte_past_the_limit() -> None:
    assert read_bounded(io.BytesIO(b"x" * 10), 10) == (b"x" * 10, False)
    body, over = read_bounded(io.BytesIO(b"x" * 200_000), 100_000)
    assert over and len(body) == 100_001
    assert read_bounded(io.BytesIO(b""), 10) == (b"", False)


def test_media_type_ignores_parameters_and_case() -> None:
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type(None) == ""
