"""`models.train_embeddings`: a real ALS run on the real data, registered and published to ZooKeeper
behind its recall@200 gate; the published artifact rebuilds the same index; a worse run is stored but
refused; `finegrain models train-embeddings` refuses bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from finegrain.codecs import decode
from finegrain.recall.embedding import EmbeddingIndex
from finegrain.schemas import ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import ZkPaths
from models.embeddings import AlsConfig
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from models.train_embeddings import GATE_METRIC, MODEL_NAME, EmbeddingRun, train_register_publish

pytestmark = pytest.mark.integration

# Fewer iterations than the default keep the test short; still far above MostPop's Recall@200 (0.289).
QUICK = AlsConfig(iterations=4)


def znode_manifest(settings: Settings) -> ModelManifest:
    zk = zookeeper_client(settings)
    try:
        data, _ = zk.get(ZkPaths(settings.zookeeper_root).model(MODEL_NAME))
    finally:
        zk.stop()
    return decode(ModelManifest, data)


@pytest.fixture(scope="module")
def first(settings: Settings, retail_data: Path) -> EmbeddingRun:
    return train_register_publish(settings, retail_data / "events.parquet", config=QUICK, say=lambda _: None)


def test_run_is_registered_and_published(first: EmbeddingRun, settings: Settings) -> None:
    assert first.publish is not None and first.publish.published and first.publish.changed
    metrics = first.manifest.metrics
    assert {"recall@20", "recall@200", "ndcg@20"} <= set(metrics)
    assert metrics["recall@200"] > 0.289 + 0.1 and metrics["recall@20"] > 0.067 + 0.05
    assert metrics["recall@20"] <= metrics["recall@200"]
    assert first.manifest.params["gate_metric"] == GATE_METRIC
    assert first.manifest.params["iterations"] == "4"
    # As of the day after the data's last event by default, scored by the backtest on its last 30 days.
    assert first.manifest.data_snapshot.as_of_date == "2010-12-10"
    assert first.manifest.params["evaluation_split"] == "2010-11-10"
    assert first.manifest.params["evaluation"] == "readme-protocol-30d"
    assert first.manifest.data_snapshot.rows > 300_000
    assert znode_manifest(settings) == first.manifest
    entry = ModelRegistry(settings).get(MODEL_NAME, first.manifest.version)
    assert entry.published and entry.manifest == first.manifest


def test_published_artifact_rebuilds_the_same_index(first: EmbeddingRun, settings: Settings) -> None:
    data = ModelRegistry(settings).fetch_artifact(znode_manifest(settings))  # checks the sha256
    model = EmbeddingIndex.from_bytes(data)
    assert model.item_ids.astype(str).tolist() == first.model.item_ids.astype(str).tolist()
    users = first.model.user_ids.astype(str)[::400][:8]
    assert len(users) == 8
    for user in users:
        ours, theirs = first.model.recommend(20, user_id=user), model.recommend(20, user_id=user)
        assert theirs.item_ids == ours.item_ids and len(ours.item_ids) == 20
        np.testing.assert_allclose(theirs.scores, ours.scores, rtol=1e-6)


def test_worse_run_is_stored_but_refused(first: EmbeddingRun, settings: Settings, retail_data: Path) -> None:
    worse = train_register_publish(settings, retail_data / "events.parquet",
                                   config=AlsConfig(factors=2, iterations=1), say=lambda _: None)
    assert worse.publish is not None and worse.publish.refused and not worse.publish.published
    assert worse.manifest.metrics["recall@200"] < first.manifest.metrics["recall@200"] - 0.01
    assert "worse" in worse.publish.reason and GATE_METRIC in worse.publish.reason
    # Still registered, never published; the znode keeps the first run.
    versions = {e.version: e for e in ModelRegistry(settings).list(MODEL_NAME)}
    assert worse.manifest.version in versions and not versions[worse.manifest.version].published
    assert znode_manifest(settings) == first.manifest
    with ModelPublisher(settings) as publisher:
        assert publisher.status(MODEL_NAME).published == first.manifest


def test_command_line_reports_bad_input_in_one_line(tmp_path: Path, retail_data: Path) -> None:
    """In process; the retrain DAG test runs `finegrain models train-embeddings` end to end."""
    runner = CliRunner()
    missing = runner.invoke(app, ["models", "train-embeddings", "--events", str(tmp_path / "none.parquet"),
                                  "--json"])
    assert missing.exit_code == 2 and "no events at" in missing.output
    assert "Traceback" not in missing.output and "{" not in missing.output  # no JSON line: no run
    events = str(retail_data / "events.parquet")
    bad_date = runner.invoke(app, ["models", "train-embeddings", "--events", events, "--as-of", "2010-02-30"])
    assert bad_date.exit_code == 2 and "bad --as-of '2010-02-30'" in bad_date.output
    assert "Traceback" not in bad_date.output
    bad_size = runner.invoke(app, ["models", "train-embeddings", "--events", events, "--factors", "0"])
    assert bad_size.exit_code == 2 and "bad ALS config" in bad_size.output
    early = runner.invoke(app, ["models", "train-embeddings", "--events", events, "--as-of", "2010-03-01"])
    assert early.exit_code == 2 and "needs 120 days of history" in early.output
    assert "Traceback" not in early.output
