"""Item-to-item recall: the neighbours of what the user bought (finegrain.recall.item_to_item's
scoring, done as one sparse row product against the snapshot's neighbour matrix).

The channel also computes the ranker's "recent" item-to-item score of every item (the same seeds on a
short half-life, neighbours only) from the same rows of the matrix, so the features stage does not
slice the matrix a second time."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from finegrain.features.ranking import RECENT_ITEM_TO_ITEM
from finegrain.recall.item_to_item import ItemToItemConfig, NeighbourMatrix, seed_weights, seeds
from finegrain.schemas import PurchaseHistory
from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest, top_k

RECENT_SCORES = "recent_scores"  # Recalled.extra: the recent score of every item of the cosine matrix


def seed_rows(history: PurchaseHistory, neighbours: NeighbourMatrix, today: int, config: ItemToItemConfig
              ) -> tuple[np.ndarray, np.ndarray]:
    """Matrix rows of the user's seeds and their weights, as `seeds` selects them. A history within
    `max_seeds` items keeps every item (weights are positive), in history order, without a sort."""
    if len(history.item_ids) <= config.max_seeds:
        ids = np.asarray(list(history.item_ids), dtype=object)
        weights = seed_weights(np.asarray(history.times_bought, dtype=np.float64),
                               np.asarray(history.last_bought_day, dtype=np.int64), today, config)
        keep = weights > 0
        ids, weights = ids[keep], weights[keep]
    else:
        ids, weights = seeds(history, today, config)
    rows = neighbours.index(ids)
    known = rows >= 0
    return rows[known], weights[known]


def history_scores(history: PurchaseHistory, neighbours: NeighbourMatrix, today: int,
                   config: ItemToItemConfig, *, repeat: bool = True) -> np.ndarray:
    """The channel's score of every item of the matrix (0: not recalled), as `score_users` computes it."""
    rows, weights = seed_rows(history, neighbours, today, config)
    scores = np.zeros(len(neighbours.item_ids))
    if not len(rows):
        return scores
    scores += np.asarray(neighbours.matrix[rows].T @ weights).ravel()
    if repeat and config.self_weight > 0:
        np.add.at(scores, rows, config.self_weight * weights)
    return scores


def scores_with_recent(history: PurchaseHistory, neighbours: NeighbourMatrix, today: int,
                       config: ItemToItemConfig, *, repeat: bool) -> tuple[np.ndarray, np.ndarray]:
    """(`history_scores` with `config`, the same with `RECENT_ITEM_TO_ITEM` and no repeat term), from
    one slice of the matrix when both configs keep every item of the history as a seed."""
    if len(history.item_ids) > min(config.max_seeds, RECENT_ITEM_TO_ITEM.max_seeds):
        # The two configs may pick different seeds: compute each as training does.
        return (history_scores(history, neighbours, today, config, repeat=repeat),
                history_scores(history, neighbours, today, RECENT_ITEM_TO_ITEM, repeat=False))
    times = np.asarray(history.times_bought, dtype=np.float64)
    last_day = np.asarray(history.last_bought_day, dtype=np.int64)
    weights = seed_weights(times, last_day, today, config)
    recent_weights = seed_weights(times, last_day, today, RECENT_ITEM_TO_ITEM)
    rows = neighbours.index(np.asarray(list(history.item_ids), dtype=object))
    known = rows >= 0
    main, recent = np.zeros(len(neighbours.item_ids)), np.zeros(len(neighbours.item_ids))
    if not known.any():
        return main, recent
    rows, weights, recent_weights = rows[known], weights[known], recent_weights[known]
    block = neighbours.matrix[rows].T.tocsr()
    main += block @ np.where(weights > 0, weights, 0.0)
    recent += block @ np.where(recent_weights > 0, recent_weights, 0.0)
    if repeat and config.self_weight > 0:
        np.add.at(main, rows, config.self_weight * np.where(weights > 0, weights, 0.0))
    return main, recent


class ItemToItemChannelConfig(ChannelConfig):
    """Item-to-item recall: which neighbour lists to read."""

    type: Literal["item_to_item"] = "item_to_item"
    algorithm: Literal["cosine", "swing"] = Field(
        "cosine", description="Neighbour lists to read; the ranker was trained on cosine-based scores.")


class ItemToItemChannel(RecallChannel):
    name = "item_to_item"
    config_class = ItemToItemChannelConfig
    config: ItemToItemChannelConfig

    def __init__(self, config: ItemToItemChannelConfig, item_to_item: ItemToItemConfig | None = None) -> None:
        super().__init__(config)
        self.item_to_item = item_to_item or ItemToItemConfig()

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        if request.profile is None or not len(request.profile.history.item_ids):
            return Recalled.empty()
        neighbours = request.data.neighbours[self.config.algorithm]
        repeat = not request.scene_config.exclude_bought
        if self.config.algorithm == "cosine":
            scores, recent = scores_with_recent(request.profile.history, neighbours, request.today,
                                                self.item_to_item, repeat=repeat)
            extra = {RECENT_SCORES: recent}
        else:
            scores = history_scores(request.profile.history, neighbours, request.today, self.item_to_item,
                                    repeat=repeat)
            extra = {}
        best = top_k(scores, k)
        return Recalled(neighbours.item_ids[best], scores[best], extra)
