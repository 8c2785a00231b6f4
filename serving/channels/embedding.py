"""Model-based recall: the user's vector folded in from their purchase history, searched in the
published embedding model's ANN index (finegrain.recall.embedding)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from finegrain.recall.embedding import EmbeddingIndex
from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest


class EmbeddingChannelConfig(ChannelConfig):
    """Embedding recall: which published embedding model to search."""

    type: Literal["embedding"] = "embedding"
    model: str = Field("embeddings_als", description="Registry name of the embedding model to search.")

    def required_models(self) -> set[str]:
        return {self.model}


class EmbeddingChannel(RecallChannel):
    name = "embedding"
    config_class = EmbeddingChannelConfig
    config: EmbeddingChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        model = request.models.get(self.config.model)
        if not isinstance(model, EmbeddingIndex) or request.profile is None:
            return Recalled.empty()
        history = request.profile.history
        if not len(history.item_ids):
            return Recalled.empty()
        # The learnt vector of a user the model was trained on (as the evaluation scores the channel),
        # the history folded in for anyone newer.
        _, known = model.user_vectors([request.user_id])
        if known[0] and not request.scene_config.exclude_bought:
            found = model.recommend(k, user_id=request.user_id)
        else:
            found = model.recommend(k, history=history, today=request.today,
                                    exclude_bought=request.scene_config.exclude_bought)
        scores = np.asarray(found.scores, dtype=np.float64)
        # Inner products can be negative; the merge reads 0 as "not recalled", so shift to positive.
        if len(scores):
            scores = scores - scores.min() + 1e-6
        return Recalled(np.asarray(found.item_ids, dtype=object), scores)
