"""The shared feature definitions on small hand-made frames whose every number is worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from finegrain.dates import DAY_MS, as_of_ms
from finegrain.features.catalog import OTHER_CATEGORY
from finegrain.features.history import epoch_ms
from finegrain.features.item import (
    ITEM_FEATURE_NAMES,
    item_feature_matrix,
    item_feature_vector,
    item_features,
    item_stats,
    matrix_rows,
    trend,
)
from finegrain.features.user import USER_WINDOWS_DAYS, ItemLookup, user_profile, user_profiles
from finegrain.schemas import ItemFeatures

AS_OF = date(2010, 11, 10)
AS_OF_MS = 1289347200000  # 2010-11-10T00:00:00Z


def lines(*rows: tuple[str, str, str, int, float, str, str]) -> pd.DataFrame:
    """(user, item, invoice, quantity, price, 'YYYY-MM-DD HH:MM', country) rows, times in UTC."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "invoice", "quantity", "price", "timestamp",
                                        "country"])
    frame["quantity"] = frame["quantity"].astype("int32")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC").astype(
        "datetime64[ms, UTC]")
    return frame


LOOKUP = ItemLookup.build(
    item_ids=["A", "B", "C", "D"],
    categories=["holder", "holder", "lantern", OTHER_CATEGORY],
    price_bands=[1, 1, 4, 7],
    terms=[["heart", "holder"], ["heart", "holder", "star"], ["heart", "lantern"], ["heart", "doormat"]],
)

# One user: invoices 1-4 before the as-of date, 5 exactly at it and 6 after it (both must be ignored).
USER_LINES = lines(
    ("u1", "A", "1", 2, 1.0, "2010-11-08 10:00", "United Kingdom"),   # 1 day 14 h before the as-of
    ("u1", "B", "1", 1, 3.0, "2010-11-08 10:00", "United Kingdom"),
    ("u1", "A", "2", 5, 1.0, "2010-10-20 09:00", "United Kingdom"),   # 20 days 15 h before
    ("u1", "C", "3", 1, 10.0, "2010-06-01 12:00", "France"),          # 161 days before
    ("u1", "B", "4", 1, 3.0, "2009-10-01 00:00", "United Kingdom"),   # 405 days before
    ("u1", "D", "5", 9, 99.0, "2010-11-10 00:00", "Germany"),         # at the as-of: excluded
    ("u1", "D", "6", 9, 99.0, "2010-11-12 08:00", "Germany"),         # after: excluded
)


def test_as_of_is_midnight_utc_and_naive_times_read_as_utc() -> None:
    assert as_of_ms(AS_OF) == AS_OF_MS
    assert as_of_ms(datetime(2010, 11, 10)) == AS_OF_MS
    assert as_of_ms(pd.Timestamp("2010-11-10 01:00", tz="Europe/Paris")) == AS_OF_MS
    zoned = USER_LINES["timestamp"]
    naive = zoned.dt.tz_localize(None).astype("datetime64[ns]")  # what Spark's Arrow conversion gives
    assert list(epoch_ms(zoned)) == list(epoch_ms(naive))
    assert epoch_ms(zoned)[0] == AS_OF_MS - DAY_MS - 14 * 3_600_000


def test_user_totals_averages_and_cut_off() -> None:
    profile = user_profile(USER_LINES, AS_OF, LOOKUP, version="v1")
    assert (profile.user_id, profile.as_of_ms, profile.version) == ("u1", AS_OF_MS, "v1")
    assert profile.purchase_lines == 5  # the lines at and after the as-of time are not counted
    assert profile.baskets == 4
    assert profile.distinct_items == 3
    assert profile.total_spend == pytest.approx(2 + 3 + 5 + 10 + 3)
    assert profile.avg_basket_value == pytest.approx(23 / 4)
    assert profile.avg_basket_size == pytest.approx(5 / 4)
    assert profile.avg_item_price == pytest.approx((1 + 3 + 1 + 10 + 3) / 5)
    assert profile.days_since_last_purchase == 1
    assert profile.days_since_first_purchase == 405


def test_user_windows() -> None:
    windows = {w.days: (w.baskets, w.lines, round(w.spend, 4)) for w in user_profile(USER_LINES, AS_OF,
                                                                                     LOOKUP).windows}
    assert list(windows) == list(USER_WINDOWS_DAYS)
    assert windows == {7: (1, 2, 5.0), 30: (2, 3, 10.0), 90: (2, 3, 10.0), 365: (3, 4, 20.0)}


def test_window_edge_is_inclusive_and_as_of_exclusive() -> None:
    edge = lines(("u", "A", "1", 1, 1.0, "2010-11-03 00:00", "X"),   # exactly 7 days before: inside
                 ("u", "A", "2", 1, 1.0, "2010-11-02 23:59", "X"),   # one minute earlier: outside
                 ("u", "A", "3", 1, 1.0, "2010-11-09 23:59", "X"))
    seven = user_profile(edge, AS_OF, LOOKUP).windows[0]
    assert (seven.days, seven.baskets, seven.lines) == (7, 2, 2)


