"""Real-time recall: what goes with what the user did in the last minutes (the streaming sidecar's
`RealtimeProfile`), plus those items themselves (a viewed or carted item is the likeliest purchase).
Empty until the sidecar writes profiles."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from finegrain.features.realtime import ACTION_WEIGHT
from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest, top_k

RECENCY_HALF_LIFE = 5.0  # actions: the 5th most recent counts half as much as the latest


class RealtimeChannelConfig(ChannelConfig):
    """Real-time recall: how many of the user's latest actions seed it."""

    type: Literal["realtime"] = "realtime"
    max_recent: int = Field(20, ge=1, description="Most recent actions used as seeds.")


class RealtimeChannel(RecallChannel):
    name = "realtime"
    config_class = RealtimeChannelConfig
    config: RealtimeChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        realtime = request.realtime
        if realtime is None or not len(realtime.recent):
            return Recalled.empty()
        neighbours = request.data.neighbours["cosine"]
        recent = list(realtime.recent)[: self.config.max_recent]
        rows = neighbours.index([action.item_id for action in recent])
        weights = np.asarray([ACTION_WEIGHT.get(action.type, 1.0) for action in recent])
        weights = weights * np.exp2(-np.arange(len(recent)) / RECENCY_HALF_LIFE)
        known = rows >= 0
        rows, weights = rows[known], weights[known]
        if not len(rows):
            return Recalled.empty()
        scores = np.asarray(neighbours.matrix[rows].T @ weights).ravel()
        np.add.at(scores, rows, weights)
        best = top_k(scores, k)
        return Recalled(neighbours.item_ids[best], scores[best])
