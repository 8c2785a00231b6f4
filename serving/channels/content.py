"""Content recall: items sharing the user's preferred terms, categories and price band, from the
snapshot's inverted indexes (the scoring is finegrain.recall.content's, shared with the evaluation)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from finegrain.recall import content
from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest


class ContentChannelConfig(ChannelConfig):
    """Content recall: no settings beyond quota and budget (the index is the published content index)."""

    type: Literal["content"] = "content"


class ContentChannel(RecallChannel):
    name = "content"
    config_class = ContentChannelConfig
    config: ContentChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        if request.profile is None:
            return Recalled.empty()
        found = content.recommend(request.profile, request.data.posting, k)
        return Recalled(np.asarray(found.item_ids, dtype=object), np.asarray(found.scores, dtype=np.float64))
