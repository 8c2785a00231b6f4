"""What a deployment tunes without touching code: the recall channels with their quotas and time
budgets, and per scene which ranker orders the candidates and whether bought items are filtered.

Loaded from the JSON file named by `FINEGRAIN_SERVING_CONFIG` (the defaults below when unset); every
field is documented so the file is self-explaining. Channels are a list of tagged configs: `type`
selects the channel, whose config class lives in its own module of `serving.channels` and is found
through `serving.channels.registry`, so a data scientist adds a channel by adding a module and one
registry line, not by editing this file or the request path. Scene settings are `serving.scenes`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finegrain.errors import FinegrainError
from serving.channels.registry import AnyChannelConfig, channel_config
from serving.scenes import SceneConfig


def _default_channels() -> list[AnyChannelConfig]:
    # Quotas from the merge tuning of `finegrain evaluate all` on the validation cut-off (2010-10-11):
    # item-to-item and embeddings carry most of the target, content and popular add breadth; at 1,000
    # candidates the fill phase evens quotas out (merged Recall@1000 0.846 on the README split).
    return [
        channel_config("item_to_item", quota=400, budget_ms=30),
        channel_config("realtime", quota=50, budget_ms=15),
        channel_config("rule", quota=50, budget_ms=30),
        channel_config("embedding", quota=300, budget_ms=30),
        channel_config("content", quota=100, budget_ms=20),
        channel_config("popular", quota=100, budget_ms=10),
    ]


class AuthConfig(BaseModel):
    """How a worker checks API keys and limits their rate (`serving.auth`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache_ttl_s: float = Field(10.0, gt=0, le=3600, description="A verified key is re-read from MongoDB "
                               "after this; also how long a revocation takes when ZooKeeper is unreachable.")
    cache_size: int = Field(10_000, ge=1, description="Keys a worker keeps verified (least recently used "
                            "dropped first).")
    rate_per_s: float = Field(100.0, gt=0, description="Requests per second per key in each worker, for a "
                              "key created without its own --rate.")
    burst_s: float = Field(2.0, gt=0, description="Bursts of rate x this many requests pass at once.")


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[AnyChannelConfig] = Field(default_factory=_default_channels,
                                             description="Recall channels, run in parallel per request.")
    candidates: int = Field(1000, ge=1, le=5000, description="Size of the merged candidate set.")
    scenes: dict[str, SceneConfig] = Field(
        default_factory=lambda: {"home": SceneConfig(), "discovery": SceneConfig(exclude_bought=True),
                                 "deep": SceneConfig(ranker="tf")},
        description="Known scenes; a request's `scene` must be one of them.")
    default_scene: str = Field("home", description="Scene of a request that names none.")
    explain_top_features: int = Field(5, ge=1, le=42, description="Feature contributions shown per item.")
    rule_atom_ttl_s: int = Field(3600, ge=1, description="TTL of a cached atomic sub-query of rule recall.")
    redis_timeout_ms: float = Field(50.0, gt=0, description="Socket timeout of request-path Redis calls: "
                                    "an unreachable Redis costs at most this, then the request degrades.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys: cache and rate limits.")
    rule_max_body_bytes: int = Field(16_384, ge=256, le=1_048_576,
                                     description="Largest body of PUT /v1/rules/{name} (413 above).")
    rules_per_scene: int = Field(20, ge=1, le=1000, description="Enabled rules a scene may have (a PUT "
                                 "beyond it is a 409); every recommendation evaluates all of its scene's.")
    tf_serving_url: str | None = Field(
        None, description="TensorFlow Serving REST base URL (e.g. http://tfs:8501); unset: TF in-process.")
    tf_serving_wait_s: float = Field(
        30.0, ge=0, le=600, description="How long a worker loading the TF ranker waits for TF Serving to "
        "report its version AVAILABLE (it polls its model folder) before refusing the load.")

    @model_validator(mode="after")
    def _default_scene_known(self) -> ServingConfig:
        if self.default_scene not in self.scenes:
            raise ValueError(f"default_scene {self.default_scene!r} is not a scene: {sorted(self.scenes)}")
        names = [c.type for c in self.channels]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"channel type(s) configured twice: {', '.join(duplicated)}")
        return self

    @classmethod
    def load(cls, path: Path | None) -> ServingConfig:
        if path is None:
            return cls()
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise FinegrainError(f"serving config {path} does not exist (FINEGRAIN_SERVING_CONFIG)") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            first = str(exc).splitlines()
            raise FinegrainError(f"serving config {path} is invalid: {' '.join(first[:3])}") from None
