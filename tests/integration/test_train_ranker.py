"""`finegrain models train-ranker`: a real (small) training run on the real data, stored in the registry
and published to ZooKeeper behind its gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from cli import models as models_cli
from finegrain.codecs import decode
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.schemas import ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import ZkPaths
from models.registry import ModelRegistry
from models.train_ranker import MODEL_NAME

pytestmark = pytest.mark.integration


def test_train_register_and_publish(
    settings: Settings, retail_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_cli, "get_settings", lambda: settings)
    arguments = [
        "models",
        "train-ranker",
        "--events",
        str(retail_data / "events.parquet"),
        "--objective",
        "binary:logistic",
        "--rounds",
        "30",
        "--max-users",
        "400",
        "--json",
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["publish"]["published"] is True
    # Far above MostPop (0.108) even when trained on 400 users a cut-off.
    assert figures["metrics"]["ndcg@20"] > 0.3

    entry = ModelRegistry(settings).get(MODEL_NAME, figures["version"])
    assert list(entry.manifest.features) == list(RANKING_FEATURE_NAMES)
    assert entry.manifest.params["gate_metric"] == "ndcg@20"
    # Without --as-of: as of the day after the data's last event (it learns from every day), scored by
    # a backtest on the last 30 days, the README split.
    assert entry.manifest.data_snapshot.as_of_date == "2010-12-10"
    assert entry.manifest.params["evaluation_split"] == "2010-11-10"
    assert entry.manifest.params["evaluation"] == "readme-protocol-30d"
    zk = zookeeper_client(settings)
    try:
        data, _ = zk.get(ZkPaths(settings.zookeeper_root).model(MODEL_NAME))
    finally:
        zk.stop()
    assert decode(ModelManifest, data) == entry.manifest


def test_a_missing_events_file_is_one_line(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_cli, "get_settings", lambda: settings)
    result = CliRunner().invoke(app, ["models", "train-ranker", "--events", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2
    assert "no events at" in result.output and "Traceback" not in result.output
