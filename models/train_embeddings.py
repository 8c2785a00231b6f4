"""One training run of the ALS embedding recall channel, end to end: train on the README protocol's
train events, evaluate the channel alone on its test window (`models.embeddings.evaluate_channel`),
store the `EmbeddingIndex` bytes and a manifest in the registry, then publish it to ZooKeeper if it
passes its gate (the run stays registered either way).

    finegrain models train-embeddings [--events P] [--as-of D] [--factors N] [--iterations N]
                                      [--no-publish] [--json]

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

from finegrain.errors import DataError
from finegrain.evaluation.protocol import SPLIT_DATE, build_split, load_events
from finegrain.recall.embedding import EmbeddingIndex
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from models.embeddings import AlsConfig, evaluate_channel, manifest_fields, train_embeddings
from models.publishing import ModelPublisher, PublishResult, run_summary
from models.registry import ModelRegistry, file_sha256

# The name serving reads (`serving.channels.embedding`: the embedding channel's `model`).
MODEL_NAME = "embeddings_als"
GATE_METRIC = "recall@200"
KS = (10, 20, 100, 200)
ARTIFACT_FORMAT = "finegrain-embedding-index-npz"


def evaluation_name(as_of: date) -> str:
    """Names the evaluation the gate compares on (as the ranker's runs do): two versions are comparable
    only when evaluated on the same split."""
    return f"readme-protocol-{as_of.isoformat()}"


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
    as_of: date = SPLIT_DATE,
    publish: bool = True,
    say: Callable[[str], object] = print,
) -> EmbeddingRun:
    started = time.perf_counter()
    events_path = Path(events_path)
    if not events_path.exists():
        raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    config = config or AlsConfig()
    split = build_split(load_events(events_path), as_of)
    say(f"training ALS ({config.factors} factors, {config.iterations} iterations) on "
        f"{len(split.train):,} lines before {as_of}")
    # The protocol's train events only: the test window is read by the evaluation alone.
    trained = train_embeddings(split.train, as_of, config)
    figures = evaluate_channel(trained.model, split, KS)
    metrics = protocol_metrics(figures)
    say(f"{len(split.users):,} users: recall@20 {metrics['recall@20']:.4f}, recall@200 "
        f"{metrics['recall@200']:.4f}, ndcg@20 {metrics['ndcg@20']:.4f} ({trained.seconds:.1f} s training)")
    data = trained.model.to_bytes()
    fields = manifest_fields(trained, metrics)
    params = {**fields["params"], "gate_metric": GATE_METRIC, "evaluation": evaluation_name(as_of),
              "format": ARTIFACT_FORMAT, "index_type": config.index_type}
    say(f"registering {MODEL_NAME} ({len(data):,} bytes)")
    manifest = ModelRegistry(settings).register(
        MODEL_NAME,
        data,
        features=fields["features"],
        metrics=metrics,
        params=params,
        data_snapshot=DataSnapshot(as_of_date=as_of.isoformat(), events_uri=str(events_path),
                                   rows=len(split.train), events_sha256=file_sha256(events_path)),
        framework=fields["framework"],
    )
    result = None
    if publish:
        say(f"publishing {MODEL_NAME} {manifest.version} behind the {GATE_METRIC} gate")
        with ModelPublisher(settings) as publisher:
            result = publisher.publish(MODEL_NAME, manifest.version)
    return EmbeddingRun(manifest, trained.model, figures, result, time.perf_counter() - started)
