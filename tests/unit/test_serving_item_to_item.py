"""Serving's item-to-item scoring gives what the offline scoring (and so the training sets) gives."""

from __future__ import annotations

import numpy as np
import pytest

from finegrain.features.ranking import RECENT_ITEM_TO_ITEM
from finegrain.recall.item_to_item import ItemToItemConfig, NeighbourMatrix, score_history
from finegrain.schemas import PurchaseHistory
from serving.channels.base import top_k
from serving.channels.item_to_item import history_scores, scores_with_recent


def _world(seed: int, n_items: int = 60, history_size: int = 12) -> tuple[NeighbourMatrix, PurchaseHistory]:
    rng = np.random.default_rng(seed)
    ids = [f"I{i:03d}" for i in range(n_items)]
    lists = {}
    for item in ids:
        neighbours = rng.choice([i for i in ids if i != item], 8, replace=False)
        lists[item] = (list(neighbours), sorted(rng.random(8).tolist(), reverse=True))
    bought = [*rng.choice(ids, history_size, replace=False).tolist(), "UNKNOWN-ITEM"]
    history = PurchaseHistory(item_ids=bought, times_bought=rng.integers(1, 6, len(bought)).tolist(),
                              last_bought_day=(14_000 - rng.integers(0, 200, len(bought))).tolist(),
                              quantity=[1] * len(bought))
    return NeighbourMatrix.from_lists(lists, ids), history


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exclude_bought", [False, True])
def test_top_k_matches_the_offline_scoring(seed: int, exclude_bought: bool) -> None:
    neighbours, history = _world(seed)
    config = ItemToItemConfig()
    scores = history_scores(history, neighbours, 14_000, config, repeat=not exclude_bought)
    if exclude_bought:  # serving's merge drops bought items; here by hand
        rows = neighbours.index(list(history.item_ids))
        scores[rows[rows >= 0]] = 0.0
    ours = neighbours.item_ids[top_k(scores, 20)].tolist()
    lists = {str(seed_id): (neighbours.item_ids[neighbours.matrix[row].indices].tolist(),
                            neighbours.matrix[row].data.tolist())
             for row, seed_id in enumerate(neighbours.item_ids)}
    offline = score_history(history, lists, 14_000, 20, exclude_bought=exclude_bought, config=config)
    # An item the matrix does not know is recalled neither by serving nor by the training sets
    # (`score_users`); `score_history` alone keeps its repeat term.
    known = [item for item in offline.item_ids if item != "UNKNOWN-ITEM"]
    assert ours[:len(known)] == known


@pytest.mark.parametrize("seed", [0, 3])
def test_one_slice_gives_both_scores_exactly(seed: int) -> None:
    neighbours, history = _world(seed)
    config = ItemToItemConfig()
    main, recent = scores_with_recent(history, neighbours, 14_000, config, repeat=True)
    np.testing.assert_allclose(main, history_scores(history, neighbours, 14_000, config, repeat=True))
    np.testing.assert_allclose(recent, history_scores(history, neighbours, 14_000, RECENT_ITEM_TO_ITEM,
                                                      repeat=False))
    np.testing.assert_allclose(recent, history_scores(history, neighbours, 14_000, RECENT_ITEM_TO_ITEM,
                                                      repeat=False))


def test_a_long_history_falls_back_to_the_seed_selection() -> None:
    neighbours, history = _world(5, n_items=80, history_size=40)
    config = ItemToItemConfig(max_seeds=10)
    main, recent = scores_with_recent(history, neighbours, 14_000, config, repeat=True)
    np.testing.assert_allclose(main, history_scores(history, neighbours, 14_000, config, repeat=True))
    np.testing.assert_allclose(recent, history_scores(history, neighbours, 14_000, RECENT_ITEM_TO_ITEM,
                                                      repeat=False))
