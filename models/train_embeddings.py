"""One training run of the ALS embedding recall channel as of a date, end to end: the dates come from
`finegrain.training.plan.TrainingPlan` (by default as of the day after the data's last event): ALS
trained on the purchases before the evaluation split is scored alone on the test window after it
(`models.embeddings.evaluate_channel`); when the split is before the as-of date (a backtest), the
model kept is trained again on every purchase before the as-of date with the same settings; store the
`EmbeddingIndex` bytes and a manifest in the registry, then publish it to ZooKeeper if it passes its
gate (the run stays registered either way).

    finegrain models train-embeddings [--events P] [--as-of D] [--test-days N] [--factors N]
                                      [--iterations N] [--no-publish] [--json]

is the one way to run it from a shell (`cli/models.py`; the retrain DAG runs it too): exit status 1
when the gate refuses the run, 2 when the run cannot be made, 0 otherwise.

The gate metric is `recall@200`: a recall channel hands its candidates to the ranker, so what counts is
how much of the target its top 200 hold, not their order (the ranker reorders them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from finegrain.dates import data_end, rows_before
from finegrain.errors import DataError
from finegrain.evaluation.protocol import TEST_DAYS, build_split, load_events
from finegrain.recall.embedding import EmbeddingIndex
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from finegrain.training.plan import TrainingPlan
from models.embeddings import AlsConfig, evaluate_channel, manifest_fields, train_embeddings
from models.publishing import ModelPublisher, PublishResult, run_summary
from models.registry import ModelRegistry, file_sha256

# The name serving reads (`serving.channels.embedding`: the embedding channel's `model`).
MODEL_NAME = "embeddings_als"
GATE_METRIC = "recall@200"
KS = (10, 20, 100, 200)
ARTIFACT_FORMAT = "finegrain-embedding-index-npz"


@dataclass(frozen=True)
class EmbeddingRun:
    manifest: ModelManifest
    model: EmbeddingIndex
    figures: dict[str, float]
    publish: PublishResult | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**run_summary(self.manifest, self.publish, self.seconds),
                "train_seconds": float(self.manifest.params.get("train_seconds", "nan"))}


def protocol_metrics(figures: dict[str, float]) -> dict[str, float]:
    """The channel's figures with lower-case names (`recall@200`, `ndcg@20`, ...), as the gate reads them."""
    return {name.lower(): round(float(value), 6) for name, value in figures.items()}


def train_register_publish(
    settings: Settings,
    events_path: Path,
    *,
    config: AlsConfig | None = None,
    as_of: date | None = None,
    test_days: int = TEST_DAYS,
    publish: bool = True,
    say: Callable[[str], object] = print,
) -> EmbeddingRun:
    started = time.perf_counter()
    events_path = Path(events_path)
    if not events_path.exists():
        raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    config = config or AlsConfig()
    events = load_events(events_path)
    plan = TrainingPlan.for_events(events, as_of or data_end(events), test_days)
    split = build_split(events, plan.split, test_days=plan.test_days)
    say(f"training ALS ({config.factors} factors, {config.iterations} iterations) on "
        f"{len(split.train):,} lines before {plan.split}")
    # The protocol's train events only: the test window is read by the evaluation alone.
    trained = train_embeddings(split.train, plan.split, config)
    figures = evaluate_channel(trained.model, split, KS)
    metrics = protocol_metrics(figures)
    say(f"{len(split.users):,} users: recall@20 {metrics['recall@20']:.4f}, recall@200 "
        f"{metrics['recall@200']:.4f}, ndcg@20 {metrics['ndcg@20']:.4f} ({trained.seconds:.1f} s training)")
    if plan.backtest:
        say(f"training the model kept on the purchases before {plan.as_of}")
        trained = train_embeddings(events, plan.as_of, config)
    data = trained.model.to_bytes()
    fields = manifest_fields(trained, metrics)
    params = {**fields["params"], "gate_metric": GATE_METRIC, "evaluation": plan.evaluation,
              "evaluation_split": plan.split.isoformat(),
              "format": ARTIFACT_FORMAT, "index_type": config.index_type}
    say(f"registering {MODEL_NAME} ({len(data):,} bytes)")
    manifest = ModelRegistry(settings).register(
        MODEL_NAME,
        data,
        features=fields["features"],
        metrics=metrics,
        params=params,
        data_snapshot=DataSnapshot(as_of_date=plan.as_of.isoformat(), events_uri=str(events_path),
                                   rows=int(rows_before(events, plan.as_of).sum()),
                                   events_sha256=file_sha256(events_path)),
        framework=fields["framework"],
    )
    result = None
    if publish:
        say(f"publishing {MODEL_NAME} {manifest.version} behind the {GATE_METRIC} gate")
        with ModelPublisher(settings) as publisher:
            result = publisher.publish(MODEL_NAME, manifest.version)
    return EmbeddingRun(manifest, trained.model, figures, result, time.perf_counter() - started)
