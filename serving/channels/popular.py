"""Popular recall: the best sellers of the user's country, then the configured global list. Always
answers, so it is the cold-start path and the last resort; and as the merge's filler (it recalls up to
the whole candidate count) it tops every request up to about 1,000 candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from serving.channels.base import RecallChannel, Recalled, RecallRequest
from serving.config import PopularChannelConfig


class PopularChannel(RecallChannel):
    name = "popular"
    filler = True
    config: PopularChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        window = self.config.list_name.rpartition("@")[2]
        best = request.data.popular_list(self.config.list_name)
        if request.profile is None or not request.profile.country:
            return Recalled(best.item_ids[:k], best.scores[:k])
        country = request.data.popular_list(f"country:{request.profile.country}@{window}")
        # The country's best sellers first (scores above every global one), then the global list.
        rest = ~pd.Index(best.item_ids).isin(country.item_ids)
        ids = np.concatenate([country.item_ids, best.item_ids[rest]])[:k]
        top = float(best.scores[0]) if len(best.scores) else 0.0
        scores = np.concatenate([country.scores + top, best.scores[rest]])[:k]
        return Recalled(ids, scores)
