"""Rule-based recall: the candidates of every enabled rule of the scene, from the shared atom cache
(serving.rules). The rule engine is a per-worker service passed in the request."""

from __future__ import annotations

from typing import Literal

import numpy as np

from serving.channels.base import ChannelConfig, RecallChannel, Recalled, RecallRequest


class RuleChannelConfig(ChannelConfig):
    """Rule recall: no settings beyond quota and budget (the rules are managed through /v1/rules)."""

    type: Literal["rule"] = "rule"


class RuleChannel(RecallChannel):
    name = "rule"
    # One pipelined read of the shared atom cache (a thread hop costs more under load); the request
    # path's Redis client times out at `redis_timeout_ms`, which bounds a slow Redis.
    config_class = RuleChannelConfig
    config: RuleChannelConfig

    def recall(self, request: RecallRequest, k: int) -> Recalled:
        service = request.services.get("rules")
        if service is None:
            return Recalled.empty()
        ids, scores, rules = service.candidates(request.scene, request.profile, request.data, k)
        return Recalled(np.asarray(ids, dtype=object), np.asarray(scores, dtype=np.float64),
                        {"rules": rules})
