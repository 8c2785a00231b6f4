"""Real-time recall: what goes with what the user did in the last minutes (the streaming sidecar's
`RealtimeProfile`), plus those items themselves (a viewed or carted item is the likeliest purchase).
Empty until the sidecar writes profiles."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finegrain.recall.realtime import MAX_RECENT, realtime_scores
from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest, top_k


class RealtimeChannelConfig(ChannelConfig):
    """Real-time recall: how many of the user's latest actions seed it."""

    type: Literal["realtime"] = "realtime"
    max_recent: int = Field(MAX_RECENT, ge=1, description="Most recent actions used as seeds.")


class RealtimeChannel(RecallChannel):
    name = "realtime"
    config_class = RealtimeChannelConfig
    config: RealtimeChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        if request.realtime is None or not len(request.realtime.recent):
            return Recalled.empty()
        neighbours = request.data.neighbours["cosine"]
        scores = realtime_scores(request.realtime, neighbours, self.config.max_recent)
        best = top_k(scores, k)
        return Recalled(neighbours.item_ids[best], scores[best])
