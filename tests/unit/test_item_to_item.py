"""The item-to-item scorer (one user and batch agree, hand-computed scores) and the similarity kernels
of spark_jobs/item_similarity.py against brute-force definitions of cosine and Swing."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from finegrain.recall.item_to_item import (
    History,
    ItemToItemConfig,
    NeighbourMatrix,
    score_history,
    score_users,
    seed_matrix,
    seed_weights,
    seeds,
)
from finegrain.recall.similarity import (
    SimilarityConfig,
    build_matrix,
    cosine_block,
    swing_item,
    top_neighbours,
)
from finegrain.schemas import PurchaseHistory, ScoredItemList

TODAY = 15_000
NEIGHBOURS = {
    "a": (["x", "y", "b"], [0.8, 0.4, 0.2]),
    "b": ScoredItemList(item_ids=["y", "z"], scores=[2.0, 1.0]),
}


def test_seed_weight_is_frequency_times_half_life_decay() -> None:
    config = ItemToItemConfig(half_life_days=10)
    weights = seed_weights(np.array([3, 1, 2]), np.array([TODAY, TODAY - 10, TODAY - 20]), TODAY, config)
    assert weights == pytest.approx([3.0, 0.5, 0.5])


def test_hand_computed_scores_with_repeats() -> None:
    history = PurchaseHistory(item_ids=["a", "b"], times_bought=[2, 1], last_bought_day=[TODAY, TODAY])
    config = ItemToItemConfig(self_weight=1.0)
    result = score_history(history, NEIGHBOURS, TODAY, k=10, config=config)
    # Lists are divided by their best score: a -> x 1, y 0.5, b 0.25; b -> y 1, z 0.5. Weights a 2, b 1.
    expected = {"a": 2.0, "b": 2 * 0.25 + 1.0, "x": 2.0, "y": 2 * 0.5 + 1.0, "z": 0.5}
    assert dict(zip(result.item_ids, result.scores, strict=True)) == pytest.approx(expected)
    # Ties (a, x, y at 2.0) go by item id.
    assert result.item_ids == ["a", "x", "y", "b", "z"]


def test_exclude_bought_drops_history_and_repeat_term() -> None:
    history = History(np.array(["a", "b"], dtype=object), np.array([2.0, 1.0]), np.array([TODAY, TODAY]))
    result = score_history(history, NEIGHBOURS, TODAY, k=10, exclude_bought=True)
    # x = 2 * 1, y = 2 * 0.5 + 1 * 1 (a tie with x, broken by id), z = 1 * 0.5.
    assert result.item_ids == ["x", "y", "z"]
    assert result.scores == pytest.approx([2.0, 2.0, 0.5])


def test_a_heavy_self_weight_ranks_repeats_first() -> None:
    history = PurchaseHistory(item_ids=["a", "b"], times_bought=[1, 3], last_bought_day=[TODAY, TODAY])
    result = score_history(history, NEIGHBOURS, TODAY, k=3)
    assert result.item_ids[:2] == ["b", "a"]


def test_max_seeds_keeps_the_heaviest() -> None:
    history = PurchaseHistory(item_ids=["a", "b", "c"], times_bought=[1, 5, 3],
                              last_bought_day=[TODAY, TODAY, TODAY])
    ids, weights = seeds(history, TODAY, ItemToItemConfig(max_seeds=2))
    assert ids.tolist() == ["b", "c"]
    assert weights.tolist() == [5.0, 3.0]
    result = score_history(history, NEIGHBOURS, TODAY, k=10, config=ItemToItemConfig(max_seeds=2))
    assert "x" not in result.item_ids  # only a's list holds x, and a is not a seed


def test_unknown_seeds_and_empty_history_give_what_they_can() -> None:
    history = PurchaseHistory(item_ids=["nope"], times_bought=[1], last_bought_day=[TODAY])
    assert score_history(history, NEIGHBOURS, TODAY, k=5).item_ids == ["nope"]
    assert score_history(history, NEIGHBOURS, TODAY, k=5, exclude_bought=True).item_ids == []
    assert score_history(PurchaseHistory(), NEIGHBOURS, TODAY, k=5).item_ids == []


def test_batch_scoring_equals_one_user_scoring() -> None:
    rng = np.random.default_rng(7)
    items = [f"i{n:02d}" for n in range(40)]
    lists = {}
    for item in items:
        others = rng.choice([i for i in items if i != item], size=rng.integers(0, 8), replace=False)
        lists[item] = (list(others), list(np.round(rng.random(len(others)) * 5, 3)))
    matrix = NeighbourMatrix.from_lists(lists, items)
    assert matrix.item_ids.tolist() == sorted(items)
    config = ItemToItemConfig(half_life_days=30, self_weight=3, max_seeds=4)
    histories = []
    for _ in range(25):
        bought = rng.choice(items, size=rng.integers(1, 9), replace=False)
        histories.append(PurchaseHistory(item_ids=list(bought),
                                         times_bought=list(rng.integers(1, 5, len(bought))),
                                         last_bought_day=list(TODAY - rng.integers(0, 90, len(bought)))))
    users = np.concatenate([np.full(len(h.item_ids), u) for u, h in enumerate(histories)])
    rows = matrix.index(itertools.chain.from_iterable(h.item_ids for h in histories))
    times = np.concatenate([list(h.times_bought) for h in histories])
    days = np.concatenate([list(h.last_bought_day) for h in histories])
    weights = seed_matrix(users, rows, times, days, len(histories), len(items), TODAY, config)
    bought = sp.csr_matrix((np.ones(len(users)), (users, rows)), shape=weights.shape)
    for exclude in (False, True):
        excluded = bought if exclude else None
        top, scores = score_users(weights, matrix, 6, exclude_bought=excluded, config=config)
        for u, history in enumerate(histories):
            one = score_history(history, lists, TODAY, 6, exclude_bought=exclude, config=config)
            batch_ids = [str(matrix.item_ids[i]) for i in top[u] if i >= 0]
            assert batch_ids == one.item_ids
            assert scores[u, :len(batch_ids)] == pytest.approx(one.scores)


def test_bad_config_and_history_are_refused() -> None:
    with pytest.raises(ValueError, match="half-life"):
        ItemToItemConfig(half_life_days=0)
    with pytest.raises(ValueError, match="differ in length"):
        History(np.array(["a"]), np.array([1.0, 2.0]), np.array([1]))


# ------------------------------------------------------------------ similarity kernels of the job


def random_pairs(seed: int, n_users: int = 30, n_items: int = 25) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        # A few heavy users, as in the real data.
        size = rng.integers(12, n_items) if u % 7 == 0 else rng.integers(1, 7)
        for item in rng.choice(n_items, size=size, replace=False):
            rows.append((f"u{u:02d}", f"i{item:02d}", int(rng.integers(0, 1000)), int(rng.integers(1, 4))))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "last_ts", "lines"])


def capped_sets(pairs: pd.DataFrame, max_items: int) -> dict[str, set[str]]:
    ordered = pairs.sort_values(["user_id", "last_ts", "lines", "item_id"],
                                ascending=[True, False, False, True])
    kept = ordered.groupby("user_id").head(max_items)
    return {u: set(g["item_id"]) for u, g in kept.groupby("user_id")}


def brute_cosine(items_of: dict[str, set[str]]) -> dict[tuple[str, str], float]:
    buyers: dict[str, set[str]] = defaultdict(set)
    for user, items in items_of.items():
        for item in items:
            buyers[item].add(user)
    return {(i, j): len(buyers[i] & buyers[j]) / math.sqrt(len(buyers[i]) * len(buyers[j]))
            for i in buyers for j in buyers if i != j and buyers[i] & buyers[j]}


def brute_swing(items_of: dict[str, set[str]], degree: dict[str, int], item: str, buyers: list[str],
                config: SimilarityConfig) -> dict[str, float]:
    scores: dict[str, float] = defaultdict(float)
    weight = {u: (degree[u] + config.swing_user_offset) ** -config.swing_user_power for u in degree}
    for u, v in itertools.combinations(buyers, 2):
        common = items_of[u] & items_of[v]
        for j in common - {item}:
            scores[j] += weight[u] * weight[v] / (config.swing_alpha + len(common))
    return scores


@pytest.mark.parametrize("max_items", [100, 5])
def test_cosine_kernel_matches_the_definition(max_items: int) -> None:
    pairs = random_pairs(1)
    config = SimilarityConfig(max_items_per_user=max_items, top_n=100)
    matrix, caps = build_matrix(pairs, config)
    expected = brute_cosine(capped_sets(pairs, max_items))
    assert caps["users_capped"] == int((pairs.groupby("user_id").size() > max_items).sum())
    got = {}
    for item, neighbours, scores in cosine_block(matrix, np.arange(matrix.n_items), config.top_n):
        for j, score in zip(neighbours, scores, strict=True):
            got[(matrix.item_ids[item], matrix.item_ids[j])] = score
    assert got.keys() == expected.keys()
    for pair, value in expected.items():
        assert got[pair] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(("max_items", "max_users"), [(100, 100), (6, 4)])
def test_swing_kernel_matches_the_definition(max_items: int, max_users: int) -> None:
    pairs = random_pairs(2)
    config = SimilarityConfig(max_items_per_user=max_items, max_users_per_item=max_users, top_n=100)
    matrix, _ = build_matrix(pairs, config)
    items_of = capped_sets(pairs, max_items)
    degree = pairs.groupby("user_id").size().to_dict()
    column_of = np.full(matrix.n_items, -1, dtype=np.int64)
    checked = 0
    for index, item in enumerate(matrix.item_ids):
        rows = pairs[(pairs["item_id"] == item) & pairs["user_id"].map(lambda u, i=item: i in items_of[u])]
        # The buyers Swing uses: the item's most recent (ties by user id), at most max_users.
        buyers = rows.sort_values(["last_ts", "user_id"], ascending=[False, True])["user_id"].head(max_users)
        brute = brute_swing(items_of, degree, item, list(buyers), config)
        expected = {j: s for j, s in brute.items() if s > 0}
        neighbours, scores = swing_item(matrix, index, config, column_of)
        got = dict(zip(matrix.item_ids[neighbours], scores, strict=True))
        assert got.keys() == expected.keys()
        for j, value in expected.items():
            assert got[j] == pytest.approx(value, rel=1e-5)
        checked += bool(expected)
        assert (column_of == -1).all()
    assert checked > 5


def test_top_neighbours_breaks_ties_by_index_and_drops_zeros() -> None:
    candidates = np.array([5, 3, 9, 1, 7])
    scores = np.array([0.5, 0.9, 0.5, 0.0, 0.5])
    ids, values = top_neighbours(candidates, scores, 3)
    assert ids.tolist() == [3, 5, 7]
    assert values.tolist() == [0.9, 0.5, 0.5]
