"""One training run of the XGBoost ranker, end to end: train and evaluate on the README protocol
(`models.evaluate_rankers.evaluate`), store the artifact and its manifest in the registry, then publish
it to ZooKeeper if it passes its quality gate (the run stays registered either way)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finegrain.evaluation.protocol import SPLIT_DATE, load_events
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from models.evaluate_rankers import RankerEvaluation, evaluate
from models.publishing import ModelPublisher, PublishResult
from models.registry import ModelRegistry
from models.xgboost_ranker import RankerConfig

MODEL_NAME = "ranker_xgboost"
GATE_METRIC = "ndcg@20"
# Names the evaluation the gate compares on: two versions are comparable only on the same one.
EVALUATION = f"readme-protocol-{SPLIT_DATE}"


@dataclass(frozen=True)
class RankerRun:
    manifest: ModelManifest
    evaluation: RankerEvaluation
    publish: PublishResult | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sha256": self.manifest.sha256,
            "metrics": dict(self.manifest.metrics),
            "publish": None if self.publish is None else self.publish.as_dict(),
            "seconds": round(self.seconds, 1),
        }


def protocol_metrics(evaluation: RankerEvaluation) -> dict[str, float]:
    """The ranker's figures on the README protocol, with lower-case names (`ndcg@20`, `auc`, ...)."""
    figures = evaluation.artifact.metrics["test"]
    return {name.lower(): float(value) for name, value in figures.items() if value is not None}


def train_register_publish(
    settings: Settings,
    events_path: Path,
    *,
    rounds: int | None = None,
    objective: str | None = None,
    max_users: int | None = None,
    publish: bool = True,
    say: Any = print,
) -> RankerRun:
    started = time.perf_counter()
    config = RankerConfig() if rounds is None else RankerConfig(rounds=rounds)
    evaluation = evaluate(
        load_events(events_path), config=config, objective=objective, max_users=max_users, say=say
    )
    artifact = evaluation.artifact
    say(f"registering {MODEL_NAME} ({len(artifact.model):,} bytes)")
    manifest = ModelRegistry(settings).register(
        MODEL_NAME,
        artifact.model,
        features=artifact.feature_names,
        metrics=protocol_metrics(evaluation),
        params={
            "objective": evaluation.objective,
            "rounds": str(artifact.config.get("rounds", config.rounds)),
            "format": artifact.format,
            "gate_metric": GATE_METRIC,
            "evaluation": EVALUATION,
        },
        data_snapshot=DataSnapshot(
            as_of_date=SPLIT_DATE.isoformat(),
            events_uri=str(events_path),
            rows=int(evaluation.training_set.get("rows", 0)),
            events_sha256=_sha256(events_path),
        ),
        framework="xgboost",
    )
    result = None
    if publish:
        say(f"publishing {MODEL_NAME} {manifest.version} behind the {GATE_METRIC} gate")
        with ModelPublisher(settings) as publisher:
            result = publisher.publish(MODEL_NAME, manifest.version)
    return RankerRun(manifest, evaluation, result, time.perf_counter() - started)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
