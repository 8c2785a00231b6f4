"""The ranker's user x item feature vector (finegrain/features/ranking.py): hand-computed values, missing
values, the item table from packed blocks, and the point-in-time guard."""

from __future__ import annotations

import numpy as np
import pytest

from finegrain.dates import DAY_MS
from finegrain.features.item import ITEM_FEATURE_NAMES, item_feature_matrix, item_feature_vector
from finegrain.features.ranking import (
    RANKING_FEATURE_NAMES,
    RECALL_CHANNELS,
    ItemTable,
    ranking_features,
)
from finegrain.recall.item_to_item import ItemToItemConfig, seed_weights
from finegrain.schemas import (
    EventType,
    ItemFeatures,
    PurchaseHistory,
    RealtimeProfile,
    RecentAction,
    UserProfile,
    WindowStats,
)

TODAY = 14_900  # days since the epoch
AS_OF_MS = TODAY * DAY_MS


def item(item_id: str, price: float, band: int, category: str, popularity_7d: int, as_of_ms: int = AS_OF_MS
         ) -> ItemFeatures:
    return ItemFeatures(item_id=item_id, price=price, price_band=band, category=category,
                        popularity_7d=popularity_7d, popularity_30d=3 * popularity_7d, distinct_buyers=7,
                        repurchase_rate=0.25, trend=1.5, units_sold=40, revenue=80.0,
                        first_seen_ms=as_of_ms - 100 * DAY_MS, last_seen_ms=as_of_ms - 2 * DAY_MS,
                        as_of_ms=as_of_ms)


ITEMS = [item("b", 2.0, 1, "mug", 4), item("a", 1.0, 0, "candle", 9), item("c", 8.0, 3, "bag", 1)]


def profile() -> UserProfile:
    user = UserProfile(user_id="u1", as_of_ms=AS_OF_MS, baskets=10, distinct_items=2, total_spend=200.0,
                       avg_basket_size=3.0, avg_basket_value=20.0, avg_item_price=2.0,
                       days_since_last_purchase=5, days_since_first_purchase=100,
                       preferred_categories=["mug", "candle"], preferred_price_band=1)
    user.windows.extend([WindowStats(days=7, baskets=1), WindowStats(days=30, baskets=2),
                         WindowStats(days=90, baskets=6), WindowStats(days=365, baskets=10)])
    user.history.CopyFrom(PurchaseHistory(item_ids=["b", "a"], times_bought=[4, 1],
                                          last_bought_day=[TODAY - 5, TODAY - 50], quantity=[48.0, 6.0]))
    return user


