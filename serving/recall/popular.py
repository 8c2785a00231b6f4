"""Popular recall: the best sellers of the user's country when the snapshot has that list, else the
configured global list. Always answers, so it is the cold-start path and the last resort."""

from __future__ import annotations

from serving.config import PopularChannelConfig
from serving.recall.base import RecallChannel, Recalled, RecallRequest


class PopularChannel(RecallChannel):
    name = "popular"
    config: PopularChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        window = self.config.list_name.rpartition("@")[2]
        chosen = request.data.popular_list(self.config.list_name)
        if request.profile is not None and request.profile.country:
            country = request.data.popular_list(f"country:{request.profile.country}@{window}")
            if len(country.item_ids) >= min(k, 50):
                chosen = country
        return Recalled(chosen.item_ids[:k], chosen.scores[:k])
