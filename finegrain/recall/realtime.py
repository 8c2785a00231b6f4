"""Real-time recall scoring, shared by the real-time channel (serving) and the rankers' real-time
features (training and serving): what goes with the user's latest actions.

Each of the last `max_recent` actions of the `RealtimeProfile` seeds with its action weight
(`finegrain.features.realtime.ACTION_WEIGHT`) halved every `RECENCY_HALF_LIFE` actions back; an item
scores the weighted sum of its cosine neighbourhood to the seeds, plus the seeds' own weights (a
viewed or carted item is the likeliest purchase).
"""

from __future__ import annotations

import numpy as np

from finegrain.features.realtime import ACTION_WEIGHT
from finegrain.recall.item_to_item import NeighbourMatrix
from finegrain.schemas import RealtimeProfile

RECENCY_HALF_LIFE = 5.0  # actions: the 5th most recent counts half as much as the latest
MAX_RECENT = 20  # actions that seed


def action_weights(realtime: RealtimeProfile, max_recent: int = MAX_RECENT) -> tuple[list[str], np.ndarray]:
    """The seeds: item ids of the last actions (newest first) and their weights."""
    recent = list(realtime.recent)[:max_recent]
    weights = np.asarray([ACTION_WEIGHT.get(action.type, 1.0) for action in recent], dtype=np.float64)
    decay = np.exp2(-np.arange(len(recent)) / RECENCY_HALF_LIFE)
    return [action.item_id for action in recent], weights * decay


def realtime_scores(realtime: RealtimeProfile | None, neighbours: NeighbourMatrix,
                    max_recent: int = MAX_RECENT) -> np.ndarray:
    """The real-time score of every item of `neighbours` (0: not recalled)."""
    scores = np.zeros(len(neighbours.item_ids))
    if realtime is None or not len(realtime.recent):
        return scores
    items, weights = action_weights(realtime, max_recent)
    rows = neighbours.index(items)
    known = rows >= 0
    rows, weights = rows[known], weights[known]
    if not len(rows):
        return scores
    scores += np.asarray(neighbours.matrix[rows].T @ weights).ravel()
    np.add.at(scores, rows, weights)
    return scores


def own_action_weights(realtime: RealtimeProfile | None, candidates: np.ndarray,
                       max_recent: int = MAX_RECENT) -> np.ndarray:
    """Per candidate, the summed seed weight of the user's own recent actions on it (0: none)."""
    out = np.zeros(len(candidates))
    if realtime is None or not len(realtime.recent):
        return out
    items, weights = action_weights(realtime, max_recent)
    total: dict[str, float] = {}
    for item, weight in zip(items, weights.tolist(), strict=True):
        total[item] = total.get(item, 0.0) + weight
    return np.asarray([total.get(str(c), 0.0) for c in candidates], dtype=np.float64)
