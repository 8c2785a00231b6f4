"""Popular recall: the best sellers of the user's country, then the configured global list. Always
answers, so it is the cold-start path and the last resort; and as the merge's filler (it recalls up to
the whole candidate count) it tops every request up to about 1,000 candidates."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest


class PopularChannelConfig(ChannelConfig):
    """Popular recall: which popularity list is the global fallback (its window is the country lists')."""

    type: Literal["popular"] = "popular"
    list_name: str = Field("global:all@30d", description="Popularity list (scope:name@window) to serve; "
                           "the country list of the user's country is preferred when it exists.")


class PopularChannel(RecallChannel):
    name = "popular"
    filler = True
    config_class = PopularChannelConfig
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
