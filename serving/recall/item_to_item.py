"""Item-to-item recall: the neighbours of what the user bought (finegrain.recall.item_to_item's
scoring, done as one sparse row product against the snapshot's neighbour matrix)."""

from __future__ import annotations

import numpy as np

from finegrain.recall.item_to_item import ItemToItemConfig, NeighbourMatrix, seeds
from finegrain.schemas import PurchaseHistory
from serving.config import ItemToItemChannelConfig
from serving.recall.base import RecallChannel, Recalled, RecallRequest, top_k


def history_scores(history: PurchaseHistory, neighbours: NeighbourMatrix, today: int,
                   config: ItemToItemConfig, *, repeat: bool = True) -> np.ndarray:
    """The channel's score of every item of the matrix (0: not recalled), as `score_users` computes it."""
    seed_ids, weights = seeds(history, today, config)
    rows = neighbours.index(seed_ids.tolist())
    known = rows >= 0
    rows, weights = rows[known], weights[known]
    scores = np.zeros(len(neighbours.item_ids))
    if not len(rows):
        return scores
    scores += np.asarray(neighbours.matrix[rows].T @ weights).ravel()
    if repeat and config.self_weight > 0:
        np.add.at(scores, rows, config.self_weight * weights)
    return scores


class ItemToItemChannel(RecallChannel):
    name = "item_to_item"
    config: ItemToItemChannelConfig

    def __init__(self, config: ItemToItemChannelConfig, item_to_item: ItemToItemConfig | None = None) -> None:
        super().__init__(config)
        self.item_to_item = item_to_item or ItemToItemConfig()

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        if request.profile is None or not len(request.profile.history.item_ids):
            return Recalled.empty()
        neighbours = request.data.neighbours[self.config.algorithm]
        scores = history_scores(request.profile.history, neighbours, request.today, self.item_to_item,
                                repeat=not request.scene_config.exclude_bought)
        best = top_k(scores, k)
        return Recalled(neighbours.item_ids[best], scores[best])