def test_user_history_most_recent_first() -> None:
    history = user_profile(USER_LINES, AS_OF, LOOKUP).history
    # A and B were both last bought in invoice 1; A and B were each in two invoices: ties go by id.
    assert list(history.item_ids) == ["A", "B", "C"]
    assert list(history.times_bought) == [2, 2, 1]
    assert list(history.quantity) == [7, 2, 1]
    day_of_invoice_1 = (AS_OF_MS - 2 * DAY_MS) // DAY_MS  # 2010-11-08
    assert list(history.last_bought_day) == [day_of_invoice_1, day_of_invoice_1, day_of_invoice_1 - 160]


def test_history_ties_on_time_go_to_the_more_often_bought() -> None:
    frame = lines(("u", "Z", "1", 1, 1.0, "2010-11-01 10:00", "X"),
                  ("u", "Y", "1", 1, 1.0, "2010-11-01 10:00", "X"),
                  ("u", "Z", "0", 1, 1.0, "2010-10-01 10:00", "X"),
                  ("u", "W", "2", 1, 1.0, "2010-11-05 10:00", "X"))
    assert list(user_profile(frame, AS_OF, LOOKUP).history.item_ids) == ["W", "Z", "Y"]


def test_country_is_the_most_frequent_then_the_most_recent() -> None:
    assert user_profile(USER_LINES, AS_OF, LOOKUP).country == "United Kingdom"
    tie = lines(("u", "A", "1", 1, 1.0, "2010-01-01 10:00", "France"),
                ("u", "A", "2", 1, 1.0, "2010-02-01 10:00", "Spain"))
    assert user_profile(tie, AS_OF, LOOKUP).country == "Spain"


def test_preferred_terms_weigh_rare_terms_up() -> None:
    profile = user_profile(USER_LINES, AS_OF, LOOKUP)
    # tf (lines): heart 5, holder 4, star 2, lantern 1; idf = ln(5 / (1 + df)) + 1 over the 4 items.
    idf = {"heart": np.log(5 / 5) + 1, "holder": np.log(5 / 3) + 1, "star": np.log(5 / 2) + 1,
           "lantern": np.log(5 / 2) + 1}
    scores = {"heart": 5 * idf["heart"], "holder": 4 * idf["holder"], "star": 2 * idf["star"],
              "lantern": 1 * idf["lantern"]}
    assert list(profile.preferred_terms) == sorted(scores, key=lambda t: -scores[t])
    assert list(profile.preferred_terms) == ["holder", "heart", "star", "lantern"]


def test_preferred_categories_and_price_band() -> None:
    profile = user_profile(USER_LINES, AS_OF, LOOKUP)
    assert list(profile.preferred_categories) == ["holder", "lantern"]
    assert profile.preferred_price_band == 1
    only_other = lines(("u", "D", "1", 1, 30.0, "2010-11-01 10:00", "X"))
    assert list(user_profile(only_other, AS_OF, LOOKUP).preferred_categories) == []


def test_unknown_items_are_banded_by_their_line_price() -> None:
    frame = lines(("u", "NEW", "1", 1, 12.0, "2010-11-01 10:00", "X"),
                  ("u", "NEW2", "1", 1, 15.0, "2010-11-01 10:00", "X"),
                  ("u", "A", "1", 1, 1.0, "2010-11-01 10:00", "X"))
    profile = user_profile(frame, AS_OF, LOOKUP)
    assert profile.preferred_price_band == 7  # two lines in [10, 20) against one in band 1
    assert list(profile.preferred_terms) == ["holder", "heart"]


def test_a_user_with_nothing_before_the_as_of_gets_an_empty_profile() -> None:
    later = USER_LINES[USER_LINES["invoice"].isin(["5", "6"])]
    profile = user_profile(later, AS_OF, LOOKUP, user_id="u1")
    assert (profile.user_id, profile.purchase_lines, profile.baskets, len(profile.history.item_ids)) == \
        ("u1", 0, 0, 0)
    assert [(w.days, w.lines) for w in profile.windows] == [(d, 0) for d in USER_WINDOWS_DAYS]


def test_many_users_give_the_same_profiles_as_one_at_a_time() -> None:
    other = lines(("u2", "C", "9", 3, 10.0, "2010-09-01 10:00", "France"),
                  ("u0", "A", "8", 1, 1.0, "2010-11-12 10:00", "France"))  # u0: only after the as-of
    frame = pd.concat([other, USER_LINES], ignore_index=True)
    many = list(user_profiles(frame, AS_OF, LOOKUP, version="v"))
    assert [p.user_id for p in many] == ["u1", "u2"]
    assert many[0] == user_profile(USER_LINES, AS_OF, LOOKUP, version="v")
    assert many[1] == user_profile(other.head(1), AS_OF, LOOKUP, version="v")


