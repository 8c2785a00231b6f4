"""The replay's events: the purchases of the span with their own ids and times, synthetic browsing
before each, in time order, the same every time."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from finegrain.data.replay import BROWSE_BEFORE_MS, replay_events, summarise
from finegrain.errors import DataError

EVENTS = pd.DataFrame({
    "event_id": ["536365-1", "536365-2", "536366-3", "536400-4"],
    "user_id": ["17850", "17850", "13047", "13047"],
    "item_id": ["85123A", "71053", "22633", "22633"],
    "quantity": [6, 6, 3, 1],
    "price": [2.55, 3.39, 1.85, 1.85],
    "invoice": ["536365", "536365", "536366", "536400"],
    "country": ["United Kingdom", "United Kingdom", "France", None],
    "timestamp": pd.to_datetime(["2010-12-01 08:26", "2010-12-01 08:26", "2010-12-01 08:28",
                                 "2010-12-02 09:00"], utc=True),
})


def test_purchases_of_the_span_keep_their_ids_times_and_baskets() -> None:
    events = replay_events(EVENTS, date(2010, 12, 1), date(2010, 12, 2), synthetic=False)
    assert [e["event_id"] for e in events] == ["536365-1", "536365-2", "536366-3"]
    first = events[0]
    assert first["type"] == "purchase" and first["quantity"] == 6 and first["price"] == 2.55
    assert first["timestamp"] == int(pd.Timestamp("2010-12-01 08:26", tz="UTC").timestamp() * 1000)
    assert first["context"] == {"session_id": "536365", "extra": {"invoice": "536365"},
                                "country": "United Kingdom"}


def test_synthetic_browsing_comes_before_its_purchase_and_is_marked() -> None:
    events = replay_events(EVENTS, date(2010, 12, 1), date(2010, 12, 3))
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)
    purchases = {e["event_id"]: e for e in events if e["type"] == "purchase"}
    browsing = [e for e in events if e["type"] != "purchase"]
    assert len(purchases) == 4 and browsing
    for event in browsing:
        assert event["context"]["extra"] == {"synthetic": "true"}
        purchase = purchases[event["event_id"].split(":synthetic:")[0]]
        assert event["item_id"] == purchase["item_id"] and event["user_id"] == purchase["user_id"]
        assert BROWSE_BEFORE_MS[0] <= purchase["timestamp"] - event["timestamp"] <= BROWSE_BEFORE_MS[1]
    assert replay_events(EVENTS, date(2010, 12, 1), date(2010, 12, 3)) == events
    summary = summarise(events, date(2010, 12, 1), date(2010, 12, 3))
    assert (summary.purchases, summary.synthetic, summary.users) == (4, len(browsing), 2)


def test_a_span_without_purchases_or_backwards_is_refused() -> None:
    with pytest.raises(DataError, match="no purchases from 2011-01-01"):
        replay_events(EVENTS, date(2011, 1, 1), date(2011, 1, 2))
    with pytest.raises(DataError, match="must be after"):
        replay_events(EVENTS, date(2010, 12, 2), date(2010, 12, 1))