def features(candidates: list[str], recall: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    scores = recall or {"item_to_item": np.array([30.0, 0.0, 3.0, 1.0][:len(candidates)]),
                        "popularity": np.array([0.0, 50.0, 0.0, 0.0][:len(candidates)])}
    matrix = ranking_features(profile(), candidates, scores, ItemTable.from_features(ITEMS))
    assert matrix.shape == (len(candidates), len(RANKING_FEATURE_NAMES))
    assert matrix.dtype == np.float32
    return {name: matrix[:, i] for i, name in enumerate(RANKING_FEATURE_NAMES)}


def test_feature_names_are_unique_and_cover_every_item_feature() -> None:
    assert len(set(RANKING_FEATURE_NAMES)) == len(RANKING_FEATURE_NAMES)
    assert all(f"item_{name}" in RANKING_FEATURE_NAMES for name in ITEM_FEATURE_NAMES)
    assert {f"recall_{channel}" for channel in RECALL_CHANNELS} <= set(RANKING_FEATURE_NAMES)


def test_hand_computed_user_item_values() -> None:
    f = features(["b", "c", "a", "zzz"])
    np.testing.assert_array_equal(f["bought_before"], [1, 0, 1, 0])
    np.testing.assert_array_equal(f["times_bought"], [4, 0, 1, 0])
    np.testing.assert_array_equal(f["days_since_bought"][[0, 2]], [5, 50])
    assert np.isnan(f["days_since_bought"][[1, 3]]).all()
    np.testing.assert_array_equal(f["units_bought"], [48, 0, 6, 0])
    np.testing.assert_allclose(f["basket_share"], [0.4, 0.0, 0.1, 0.0])
    # 100 days of tenure over 4 purchases: one every 25 days, last one 5 days ago.
    np.testing.assert_allclose(f["days_per_purchase"][[0, 2]], [25.0, 100.0])
    np.testing.assert_allclose(f["cycle_due"][[0, 2]], [0.2, 0.5])
    np.testing.assert_array_equal(f["days_before_last_basket"][[0, 2]], [0, 45])
    expected_weight = seed_weights(np.array([4.0, 1.0]), np.array([TODAY - 5, TODAY - 50]), TODAY,
                                   ItemToItemConfig())
    np.testing.assert_allclose(f["seed_weight"][[0, 2]], expected_weight, rtol=1e-6)
    np.testing.assert_array_equal(f["seed_weight"][[1, 3]], [0, 0])


def test_recall_values_ranks_and_neighbour_part() -> None:
    f = features(["b", "c", "a", "zzz"])
    np.testing.assert_array_equal(f["recall_item_to_item"], [30, 0, 3, 1])
    # Rank 1 = the channel's best; a candidate it did not recall has no rank.
    np.testing.assert_array_equal(f["recall_item_to_item_rank"][[0, 2, 3]], [1, 2, 3])
    assert np.isnan(f["recall_item_to_item_rank"][1])
    np.testing.assert_allclose(f["recall_item_to_item_share"], [1.0, 0.0, 0.1, 1 / 30], rtol=1e-6)
    np.testing.assert_array_equal(f["recall_channels"], [1, 1, 1, 1])
    np.testing.assert_array_equal(f["recall_popularity"], [0, 50, 0, 0])
    # The repeat term (10 x seed weight) comes off the score; the rest is neighbour evidence.
    weight_b = seed_weights(np.array([4.0]), np.array([TODAY - 5]), TODAY, ItemToItemConfig())[0]
    assert f["recall_item_to_item_neighbours"][0] == pytest.approx(max(30 - 10 * weight_b, 0.0), rel=1e-5)
    assert f["recall_item_to_item_neighbours"][3] == pytest.approx(1.0)


def test_user_and_item_values_and_taste_match() -> None:
    f = features(["b", "c", "a", "zzz"])
    np.testing.assert_array_equal(f["user_baskets"], [10] * 4)
    np.testing.assert_array_equal(f["user_baskets_30d"], [2] * 4)
    np.testing.assert_array_equal(f["user_candidates"], [4] * 4)
    np.testing.assert_array_equal(f["item_price"][:3], [2.0, 8.0, 1.0])
    np.testing.assert_array_equal(f["item_popularity_7d"][:3], [4, 1, 9])
    np.testing.assert_allclose(f["item_days_since_last_seen"][:3], [2, 2, 2])
    # An item the table does not know has missing values, not zeros.
    for name in ("item_price", "item_popularity_7d", "category_rank", "price_ratio", "price_band_gap"):
        assert np.isnan(f[name][3]), name
    np.testing.assert_array_equal(f["category_rank"][:3], [1, 0, 2])  # mug first, bag not preferred
    np.testing.assert_array_equal(f["price_band_gap"][:3], [0, 2, -1])
    np.testing.assert_allclose(f["price_ratio"][:3], [1.0, 4.0, 0.5])


def test_empty_candidates_and_cold_user() -> None:
    assert ranking_features(profile(), [], {}, ItemTable.from_features(ITEMS)).shape == \
        (0, len(RANKING_FEATURE_NAMES))
    cold = UserProfile(user_id="new", as_of_ms=AS_OF_MS)
    matrix = ranking_features(cold, ["a"], {"popularity": np.array([5.0])}, ItemTable.from_features(ITEMS))
    row = dict(zip(RANKING_FEATURE_NAMES, matrix[0], strict=True))
    assert row["bought_before"] == 0 and row["recall_popularity"] == 5 and row["recall_item_to_item"] == 0
    assert row["item_popularity_7d"] == 9


def test_item_table_from_packed_blocks_maps_columns_by_name() -> None:
    by_features = ItemTable.from_features(ITEMS)
    # A block written with the columns in reverse order must read back the same.
    names = tuple(reversed(ITEM_FEATURE_NAMES))
    block = item_feature_matrix([i.item_id for i in ITEMS], [item_feature_vector(i) for i in ITEMS],
                                version="v", as_of_ms=AS_OF_MS)
    values = np.asarray(block.values).reshape(len(ITEMS), -1)[:, ::-1]
    del block.feature_names[:]
    block.feature_names.extend(names)
    del block.values[:]
    block.values.extend(values.ravel().tolist())
    table = ItemTable.from_matrices([block], {i.item_id: i.category for i in ITEMS})
    np.testing.assert_array_equal(table.item_ids, by_features.item_ids)
    np.testing.assert_allclose(table.values, by_features.values)
    np.testing.assert_array_equal(table.categories, by_features.categories)
    candidates = ["c", "a", "b"]
    recall = {"item_to_item": np.array([1.0, 2.0, 3.0])}
    np.testing.assert_array_equal(ranking_features(profile(), candidates, recall, table),
                                  ranking_features(profile(), candidates, recall, by_features))


def test_item_features_from_after_the_profile_are_refused() -> None:
    later = ItemTable.from_features([item("a", 1.0, 0, "candle", 9, as_of_ms=AS_OF_MS + DAY_MS)])
    with pytest.raises(ValueError, match="newer than the profile"):
        ranking_features(profile(), ["a"], {}, later)


def test_bad_recall_input_is_refused() -> None:
    table = ItemTable.from_features(ITEMS)
    with pytest.raises(ValueError, match="unknown recall channel"):
        ranking_features(profile(), ["a"], {"made_up": np.array([1.0])}, table)
    with pytest.raises(ValueError, match="shape"):
        ranking_features(profile(), ["a", "b"], {"item_to_item": np.array([1.0])}, table)
    with pytest.raises(ValueError, match="different as-of"):
        ItemTable.from_features([item("a", 1, 0, "x", 1), item("b", 1, 0, "x", 1, as_of_ms=AS_OF_MS - 1)])


def test_ranked_lists_and_metrics_of_scored_rows() -> None:
    from finegrain.training.training_set import TrainingSet
    from models.evaluate_rankers import group_metrics, top_rows

    width = len(RANKING_FEATURE_NAMES)
    rows = TrainingSet(features=np.zeros((5, width), np.float32), labels=np.array([0, 1, 1, 0, 0], np.int8),
                       item_ids=np.array(list("abcde"), dtype=object),
                       group_users=np.array(["u", "v"], object),
                       group_cutoffs=np.array(["2010-10-11"] * 2, object), group_sizes=np.array([3, 2]),
                       n_targets=np.array([2, 4]))
    scores = np.array([0.9, 0.5, np.nan, 0.1, 0.2])
    # A NaN score (not recalled) is left out; ties and padding as documented.
    np.testing.assert_array_equal(top_rows(rows, scores, 3), [[0, 1, -1], [4, 3, -1]])
    figures = group_metrics(rows, scores, ks=(2,))
    # User u: hit at rank 2 of 2 targets -> recall 0.5; user v: no hit.
    assert figures["Recall@2"] == pytest.approx(0.25)
    assert figures["HR@2"] == pytest.approx(0.5)
    assert figures["NDCG@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)


def test_realtime_features_read_the_latest_actions() -> None:
    realtime = RealtimeProfile(user_id="u1", updated_ms=AS_OF_MS - 1000,
                               category_affinity={"mug": 2.5})
    for item_id, kind, ago in (("b", EventType.ADD_TO_CART, 1000), ("c", EventType.VIEW, 2000),
                               ("b", EventType.VIEW, 3000)):
        realtime.recent.append(RecentAction(item_id=item_id, type=kind, timestamp_ms=AS_OF_MS - ago))
    scores = {"realtime": np.array([4.0, 0.0, 1.0])}
    matrix = ranking_features(profile(), ["b", "a", "c"], scores, ItemTable.from_features(ITEMS),
                              realtime=realtime)
    column = {name: i for i, name in enumerate(RANKING_FEATURE_NAMES)}
    # A cart add (weight 3) as the latest action, a view (1) two actions back: 3 + 2^(-2/5).
    assert matrix[0, column["realtime_own_weight"]] == pytest.approx(3.0 + 2 ** -0.4)
    assert matrix[2, column["realtime_own_weight"]] == pytest.approx(2 ** -0.2)
    assert matrix[1, column["realtime_own_weight"]] == 0.0
    np.testing.assert_array_equal(matrix[:, column["realtime_category_affinity"]], [2.5, 0.0, 0.0])
    np.testing.assert_array_equal(matrix[:, column["recall_realtime"]], [4.0, 0.0, 1.0])
    without = ranking_features(profile(), ["b"], {}, ItemTable.from_features(ITEMS))
    assert without[0, column["realtime_own_weight"]] == 0.0
