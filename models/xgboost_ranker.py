"""The XGBoost ranker: gradient-boosted trees over `finegrain.features.ranking` rows.

The artifact is the booster as UBJSON bytes (`Booster.save_raw("ubj")`, loadable by any XGBoost >= 1.6
without pickle) plus its ordered feature list; `RankerArtifact` carries both with the training
parameters and metrics, which is what a model registry stores. Serving loads it with
`XGBoostRanker.from_bytes` and scores a user's candidate rows with `score`; the feature list is checked
against the serving code's `RANKING_FEATURE_NAMES` so a model trained on another feature layout is
refused instead of silently misread.

Objective: `binary:logistic` by default, from measurements on a validation split that ends before
the README's test window (train on the cut-offs 2010-07-13 / 08-12 / 09-11, rank the candidates at
2010-10-11 against the month after; `models/evaluate_rankers.py` re-measures all three each run).
With 150 rounds at 0.1: NDCG@20 0.346 (binary:logistic), 0.344 (rank:ndcg), 0.339 (rank:pairwise); AUC 0.824,
0.808, 0.803; the item-to-item channel alone 0.312. With 300 rounds at a lower rate rank:ndcg led
instead (0.345 against 0.340): the listwise and pointwise objectives are within noise of each other
here. Binary wins the tie because it trains in half the time (no pair sampling), its AUC is the best,
and its output is a probability, comparable across users and channels, which the merge step and a
score threshold can use; the labels have one relevance level, so NDCG's graded gains buy nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Read once, as XGBoost loads OpenMP: a thread that reaches a barrier sleeps instead of spinning. The
# nightly DAG trains this ranker beside the TF ranker on 2 cores, where spinning threads burn the CPU
# the other needs: a TF fit and two XGBoost fits side by side took 97-100 s with it, 108-131 s without
# (`docs/benchmarks.md`, the nightly loop). Alone, within noise of the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import xgboost as xgb  # after its OpenMP setting

from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import TrainingSet

OBJECTIVES = ("binary:logistic", "rank:ndcg", "rank:pairwise")
FORMAT = "xgboost-ubj"


@dataclass(frozen=True)
class RankerConfig:
    objective: str = "binary:logistic"
    # Measured on the validation split (NDCG@20, binary): 150 x 0.1 gave 0.346, 300 x 0.05 0.350 (test:
    # the same 0.392 NDCG@20) in twice the time (the objective comparison then took 5 minutes instead of
    # 50 s), depth 8 0.334, depth 4 0.347, min_child_weight 20 0.349, column sampling 0.5 0.341: the
    # differences are within noise, so the cheaper setting stays.
    rounds: int = 150
    learning_rate: float = 0.1
    max_bin: int = 64
    max_depth: int = 6
    min_child_weight: float = 5.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    nthread: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: one of {', '.join(OBJECTIVES)}")
        if self.rounds < 1 or self.max_depth < 1 or not 0 < self.learning_rate <= 1:
            raise ValueError(f"bad ranker config {self}")

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": self.objective, "eta": self.learning_rate, "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight, "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree, "lambda": self.reg_lambda, "nthread": self.nthread,
            "tree_method": "hist", "max_bin": self.max_bin, "seed": self.seed,
            "eval_metric": "auc" if self.objective == "binary:logistic" else "ndcg@20",
        }
        if self.objective.startswith("rank:"):
            # Pairs from the top of each user's list, where NDCG@20 is decided.
            params.update({"lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": 20})
        return params


@dataclass
class RankerArtifact:
    """What a registry stores for one training run."""

    model: bytes
    feature_names: tuple[str, ...]
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    def manifest(self) -> dict[str, Any]:
        """JSON-ready description (everything but the bytes)."""
        return {"format": self.format, "sha256": self.sha256, "size": len(self.model),
                "feature_names": list(self.feature_names), "config": self.config, "metrics": self.metrics}


class XGBoostRanker:
    def __init__(self, booster: xgb.Booster, feature_names: tuple[str, ...], config: RankerConfig) -> None:
        if tuple(booster.feature_names or ()) != feature_names:
            raise ValueError("the booster's feature names differ from the feature list stored with it")
        self.booster = booster
        self.feature_names = feature_names
        self.config = config

    @classmethod
    def from_bytes(cls, model: bytes, feature_names: tuple[str, ...] | list[str],
                   config: dict[str, Any] | None = None) -> XGBoostRanker:
        names = tuple(feature_names)
        if names != RANKING_FEATURE_NAMES:
            missing = sorted(set(names) - set(RANKING_FEATURE_NAMES))
            raise ValueError(f"the model's {len(names)} features do not match the serving feature layout "
                             f"({len(RANKING_FEATURE_NAMES)}; unknown to serving: {missing[:5]})")
        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(bytearray(model))
        return cls(booster, names, RankerConfig(**(config or {})))

    def score(self, features: np.ndarray) -> np.ndarray:
        """One score per row (higher = rank first)."""
        matrix = xgb.DMatrix(np.asarray(features, dtype=np.float32), feature_names=list(self.feature_names),
                             missing=np.nan)
        return np.asarray(self.booster.predict(matrix), dtype=np.float64)

    def artifact(self, metrics: dict[str, Any] | None = None) -> RankerArtifact:
        return RankerArtifact(model=bytes(self.booster.save_raw("ubj")), feature_names=self.feature_names,
                              config=asdict(self.config), metrics=dict(metrics or {}))


def _matrix(rows: TrainingSet) -> xgb.DMatrix:
    matrix = xgb.DMatrix(rows.features, label=rows.labels.astype(np.float32),
                         feature_names=list(rows.feature_names), missing=np.nan)
    matrix.set_group(rows.group_sizes)
    return matrix


def train_ranker(train: TrainingSet, config: RankerConfig | None = None, valid: TrainingSet | None = None
                 ) -> tuple[XGBoostRanker, dict[str, Any]]:
    """Train on `train` (groups = users at a cut-off); `valid` is only watched (logged per round).
    Returns the ranker and training facts (seconds, rows, the last validation figure)."""
    config = config or RankerConfig()
    if tuple(train.feature_names) != RANKING_FEATURE_NAMES:
        raise ValueError("the training set was built with another feature layout than the serving code's")
    if not train.labels.any():
        raise ValueError("the training set has no positive label")
    started = time.perf_counter()
    dtrain = _matrix(train)
    evals = [(dtrain, "train")]
    if valid is not None:
        evals.append((_matrix(valid), "valid"))
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(config.params(), dtrain, num_boost_round=config.rounds, evals=evals,
                        evals_result=history, verbose_eval=False)
    seconds = time.perf_counter() - started
    facts: dict[str, Any] = {"train_seconds": round(seconds, 2), "train_rows": len(train.labels),
                             "train_groups": len(train.group_sizes),
                             "train_positives": int(train.labels.sum())}
    for name, curves in history.items():
        for metric, values in curves.items():
            facts[f"{name}_{metric}"] = round(float(values[-1]), 4)
    return XGBoostRanker(booster, tuple(train.feature_names), config), facts


def feature_importance(ranker: XGBoostRanker, top: int = 15) -> list[tuple[str, float]]:
    """Total gain per feature, best first (what the trees actually split on)."""
    scores = ranker.booster.get_score(importance_type="total_gain")
    gains = {name: float(value) for name, value in scores.items() if not isinstance(value, list)}
    total = sum(gains.values()) or 1.0
    ranked = sorted(gains.items(), key=lambda entry: -entry[1])[:top]
    return [(name, round(value / total, 4)) for name, value in ranked]


def artifact_json(artifact: RankerArtifact) -> str:
    return json.dumps(artifact.manifest(), indent=2, sort_keys=True)