ITEM_LINES = lines(
    ("u1", "A", "1", 2, 1.0, "2010-11-08 10:00", "X"),   # 7-day window
    ("u1", "A", "2", 1, 1.0, "2010-11-08 15:00", "X"),   # u1 again the same day: not a repurchase
    ("u2", "A", "3", 4, 1.5, "2010-10-20 10:00", "X"),   # 30-day window
    ("u2", "A", "4", 1, 1.5, "2010-09-01 10:00", "X"),   # 90-day window; u2 bought on two days
    ("u3", "A", "5", 1, 1.0, "2010-01-01 10:00", "X"),   # older
    ("u3", "A", "6", 7, 1.0, "2010-11-10 00:00", "X"),   # at the as-of: excluded
    ("u1", "B", "7", 3, 2.0, "2010-07-01 10:00", "X"),   # B sold nothing in the last 90 days
)


def test_item_popularity_buyers_repurchase_units_revenue() -> None:
    stats = item_stats(ITEM_LINES, AS_OF)
    a, b = stats.loc["A"], stats.loc["B"]
    assert (a.popularity_7d, a.popularity_30d, a.popularity_90d) == (2, 3, 4)
    assert a.distinct_buyers == 3
    assert a.repurchase_rate == pytest.approx(1 / 3)
    assert a.units_sold == 9
    assert a.revenue == pytest.approx(2 + 1 + 6 + 1.5 + 1)
    assert a.first_seen_ms == as_of_ms(datetime(2010, 1, 1, 10, tzinfo=UTC))
    assert a.last_seen_ms == as_of_ms(datetime(2010, 11, 8, 15, tzinfo=UTC))
    assert a.trend == pytest.approx((2 / 7) / (3 / 30))
    assert (b.popularity_90d, b.trend, b.repurchase_rate) == (0, 0.0, 0.0)


def test_trend_is_defined_when_nothing_sold() -> None:
    assert trend(0, 0) == 0.0
    assert trend(0, 5) == 0.0
    assert trend(7, 30) == pytest.approx(1.0)


def test_item_features_messages_with_and_without_attributes() -> None:
    attributes = pd.DataFrame({"item_id": ["A"], "description": ["WHITE HEART HOLDER"], "price": [1.25],
                               "price_band": [1], "category": ["holder"], "terms": [["white", "heart",
                                                                                      "holder"]]})
    features = {f.item_id: f for f in item_features(ITEM_LINES, AS_OF, attributes, version="v2")}
    assert sorted(features) == ["A", "B"]
    a, b = features["A"], features["B"]
    assert (a.description, a.price, a.price_band, a.category, list(a.terms)) == \
        ("WHITE HEART HOLDER", 1.25, 1, "holder", ["white", "heart", "holder"])
    assert (a.popularity_7d, a.as_of_ms, a.version) == (2, AS_OF_MS, "v2")
    # B is not in the attributes: the median of its line prices, that price's band, the catch-all.
    assert (b.description, b.price, b.price_band, b.category, list(b.terms)) == \
        ("", 2.0, 3, OTHER_CATEGORY, [])


def test_the_item_feature_vector_follows_the_names_and_survives_a_matrix() -> None:
    a = next(f for f in item_features(ITEM_LINES, AS_OF) if f.item_id == "A")
    vector = item_feature_vector(a)
    assert len(vector) == len(ITEM_FEATURE_NAMES)
    named = dict(zip(ITEM_FEATURE_NAMES, vector, strict=True))
    assert named["popularity_30d"] == 3
    assert named["days_since_last_seen"] == pytest.approx((AS_OF_MS - a.last_seen_ms) / DAY_MS)
    assert named["days_since_first_seen"] == pytest.approx(312 + 14 / 24)
    other = item_feature_vector(ItemFeatures(item_id="Z", as_of_ms=AS_OF_MS, first_seen_ms=AS_OF_MS,
                                             last_seen_ms=AS_OF_MS))
    matrix = item_feature_matrix(["A", "Z"], [vector, other], version="v", as_of_ms=AS_OF_MS)
    assert list(matrix.feature_names) == list(ITEM_FEATURE_NAMES)
    ids, values = matrix_rows(matrix)
    assert ids == ["A", "Z"] and values.shape == (2, len(ITEM_FEATURE_NAMES))
    np.testing.assert_allclose(values[0], np.asarray(vector, dtype=np.float32))
    with pytest.raises(ValueError, match="vectors"):
        item_feature_matrix(["A"], [vector[:-1]], version="v", as_of_ms=AS_OF_MS)
