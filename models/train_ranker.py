"""One training run of a ranker (XGBoost or TensorFlow) as of a date, end to end: train and evaluate on the
README protocol as `finegrain.training.plan.TrainingPlan` derives it from the as-of date
(`models.evaluate_rankers`; by default the as-of date is the day after the data's last event, so the
model learns from every day and is scored by a backtest on the last 30 days), store the artifact and its
manifest in the registry, then publish it to ZooKeeper if it passes its quality gate (the run stays
registered either way).

Artifacts: the XGBoost booster as UBJSON bytes (`ranker_xgboost`); the TF ranker as its SavedModel
folder laid out for TF Serving (`ranker_tf`: `<version>/saved_model.pb`, `variables/`, `assets.extra/`),
which the registry stores as a deterministic tar. Both are gated on NDCG@20 of the same evaluation."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from finegrain.dates import data_end
from finegrain.evaluation.protocol import TEST_DAYS, load_events
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from finegrain.training.plan import TrainingPlan
from finegrain.training.training_set import TrainingSet
from models.evaluate_rankers import RankerEvaluation, TFEvaluation, evaluate, evaluate_tf
from models.publishing import ModelPublisher, PublishResult, run_summary
from models.registry import ModelRegistry, file_sha256
from models.xgboost_ranker import OBJECTIVES, RankerConfig

KINDS = ("xgboost", "tf")
MODEL_NAMES = {"xgboost": "ranker_xgboost", "tf": "ranker_tf"}
FRAMEWORKS = {"xgboost": "xgboost", "tf": "tensorflow"}
MODEL_NAME = MODEL_NAMES["xgboost"]
GATE_METRIC = "ndcg@20"


@dataclass(frozen=True)
class RankerRun:
    manifest: ModelManifest
    evaluation: RankerEvaluation | TFEvaluation
    publish: PublishResult | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return run_summary(self.manifest, self.publish, self.seconds)


def protocol_metrics(evaluation: RankerEvaluation | TFEvaluation) -> dict[str, float]:
    """The ranker's figures on the README protocol, with lower-case names (`ndcg@20`, `auc`, ...)."""
    return {name.lower(): float(value) for name, value in evaluation.test.items() if value is not None}


def serving_version(now: datetime | None = None) -> int:
    """The SavedModel's numeric folder: seconds since the epoch, so the versions of successive runs
    copied into one TF Serving base path sort in training order (TF Serving serves the highest)."""
    return int((now or datetime.now(UTC)).timestamp())


# `objective="published"`: the objective of the version serving now, so a nightly retrain refits the
# chosen recipe on new data instead of choosing it again (three fits on the validation cut-off: most of
# the XGBoost task's time); chosen on the validation cut-off when nothing is published yet. Choosing
# again is the retrain DAG's job, or `--objective` unset.
PUBLISHED_OBJECTIVE = "published"
OBJECTIVE_CHOICES = (*OBJECTIVES, PUBLISHED_OBJECTIVE)


def published_objective(settings: Settings, name: str, say: Any = print) -> str | None:
    """The objective the published version of `name` was trained with; None (choose one) if none is
    published or it names no known objective."""
    with ModelPublisher(settings) as publisher:
        manifest, _ = publisher.published(name)
    objective = None if manifest is None else manifest.params.get("objective")
    if objective in OBJECTIVES:
        say(f"objective {objective}, as the published {name} {manifest.version}"  # type: ignore[union-attr]
            " (not chosen again)")
        return objective
    say(f"no published {name} names its objective: choosing one on the validation cut-off")
    return None


def train_register_publish(
    settings: Settings,
    events_path: Path,
    *,
    kind: str = "xgboost",
    as_of: date | None = None,
    test_days: int = TEST_DAYS,
    rounds: int | None = None,
    objective: str | None = None,
    epochs: int | None = None,
    max_users: int | None = None,
    training_set: TrainingSet | None = None,
    training_set_uri: str = "",
    publish: bool = True,
    say: Any = print,
) -> RankerRun:
    """`as_of`: the model's date (default: the day after the data's last event); `training_set`: rows
    built elsewhere (the Spark job's) instead of building them from the events (cut-offs it lacks are
    built here); the evaluation always reads the events."""
    if kind not in KINDS:
        raise ValueError(f"ranker kind {kind!r}: one of {', '.join(KINDS)}")
    started = time.perf_counter()
    events = load_events(events_path)
    plan = TrainingPlan.for_events(events, as_of or data_end(events), test_days)
    name = MODEL_NAMES[kind]
    # `evaluation` names what the gate compares on (the protocol and its window), `evaluation_split`
    # where this run's window starts.
    params: dict[str, object] = {"gate_metric": GATE_METRIC, "evaluation": plan.evaluation,
                                 "evaluation_split": plan.split.isoformat()}
    if training_set_uri:
        params["training_set"] = training_set_uri
    registry = ModelRegistry(settings)
    evaluation: RankerEvaluation | TFEvaluation
    if kind == "xgboost":
        config = RankerConfig() if rounds is None else RankerConfig(rounds=rounds)
        if objective == PUBLISHED_OBJECTIVE:
            objective = published_objective(settings, name, say)
        evaluation = evaluate(events, plan, config=config, objective=objective, max_users=max_users, say=say,
                              train=training_set)
        artifact = evaluation.artifact
        params.update({"objective": evaluation.objective, "format": artifact.format,
                       "rounds": str(artifact.config.get("rounds", config.rounds))})
        say(f"registering {name} ({len(artifact.model):,} bytes)")
        manifest = registry.register(
            name, artifact.model, features=artifact.feature_names, metrics=protocol_metrics(evaluation),
            params=params, data_snapshot=_snapshot(events_path, plan, evaluation.training_set),
            framework=FRAMEWORKS[kind])
    else:
        from models.tf_ranker import FORMAT, TFRankerConfig

        tf_config = TFRankerConfig() if epochs is None else TFRankerConfig(epochs=epochs)
        evaluation = evaluate_tf(events, plan, config=tf_config, max_users=max_users, say=say,
                                 train=training_set)
        ranker = evaluation.ranker
        params.update({"format": FORMAT, "architecture": tf_config.architecture,
                       "epochs_run": evaluation.facts.get("epochs_run", ""),
                       "best_epoch": evaluation.facts.get("best_epoch", ""),
                       "signature": "serving_default(features float32[None,"
                                    f"{len(ranker.feature_names)}], item_id string[None]) -> score"})
        with tempfile.TemporaryDirectory(prefix="ranker_tf_") as folder:
            version_folder = ranker.export(folder, version=serving_version())
            say(f"registering {name} (SavedModel {version_folder.name}/)")
            manifest = registry.register(
                name, Path(folder), features=ranker.feature_names, metrics=protocol_metrics(evaluation),
                params=params, data_snapshot=_snapshot(events_path, plan, evaluation.training_set),
                framework=FRAMEWORKS[kind])
    result = None
    if publish:
        say(f"publishing {name} {manifest.version} behind the {GATE_METRIC} gate")
        with ModelPublisher(settings, registry) as publisher:
            result = publisher.publish(name, manifest.version)
    return RankerRun(manifest, evaluation, result, time.perf_counter() - started)


def _snapshot(events_path: Path, plan: TrainingPlan, training_set: dict[str, Any]) -> DataSnapshot:
    return DataSnapshot(as_of_date=plan.as_of.isoformat(), events_uri=str(events_path),
                        rows=int(training_set.get("rows", 0)), events_sha256=file_sha256(events_path))


