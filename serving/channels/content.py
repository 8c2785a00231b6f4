"""Content recall: items sharing the user's preferred terms, categories and price band, from the
snapshot's inverted indexes (the scoring is finegrain.recall.content's, shared with the evaluation)."""

from __future__ import annotations

import numpy as np

from finegrain.recall import content
from serving.channels.base import RecallChannel, Recalled, RecallRequest
from serving.config import ContentChannelConfig


class ContentChannel(RecallChannel):
    name = "content"
    config: ContentChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        if request.profile is None:
            return Recalled.empty()
        found = content.recommend(request.profile, request.data.posting, k)
        return Recalled(np.asarray(found.item_ids, dtype=object), np.asarray(found.scores, dtype=np.float64))
