"""The recall channel interface: given one request's context, return scored candidates, best first;
and `ChannelConfig`, the settings every channel has (quota, time budget, on/off).

Each channel is one module of this package holding its config (a `ChannelConfig` subclass whose
`type: Literal[...]` names the channel in the serving configuration) and its `RecallChannel`
implementation; `serving.channels.registry` maps each type to its implementation.

A channel reads only the worker's in-memory snapshot and what the request already fetched (the
user's profile and real-time profile), except the rule channel, which reads its shared atom cache in
Redis. Channels run in parallel under a time budget each (`serving.recommend`); one that raises or
runs late is dropped from the request, which is flagged as degraded, never failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from finegrain.schemas import RealtimeProfile, UserProfile
from serving.scenes import SceneConfig
from serving.state import DataSnapshot, ModelSet


class ChannelConfig(BaseModel):
    """One entry of the configuration's `channels` list; a channel module subclasses it with its own
    `type` literal and fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Which channel this entry configures (its module in serving.channels).")
    quota: int = Field(200, ge=0, le=2000, description="Most candidates this channel may place in the merge.")
    budget_ms: float = Field(20.0, gt=0, description="Time budget; a channel still running after it is "
                             "dropped from this request, which is flagged as degraded.")
    enabled: bool = Field(True, description="Off: the channel is not run at all.")

    def required_models(self) -> set[str]:
        """Registry names of the models the channel reads, which the worker loads and hot-swaps."""
        return set()


@dataclass(frozen=True)
class RecallRequest:
    user_id: str
    scene: str
    scene_config: SceneConfig
    profile: UserProfile | None  # None: a user the features do not know (cold start)
    realtime: RealtimeProfile | None
    data: DataSnapshot
    models: ModelSet
    services: Mapping[str, Any] = field(default_factory=dict)  # e.g. the rule engine

    @property
    def today(self) -> int:
        return self.data.today


@dataclass(frozen=True)
class Recalled:
    """A channel's candidates, best first, with `extra` per-candidate values other stages may use."""

    item_ids: np.ndarray  # object (str)
    scores: np.ndarray  # float64, > 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Recalled:
        return cls(np.empty(0, dtype=object), np.empty(0))

    def __len__(self) -> int:
        return len(self.item_ids)


class RecallChannel(ABC):
    """One source of candidates. `name` is its type in the configuration and its tag in responses;
    `config_class` is the config it is built from (`type` of that class is `name`)."""

    name: ClassVar[str]
    config_class: ClassVar[type[ChannelConfig]]
    # In-memory channels are a millisecond of NumPy: they run in the request's thread (a thread hop
    # costs more than that under load) and their budget is checked when they return. Channels that
    # wait on I/O set this False and run on the worker's pool under a hard timeout.
    inline: ClassVar[bool] = True
    # A filler recalls up to the whole candidate count, so the merge's fill phase can always top the
    # candidates up to the configured size when the other channels overlap.
    filler: ClassVar[bool] = False

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config

    @property
    def quota(self) -> int:
        return int(self.config.quota)

    @property
    def budget_s(self) -> float:
        return float(self.config.budget_ms) / 1000.0

    @abstractmethod
    def recall(self, request: RecallRequest, k: int) -> Recalled:
        """At most `k` candidates for the request, best first."""


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best positive scores, best first, ties by index (the item-id order)."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        cut = np.argpartition(-scores[positive], k - 1)[:k]
        threshold = scores[positive][cut].min()
        positive = positive[scores[positive] >= threshold]
    order = np.lexsort((positive, -scores[positive]))[:k]
    return positive[order]
