"""The real-time profile fold: recent actions, the sliding window, decayed affinities, the session, and
the applied offsets that make a replayed micro-batch count nothing twice."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from finegrain.features.realtime import (
    MINUTE_MS,
    Action,
    RealtimeConfig,
    fold,
    profile_as_of,
    realtime_profiles,
)
from finegrain.features.user import ItemLookup
from finegrain.schemas import EventType

CONFIG = RealtimeConfig(max_recent=3, window_ms=10 * MINUTE_MS, affinity_half_life_ms=10 * MINUTE_MS,
                        max_affinities=2, session_gap_ms=5 * MINUTE_MS)
ITEMS = ItemLookup.build(["a", "b", "c"], ["candle", "candle", "mug"], [1, 1, 2],
                         [["red", "candle"], ["candle"], ["mug"]])
VIEW, CLICK, CART, BUY = EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE
T0 = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS


def act(item: str, kind: int, minute: float, offset: int, session: str = "") -> Action:
    return Action(item, kind, T0 + int(minute * MINUTE_MS), session, partition=0, offset=offset)


def test_recent_actions_newest_first_and_bounded() -> None:
    actions = [act("a", VIEW, 0, 0), act("b", CLICK, 1, 1), act("c", VIEW, 2, 2),
               act("a", CART, 3, 3)]
    profile = fold(None, "u1", actions, ITEMS, CONFIG)
    assert [(r.item_id, r.type) for r in profile.recent] == [
        ("a", EventType.ADD_TO_CART), ("c", EventType.VIEW), ("b", EventType.CLICK)]
    assert profile.user_id == "u1"
    assert profile.updated_ms == T0 + 3 * MINUTE_MS


def test_among_equal_times_the_later_in_the_topic_is_the_newer() -> None:
    basket = [act("a", BUY, 1, 0), act("b", BUY, 1, 1)]
    profile = fold(fold(None, "u1", basket, ITEMS, CONFIG), "u1", [act("c", BUY, 1, 2)], ITEMS, CONFIG)
    assert [r.item_id for r in profile.recent] == ["c", "b", "a"]


def test_the_window_slides_with_event_time() -> None:
    profile = fold(None, "u1", [act("a", VIEW, 0, 0), act("b", VIEW, 0.5, 1),
                                act("c", CLICK, 4, 2)], ITEMS, CONFIG)
    assert dict(profile.counts_by_type) == {EventType.VIEW: 2, EventType.CLICK: 1}
    later = fold(profile, "u1", [act("a", BUY, 12, 3)], ITEMS, CONFIG)
    # 10 minutes before minute 12: the minute-0 bucket slid out, the minute-4 one stays.
    assert dict(later.counts_by_type) == {EventType.CLICK: 1, EventType.PURCHASE: 1}
    assert later.window_start_ms == T0 + 2 * MINUTE_MS
    assert [b.start_ms for b in later.buckets] == [T0 + 4 * MINUTE_MS, T0 + 12 * MINUTE_MS]


def test_affinities_decay_with_their_half_life() -> None:
    profile = fold(None, "u1", [act("b", CART, 0, 0)], ITEMS, CONFIG)
    assert dict(profile.category_affinity) == {"candle": pytest.approx(3.0)}
    later = fold(profile, "u1", [act("c", VIEW, 10, 1)], ITEMS, CONFIG)
    # One half-life later the cart add weighs 1.5, the new view 1.0.
    assert dict(later.category_affinity) == {"candle": pytest.approx(1.5), "mug": pytest.approx(1.0)}
    assert dict(later.term_affinity) == {"candle": pytest.approx(1.5), "mug": pytest.approx(1.0)}


def test_affinities_keep_the_largest_and_spread_over_an_items_terms() -> None:
    profile = fold(None, "u1", [act("a", VIEW, 0, 0), act("c", CLICK, 0, 1)], ITEMS, CONFIG)
    assert dict(profile.term_affinity) == {"mug": pytest.approx(1.5), "candle": pytest.approx(0.5)}


def test_sessions_from_client_ids_or_gaps() -> None:
    profile = fold(None, "u1", [act("a", VIEW, 0, 0), act("b", VIEW, 2, 1),
                                act("a", CLICK, 3, 2)], ITEMS, CONFIG)
    assert profile.session_id == f"gap:{T0}"
    assert list(profile.session_items) == ["a", "b"]
    after_gap = fold(profile, "u1", [act("c", VIEW, 9, 3)], ITEMS, CONFIG)
    assert after_gap.session_id == f"gap:{T0 + 9 * MINUTE_MS}"
    assert list(after_gap.session_items) == ["c"]
    client = fold(after_gap, "u1", [act("b", VIEW, 9.5, 4, session="s-42")], ITEMS, CONFIG)
    assert client.session_id == "s-42"
    assert list(client.session_items) == ["b"]


def test_a_replayed_batch_counts_nothing_twice() -> None:
    batch = [act("a", VIEW, 0, 10), act("b", CLICK, 1, 11)]
    once = fold(None, "u1", batch, ITEMS, CONFIG)
    assert dict(once.applied_offsets) == {0: 11}
    twice = fold(once, "u1", batch, ITEMS, CONFIG)
    assert twice == once
    # A batch that overlaps the applied offsets adds only what is new.
    overlapping = fold(once, "u1", [*batch, act("c", VIEW, 2, 12)], ITEMS, CONFIG)
    assert dict(overlapping.counts_by_type) == {EventType.VIEW: 2, EventType.CLICK: 1}
    assert dict(overlapping.applied_offsets) == {0: 12}


def test_folding_in_batches_equals_folding_at_once() -> None:
    actions = [act("a", VIEW, 0, 0), act("b", CLICK, 1, 1), act("c", VIEW, 7, 2),
               act("a", CART, 8, 3)]
    at_once = fold(None, "u1", actions, ITEMS, CONFIG)
    in_batches = fold(fold(None, "u1", actions[:2], ITEMS, CONFIG), "u1", actions[2:], ITEMS, CONFIG)
    assert in_batches.recent == at_once.recent
    assert in_batches.buckets == at_once.buckets
    assert in_batches.session_items == at_once.session_items
    for key, value in at_once.term_affinity.items():
        assert in_batches.term_affinity[key] == pytest.approx(value)


def test_profile_as_of_sees_only_earlier_actions() -> None:
    actions = [act("a", VIEW, 0, 0), act("b", CLICK, 5, 1)]
    assert profile_as_of("u1", actions, T0, ITEMS, CONFIG) is None
    before = profile_as_of("u1", actions, T0 + 5 * MINUTE_MS, ITEMS, CONFIG)
    assert before is not None and [r.item_id for r in before.recent] == ["a"]


def test_offline_profiles_are_the_purchases_before_the_cut_off() -> None:
    lines = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u1"], "item_id": ["a", "b", "c", "c"],
        "timestamp": pd.to_datetime([T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS, T0 + 10 * MINUTE_MS], unit="ms",
                                    utc=True)})
    profiles = realtime_profiles(lines, datetime.fromtimestamp((T0 + 5 * MINUTE_MS) / 1000, tz=UTC), ITEMS,
                                 CONFIG)
    assert sorted(profiles) == ["u1", "u2"]
    assert [(r.item_id, r.type) for r in profiles["u1"].recent] == [("b", BUY), ("a", BUY)]
    assert profiles["u2"].updated_ms == T0 + 2 * MINUTE_MS
