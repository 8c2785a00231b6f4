"""What a deployment tunes without touching code: the recall channels with their quotas and time
budgets, and per scene which ranker orders the candidates and whether bought items are filtered.

Loaded from the JSON file named by `FINEGRAIN_SERVING_CONFIG` (the defaults below when unset); every
field is documented so the file is self-explaining. Channels are a list of tagged configs (`type`
selects the implementation in `serving.channels`), so a data scientist adds a channel by adding a
module and a config class, not by editing the request path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finegrain.errors import FinegrainError


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quota: int = Field(200, ge=0, le=2000, description="Most candidates this channel may place in the merge.")
    budget_ms: float = Field(20.0, gt=0, description="Time budget; a channel still running after it is "
                             "dropped from this request, which is flagged as degraded.")
    enabled: bool = Field(True, description="Off: the channel is not run at all.")


class ItemToItemChannelConfig(_Channel):
    type: Literal["item_to_item"] = "item_to_item"
    algorithm: Literal["cosine", "swing"] = Field(
        "cosine", description="Neighbour lists to read; the ranker was trained on cosine-based scores.")


class ContentChannelConfig(_Channel):
    type: Literal["content"] = "content"


class EmbeddingChannelConfig(_Channel):
    type: Literal["embedding"] = "embedding"
    model: str = Field("embeddings_als", description="Registry name of the embedding model to search.")


class RuleChannelConfig(_Channel):
    type: Literal["rule"] = "rule"


class RealtimeChannelConfig(_Channel):
    type: Literal["realtime"] = "realtime"
    max_recent: int = Field(20, ge=1, description="Most recent actions used as seeds.")


class PopularChannelConfig(_Channel):
    type: Literal["popular"] = "popular"
    list_name: str = Field("global:all@30d", description="Popularity list (scope:name@window) to serve; "
                           "the country list of the user's country is preferred when it exists.")


ChannelConfig = Annotated[
    ItemToItemChannelConfig | ContentChannelConfig | EmbeddingChannelConfig | RuleChannelConfig
    | RealtimeChannelConfig | PopularChannelConfig,
    Field(discriminator="type"),
]


# Registry name of the model behind each `SceneConfig.ranker` value.
RANKER_MODELS = {"xgboost": "ranker_xgboost", "tf": "ranker_tf"}


class SceneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ranker: Literal["xgboost", "tf", "none"] = Field(
        "xgboost", description="Which ranker orders this scene's candidates; `none` keeps the merge order.")
    exclude_bought: bool = Field(False, description="Drop items the user already bought (discovery shelves).")


def _default_channels() -> list[ChannelConfig]:
    # Quotas from the merge tuning of `finegrain evaluate all` on the validation cut-off (2010-10-11):
    # item-to-item and embeddings carry most of the target, content and popular add breadth; at 1,000
    # candidates the fill phase evens quotas out (merged Recall@1000 0.846 on the README split).
    return [
        ItemToItemChannelConfig(quota=400, budget_ms=30),
        RealtimeChannelConfig(quota=50, budget_ms=15),
        RuleChannelConfig(quota=50, budget_ms=30),
        EmbeddingChannelConfig(quota=300, budget_ms=30),
        ContentChannelConfig(quota=100, budget_ms=20),
        PopularChannelConfig(quota=100, budget_ms=10),
    ]


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[ChannelConfig] = Field(default_factory=_default_channels,
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
    tf_serving_url: str | None = Field(
        None, description="TensorFlow Serving REST base URL (e.g. http://tfs:8501); unset: TF in-process.")

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
