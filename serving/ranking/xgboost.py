"""The XGBoost ranker in-process: `inplace_predict` on the request's matrix (no DMatrix copy), and
per-feature contributions (SHAP values, `pred_contribs`) for `explain=true`."""

from __future__ import annotations

import numpy as np
import xgboost as xgb

from models.xgboost_ranker import XGBoostRanker
from serving.ranking.base import Contribution, Ranker


class XGBoostServingRanker(Ranker):
    kind = "xgboost"

    def __init__(self, ranker: XGBoostRanker) -> None:
        self.ranker = ranker
        self.booster = ranker.booster
        self.feature_names = ranker.feature_names

    @classmethod
    def from_bytes(cls, data: bytes, feature_names: list[str]) -> XGBoostServingRanker:
        return cls(XGBoostRanker.from_bytes(data, feature_names))

    def score(self, features: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.empty(0)
        matrix = np.asarray(features, dtype=np.float32)
        return np.asarray(self.booster.inplace_predict(matrix, missing=np.nan), dtype=np.float64)

    def explain(self, features: np.ndarray, top: int) -> list[list[Contribution]]:
        if not len(features):
            return []
        matrix = xgb.DMatrix(np.asarray(features, dtype=np.float32), feature_names=list(self.feature_names),
                             missing=np.nan)
        contributions = self.booster.predict(matrix, pred_contribs=True)[:, :-1]  # last column: bias
        out = []
        for row, values in zip(features, contributions, strict=True):
            best = np.argsort(-np.abs(values), kind="stable")[:top]
            out.append([Contribution(self.feature_names[i], float(row[i]), float(values[i])) for i in best
                        if values[i] != 0])
        return out
