"""The model registry (GridFS + `models`) and publishing to ZooKeeper, on the real local stack.

The artifacts are real: small XGBoost classifiers trained on purchase lines of the real data (is a
line a bulk order, quantity >= 12, from its price, hour, weekday and country), scored by AUC on the
lines from the evaluation split on; the weak one sees only the weekday, so its AUC is far lower.
"""

from __future__ import annotations

import json
import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import xgboost as xgb
from kazoo.recipe.watchers import DataWatch
from typer.testing import CliRunner

from cli import models as models_cli
from finegrain.codecs import decode, encode
from finegrain.evaluation.metrics import auc
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_database, zookeeper_client
from finegrain.storage.contract import MongoCollections, ZkPaths
from models.publishing import GATE_HELD, GATE_PASSED, GATE_REFUSED, ModelPublisher
from models.registry import CorruptArtifactError, ModelRegistry, RegistryError, sha256_hex, untar_artifact
from models.train_ranker import published_objective
from tests.integration.sample import SPLIT_DATE

pytestmark = pytest.mark.integration

FEATURES = ["price", "hour", "weekday", "is_uk"]
WEAK_FEATURES = ["weekday"]


@dataclass
class Trained:
    booster: xgb.Booster
    features: list[str]
    auc: float
    train_rows: int
    artifact: bytes


@dataclass
class Models:
    good: Trained
    good_again: Trained  # other seed and sub-sampling: about as good as `good`
    weak: Trained
    weak_dir: Path  # the weak model saved as a directory (JSON model + feature list)
    snapshot: DataSnapshot
    test: pd.DataFrame


def _lines(events: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({
        "price": events["price"].to_numpy(np.float32),
        "hour": events["timestamp"].dt.hour.to_numpy(np.float32),
        "weekday": events["timestamp"].dt.weekday.to_numpy(np.float32),
        "is_uk": (events["country"] == "United Kingdom").to_numpy(np.float32),
    })
    frame["label"] = (events["quantity"] >= 12).to_numpy(np.float32)
    return frame


def _train(train: pd.DataFrame, test: pd.DataFrame, features: list[str], seed: int) -> Trained:
    matrix = xgb.DMatrix(train[features], label=train["label"], feature_names=features)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "subsample": 0.8,
                         "seed": seed, "nthread": 2}, matrix, num_boost_round=30)
    scores = booster.predict(xgb.DMatrix(test[features], feature_names=features))
    return Trained(booster, features, auc(scores, test["label"].to_numpy()), len(train),
                   bytes(booster.save_raw("ubj")))


