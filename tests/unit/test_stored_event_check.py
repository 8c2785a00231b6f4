"""The sidecar's check of a record read back from the events topic: the API's schema, plus the id and
time every stored event carries."""

from __future__ import annotations

from finegrain.events.validation import check_stored_event
from finegrain.schemas import BehaviorEvent, EventType

NOW_MS = 1_700_000_000_000


def event(**changes: object) -> BehaviorEvent:
    fields: dict[str, object] = {"event_id": "e-1", "user_id": "13085", "item_id": "85048",
                                 "type": EventType.VIEW, "quantity": 1, "timestamp_ms": NOW_MS - 1000}
    fields.update(changes)
    return BehaviorEvent(**fields)  # type: ignore[arg-type]


def test_a_good_event_has_no_problem() -> None:
    assert check_stored_event(event(), NOW_MS) == []


def test_each_problem_names_its_field() -> None:
    assert [f for f, _ in check_stored_event(event(user_id=""), NOW_MS)] == ["user_id"]
    assert [f for f, _ in check_stored_event(event(event_id=""), NOW_MS)] == ["event_id"]
    assert [f for f, _ in check_stored_event(event(type=7), NOW_MS)] == ["type"]
    future = check_stored_event(event(timestamp_ms=NOW_MS + 3_600_000), NOW_MS)
    assert [f for f, _ in future] == ["timestamp_ms"] and "future" in future[0][1]
    old = check_stored_event(event(timestamp_ms=1_000_000), NOW_MS)
    assert [f for f, _ in old] == ["timestamp_ms"] and "2000-01-01" in old[0][1]
