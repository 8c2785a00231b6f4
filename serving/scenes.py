"""What a scene is: a named shelf of the product (home, discovery, ...) with the ranker that orders its
candidates and whether it filters out what the user already bought.

The scenes themselves are listed in the serving configuration (`serving.config.ServingConfig.scenes`);
this module holds only the per-scene settings, so that recall channels (which read `exclude_bought`)
and the configuration can both import it without importing each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Registry name of the model behind each `SceneConfig.ranker` value.
RANKER_MODELS = {"xgboost": "ranker_xgboost", "tf": "ranker_tf"}


class SceneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ranker: Literal["xgboost", "tf", "none"] = Field(
        "xgboost", description="Which ranker orders this scene's candidates; `none` keeps the merge order.")
    exclude_bought: bool = Field(False, description="Drop items the user already bought (discovery shelves).")