@pytest.fixture(scope="module")
def trained(retail_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    events_path = retail_data / "events.parquet"
    events = pd.read_parquet(events_path, columns=["event_type", "quantity", "price", "timestamp", "country"])
    events = events[events["event_type"] == "purchase"]
    split = pd.Timestamp(SPLIT_DATE, tz="UTC")
    before = _lines(events[events["timestamp"] < split]).sample(20_000, random_state=1)
    after = _lines(events[events["timestamp"] >= split]).sample(5_000, random_state=2)
    good = _train(before, after, FEATURES, seed=1)
    good_again = _train(before, after, FEATURES, seed=2)
    weak = _train(before, after, WEAK_FEATURES, seed=1)
    weak_dir = tmp_path_factory.mktemp("weak_model")
    weak.booster.save_model(str(weak_dir / "model.json"))
    (weak_dir / "meta").mkdir()
    (weak_dir / "meta" / "features.txt").write_text("\n".join(WEAK_FEATURES) + "\n")
    snapshot = DataSnapshot(as_of_date=SPLIT_DATE.isoformat(), events_uri=str(events_path), rows=len(before),
                            events_sha256=sha256_hex(events_path.read_bytes()))
    return Models(good, good_again, weak, weak_dir, snapshot, after)


def _register(registry: ModelRegistry, name: str, model: Trained, artifact: bytes | Path,
              snapshot: DataSnapshot) -> ModelManifest:
    return registry.register(name, artifact, features=model.features, metrics={"AUC": model.auc},
                             params={"gate_metric": "auc", "objective": "binary:logistic", "rounds": "30"},
                             data_snapshot=snapshot, framework="xgboost")


def test_the_models_differ_as_the_gate_tests_need(trained: Models) -> None:
    assert trained.good.auc > 0.70, trained.good.auc
    assert abs(trained.good.auc - trained.good_again.auc) < 0.01
    assert trained.weak.auc < trained.good.auc - 0.05, (trained.weak.auc, trained.good.auc)


def test_register_list_get_and_fetch_real_artifacts(settings: Settings, trained: Models,
                                                    tmp_path: Path) -> None:
    registry = ModelRegistry(settings)
    good = _register(registry, "bulk_lines_store", trained.good, trained.good.artifact, trained.snapshot)
    weak = _register(registry, "bulk_lines_store", trained.weak, trained.weak_dir, trained.snapshot)
    assert good.version < weak.version
    assert good.sha256 == sha256_hex(trained.good.artifact)
    assert good.artifact_uri == f"gridfs://artifacts/bulk_lines_store/{good.version}"
    assert weak.artifact_uri.endswith(".tar") and list(weak.features) == WEAK_FEATURES
    assert good.metrics["AUC"] == pytest.approx(trained.good.auc)
    assert good.data_snapshot.rows == 20_000 and good.data_snapshot.as_of_date == "2010-11-10"

    entries = registry.list("bulk_lines_store")
    assert [e.version for e in entries] == [good.version, weak.version]
    assert not any(e.published or e.pinned for e in entries)
    document = mongo_database(settings)[MongoCollections.MODELS].find_one(
        {"_id": f"bulk_lines_store:{good.version}"})
    assert document is not None and document["name"] == "bulk_lines_store"
    assert decode(ModelManifest, document["manifest"]) == good
    assert registry.get("bulk_lines_store", good.version).manifest == good

    # The fetched booster scores exactly like the trained one.
    booster = xgb.Booster(model_file=bytearray(registry.fetch_artifact(good)))
    test = xgb.DMatrix(trained.test[FEATURES], feature_names=FEATURES)
    np.testing.assert_array_equal(booster.predict(test), trained.good.booster.predict(test))
    # The directory comes back whole.
    folder = untar_artifact(registry.fetch_artifact(weak), tmp_path / "weak")
    assert (folder / "meta" / "features.txt").read_text().split() == WEAK_FEATURES
    restored = xgb.Booster(model_file=str(folder / "model.json"))
    weak_test = xgb.DMatrix(trained.test[WEAK_FEATURES], feature_names=WEAK_FEATURES)
    np.testing.assert_allclose(restored.predict(weak_test), trained.weak.booster.predict(weak_test),
                               rtol=1e-6)

    with pytest.raises(RegistryError, match="no model bulk_lines_store version 1999"):
        registry.get("bulk_lines_store", "1999")
    with pytest.raises(RegistryError, match="registered already"):
        registry.register("bulk_lines_store", b"x", version=good.version)
    with pytest.raises(RegistryError, match="bad model name"):
        registry.register("Bulk/Lines", b"x")


def _next(watched: queue.Queue[bytes | None], timeout: float = 5.0) -> bytes | None:
    return watched.get(timeout=timeout)


def test_publish_gate_watch_rollback_and_pin(settings: Settings, trained: Models) -> None:
    name = "bulk_lines"
    registry = ModelRegistry(settings)
    good = _register(registry, name, trained.good, trained.good.artifact, trained.snapshot)
    weak = _register(registry, name, trained.weak, trained.weak_dir, trained.snapshot)
    good_again = _register(registry, name, trained.good_again, trained.good_again.artifact, trained.snapshot)
    path = ZkPaths(settings.zookeeper_root).model(name)
    watcher = zookeeper_client(settings)
    watched: queue.Queue[bytes | None] = queue.Queue()
    DataWatch(watcher, path, lambda data, _stat: watched.put(data))
    try:
        assert _next(watched) is None  # no znode yet
        with ModelPublisher(settings) as publisher:
            first = publisher.publish(name, good.version)
            assert first.published and first.changed and first.previous is None
            assert "first published version" in first.reason
            assert decode(ModelManifest, publisher.zk.get(path)[0]) == good
            assert decode(ModelManifest, _next(watched) or b"") == good

            refused = publisher.publish(name, weak.version)
            assert refused.refused and not refused.published and not refused.changed
            assert "auc" in refused.reason and good.version in refused.reason
            assert refused.gate is not None and refused.gate.candidate == pytest.approx(trained.weak.auc)
            assert decode(ModelManifest, publisher.zk.get(path)[0]) == good
            stored = registry.get(name, weak.version)
            assert not stored.published and stored.gate is not None and "auc" in stored.gate

            second = publisher.publish(name, good_again.version)
            assert second.changed and second.previous == good.version, second.reason
            assert decode(ModelManifest, _next(watched) or b"") == good_again
            again = publisher.publish(name, good_again.version)
            assert again.published and not again.changed

            back = publisher.rollback(name)
            assert (back.version, back.previous) == (good.version, good_again.version)
            assert publisher.zk.get(path)[0] == encode(good)
            assert decode(ModelManifest, _next(watched) or b"") == good
            flags = {e.version: (e.published, e.withdrawn) for e in registry.list(name)}
            assert flags == {good.version: (True, False), weak.version: (False, False),
                             good_again.version: (False, True)}
            with pytest.raises(RegistryError, match="no earlier published version"):
                publisher.rollback(name)  # the good_again version is withdrawn, the weak one never published

            pinned = publisher.pin(name, good.version)
            assert pinned.published and not pinned.changed
            blocked = publisher.publish(name, good_again.version)
            assert blocked.refused and "pinned to version " + good.version in blocked.reason
            assert decode(ModelManifest, publisher.zk.get(path)[0]) == good
            assert publisher.rollback(name).refused
            forced = publisher.publish(name, weak.version, force=True)
            assert forced.changed and "forced past the gate" in forced.reason
            assert publisher.pinned(name) == weak.version  # the pin follows the forced version
            assert decode(ModelManifest, _next(watched) or b"") == weak
            assert publisher.unpin(name) == weak.version and publisher.pinned(name) is None
            assert publisher.publish(name, good_again.version).changed  # better than weak: passes

            status = publisher.status(name)
            assert status.published == good_again and status.in_sync and status.pinned is None
            # Created with good, then set to good_again, good (rollback), weak (forced), good_again.
            assert status.znode_version == 4
    finally:
        watcher.stop()
        watcher.close()


def test_the_gate_decides_without_publishing(settings: Settings, trained: Models,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` (the nightly gate task's `finegrain models gate`) makes publish's decision and records it,
    but writes nothing to ZooKeeper; a pinned model's candidate is held, not refused."""
    name = "bulk_lines_gate"
    registry = ModelRegistry(settings)
    good = _register(registry, name, trained.good, trained.good.artifact, trained.snapshot)
    weak = _register(registry, name, trained.weak, trained.weak_dir, trained.snapshot)
    good_again = _register(registry, name, trained.good_again, trained.good_again.artifact, trained.snapshot)
    with ModelPublisher(settings) as publisher:
        first = publisher.check(name, good.version)
        assert first.verdict == GATE_PASSED and "first published version" in first.reason
        assert publisher.published(name) == (None, None)  # nothing written
        assert publisher.publish(name, good.version).changed
        refused = publisher.check(name, weak.version)
        assert refused.verdict == GATE_REFUSED and refused.published == good.version
        assert refused.gate is not None and refused.gate.current == pytest.approx(trained.good.auc)
        assert "refused by the gate" in (registry.get(name, weak.version).gate or "")
        assert publisher.check(name, good_again.version).verdict == GATE_PASSED
        assert publisher.check(name, good.version).reason.endswith("is already published")
        publisher.pin(name, good.version)
        held = publisher.check(name, good_again.version)
        assert held.verdict == GATE_HELD and f"pinned to version {good.version}" in held.reason
        znode = ZkPaths(settings.zookeeper_root).model(name)
        assert decode(ModelManifest, publisher.zk.get(znode)[0]) == good

    monkeypatch.setattr(models_cli, "get_settings", lambda: settings)
    root = typer.Typer()
    root.add_typer(models_cli.app, name="models")
    runner = CliRunner()
    both = runner.invoke(root, ["models", "gate", f"{name}={good_again.version}", "--json"])
    assert both.exit_code == 0, both.output  # held is not a refusal
    figures = json.loads(both.output.strip().splitlines()[-1])
    assert figures["held"] == {name: good_again.version} and figures["refused"] == {}
    runner.invoke(root, ["models", "unpin", name])
    worse = runner.invoke(root, ["models", "gate", f"{name}={weak.version}", "--json"])
    assert worse.exit_code == 1 and "refused" in worse.output, worse.output
    assert json.loads(worse.output.strip().splitlines()[-1])["refused"] == {name: weak.version}
    bad = runner.invoke(root, ["models", "gate", name])
    assert bad.exit_code == 2 and f"bad candidate '{name}': expected NAME=VERSION" in bad.output


def test_a_corrupt_artifact_is_refused_by_fetch_and_publish(settings: Settings, trained: Models) -> None:
    name = "bulk_lines_corrupt"
    registry = ModelRegistry(settings)
    manifest = _register(registry, name, trained.good, trained.good.artifact, trained.snapshot)
    chunks = mongo_database(settings)[f"{MongoCollections.ARTIFACTS}.chunks"]
    entry = registry.get(name, manifest.version)
    chunk = chunks.find_one({"files_id": entry.file_id, "n": 0})
    assert chunk is not None
    tampered = bytes([chunk["data"][0] ^ 0xFF]) + chunk["data"][1:]
    assert chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": tampered}}).modified_count == 1
    with pytest.raises(CorruptArtifactError, match="corrupt: sha256"):
        registry.fetch_artifact(manifest)
    with ModelPublisher(settings) as publisher:
        with pytest.raises(CorruptArtifactError):
            publisher.publish(name, manifest.version, force=True)
        assert publisher.published(name) == (None, None)
        assert not registry.get(name, manifest.version).published


def test_cli_lists_refuses_with_the_reason_and_reports_status(
        settings: Settings, trained: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_cli, "get_settings", lambda: settings)
    root = typer.Typer()
    root.add_typer(models_cli.app, name="models")
    runner = CliRunner()
    name = "bulk_lines_cli"
    registry = ModelRegistry(settings)
    good = _register(registry, name, trained.good, trained.good.artifact, trained.snapshot)
    weak = _register(registry, name, trained.weak, trained.weak_dir, trained.snapshot)

    listed = runner.invoke(root, ["models", "list", name, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [v["version"] for v in json.loads(listed.output.strip().splitlines()[-1])["versions"]] == [
        good.version, weak.version]
    published = runner.invoke(root, ["models", "publish", name, good.version])
    assert published.exit_code == 0 and "published:" in published.output, published.output
    refused = runner.invoke(root, ["models", "publish", name, weak.version])
    assert refused.exit_code == 1 and "refused:" in refused.output and "auc" in refused.output
    # Several at once (the nightly DAG's form): each reported, the first refusal ends it with exit 1.
    other = _register(registry, "bulk_lines_cli_other", trained.good, trained.good.artifact, trained.snapshot)
    both = runner.invoke(root, ["models", "publish", f"bulk_lines_cli_other={other.version}",
                                f"{name}={weak.version}", "--json"])
    assert both.exit_code == 1 and "published:" in both.output and "refused:" in both.output, both.output
    assert [json.loads(line)["name"] for line in both.output.splitlines() if line.startswith("{")] == [
        "bulk_lines_cli_other", name]
    for bad in (["models", "publish", name], ["models", "publish", f"{name}=", "x=y"]):
        answer = runner.invoke(root, bad)
        assert answer.exit_code == 2 and "bad model" in answer.output, answer.output
    status = runner.invoke(root, ["models", "status", name, "--json"])
    assert status.exit_code == 0, status.output
    figures = json.loads(status.output.strip().splitlines()[-1])["models"][0]
    assert figures["published"]["version"] == good.version and figures["in_sync"]
    assert [v["gate"] is not None for v in figures["versions"]] == [True, True]
    shown = runner.invoke(root, ["models", "show", name, weak.version])
    assert shown.exit_code == 0 and "metric AUC" in shown.output
    missing = runner.invoke(root, ["models", "show", name, "19990101T000000.000"])
    assert missing.exit_code == 2 and "no model bulk_lines_cli version" in missing.output
    pinned = runner.invoke(root, ["models", "pin", name, good.version])
    assert pinned.exit_code == 0, pinned.output
    assert runner.invoke(root, ["models", "unpin", name]).exit_code == 0
    assert runner.invoke(root, ["models", "rollback", name]).exit_code == 2  # nothing earlier


def test_a_nightly_retrain_keeps_the_published_objective(settings: Settings, trained: Models) -> None:
    """`train-ranker --objective published` (the nightly DAG's): the serving version's objective, or
    None (choose one) when nothing is published."""
    name = "bulk_lines_objective"
    said: list[str] = []
    assert published_objective(settings, name, said.append) is None
    assert "choosing one on the validation cut-off" in said[-1]
    registry = ModelRegistry(settings)
    manifest = registry.register(name, trained.good.artifact, features=trained.good.features,
                                 metrics={"AUC": trained.good.auc},
                                 params={"gate_metric": "auc", "objective": "rank:pairwise"},
                                 data_snapshot=trained.snapshot, framework="xgboost")
    with ModelPublisher(settings) as publisher:
        assert publisher.publish(name, manifest.version).changed
    assert published_objective(settings, name, said.append) == "rank:pairwise"
    assert manifest.version in said[-1] and "not chosen again" in said[-1]
