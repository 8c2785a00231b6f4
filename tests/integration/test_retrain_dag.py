"""The manual retrain DAG (dags/finegrain_retrain.py): light and quick to import, the task graph, the
rendered spark-submit arguments and task arguments (the training-set path shared by the ranker's two
tasks), and real `dag.test()` runs of every branch on the local stack with quick hyper-parameters:
the XGBoost ranker (Spark training set, then trained, registered and published), the TensorFlow ranker
with `publish` false (registered, not published) and the ALS embeddings (registered and published)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finegrain.codecs import decode
from finegrain.schemas import ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import ZkPaths
from models.registry import ModelRegistry
from tests.integration.airflow_env import migrated_airflow_env
from tests.integration.conftest import drop_namespace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[2]
DAG_FILE = PROJECT / "dags" / "finegrain_retrain.py"
RUNNER = Path(__file__).with_name("dag_runner.py")
RUN_ID = "manual__2026-11-27T10:00:00+00:00"
# Quick settings; the TF ranker gets two epochs: one of 150 users has scored as low as 0.233 NDCG@20.
QUICK = {"max_users": 150, "xgboost_rounds": 20, "xgboost_objective": "binary:logistic", "tf_epochs": 2,
         "als_factors": 16, "als_iterations": 4}

INSPECT = """
import json, sys, time, importlib.util
import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit
import airflow.providers.standard.operators.python
before = set(sys.modules)
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("finegrain_retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - started
heavy_roots = {"pyspark", "pandas", "numpy", "tensorflow", "xgboost", "faiss", "finegrain", "spark_jobs",
               "models", "serving"}
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy_roots)
import finegrain_deployment as deployment
dag = module.dag
tasks = {t.task_id: t for t in dag.tasks}
out = {"seconds": seconds, "heavy": heavy, "schedule": str(dag.schedule),
       "params": {name: dag.params[name] for name in dag.params},
       "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
       "branch": {m: module.choose_model({"model": m}) for m in module.MODELS}, "rendered": {}}
for model in ("ranker_xgboost", "ranker_tf", "embeddings_als"):
    params = {**{name: dag.params[name] for name in dag.params}, "model": model, "as_of": "2010-10-01",
              "events": "/data/ev.parquet", "max_users": 300, "xgboost_rounds": 7, "tf_epochs": 2}
    context = {"params": params, "run_id": sys.argv[2], "ds": "2026-11-27"}
    out["rendered"][model] = {
        "spark_args": tasks["build_training_set"].render_template(
            tasks["build_training_set"].application_args, context),
        **{task: tasks[task].render_template(tasks[task].op_kwargs, context)
           for task in ("train_ranker", "train_embeddings")},
        "ranker_arguments": {kind: deployment.ranker_arguments(kind, params) for kind in ("xgboost", "tf")},
        # The nightly DAG's default objective, and an objective param overriding it.
        "nightly_arguments": [
            deployment.ranker_arguments("xgboost", params, "published"),
            deployment.ranker_arguments("xgboost", {**params, "xgboost_objective": "rank:ndcg"},
                                        "published")],
        "embedding_arguments": deployment.embedding_arguments({**params, "als_iterations": 3}),
    }
try:
    module.choose_model({"model": "ranker_lightgbm"})
except ValueError as exc:
    out["unknown"] = str(exc)
print("INSPECT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def inspected() -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", INSPECT, str(DAG_FILE), RUN_ID], capture_output=True,
                            text=True, timeout=180, env={**os.environ, "FINEGRAIN_VAR_DIR": "/srv/fg/var"})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("INSPECT "))
    found: dict[str, Any] = json.loads(line.removeprefix("INSPECT "))
    return found


def test_dag_imports_quickly_and_only_airflow(inspected: dict[str, Any]) -> None:
    assert inspected["heavy"] == []
    assert inspected["seconds"] < 1.0, inspected["seconds"]


def test_task_graph_and_params(inspected: dict[str, Any]) -> None:
    assert inspected["schedule"] == "None"
    params = inspected["params"]
    assert params["model"] == "ranker_xgboost" and params["as_of"] is None and params["publish"] is True
    assert params["events"] is None and {name: params[name] for name in QUICK} == dict.fromkeys(QUICK)
    assert inspected["downstream"] == {
        "choose_model": ["build_training_set", "train_embeddings"],
        "build_training_set": ["train_ranker"],
        "train_ranker": [],
        "train_embeddings": [],
    }
    assert inspected["branch"] == {"ranker_xgboost": "build_training_set", "ranker_tf": "build_training_set",
                                   "embeddings_als": "train_embeddings"}
    assert "unknown model 'ranker_lightgbm'" in inspected["unknown"]


def test_rendered_ranker_tasks_share_the_training_set(inspected: dict[str, Any]) -> None:
    path = "/srv/fg/var/training_sets/retrain/2010-10-01-manual__2026-11-27T100000_0000"
    for model in ("ranker_xgboost", "ranker_tf"):
        rendered = inspected["rendered"][model]
        assert rendered["spark_args"] == ["--as-of", "2010-10-01", "--events", "/data/ev.parquet",
                                          "--out", path, "--max-users", "300"]
        assert rendered["train_ranker"] == {"as_of": "2010-10-01", "training_set": path,
                                            "events": "/data/ev.parquet"}
    arguments = inspected["rendered"]["ranker_xgboost"]["ranker_arguments"]
    assert arguments == {"xgboost": ["--rounds", "7"], "tf": ["--epochs", "2"]}
    assert inspected["rendered"]["ranker_xgboost"]["nightly_arguments"] == [
        ["--rounds", "7", "--objective", "published"], ["--rounds", "7", "--objective", "rank:ndcg"]]


def test_embeddings_take_the_date_and_their_own_hyper_parameters(inspected: dict[str, Any]) -> None:
    rendered = inspected["rendered"]["embeddings_als"]
    assert rendered["train_embeddings"] == {"as_of": "2010-10-01", "events": "/data/ev.parquet"}
    assert rendered["embedding_arguments"] == ["--iterations", "3"]


@pytest.fixture(scope="module")
def dag_settings(settings: Settings) -> Iterator[Settings]:
    """A registry and ZooKeeper root of its own: the runs' gates compare against nothing another test
    published."""
    own = settings.model_copy(update={"mongo_database": settings.mongo_database + "_retrain",
                                      "zookeeper_root": settings.zookeeper_root + "_retrain"})
    yield own
    drop_namespace(own)


@pytest.fixture(scope="module")
def airflow_env(dag_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("retrain")
    return migrated_airflow_env(dag_settings, folder / "airflow", folder / "var")


def run_retrain(env: dict[str, str], logical_date: str, conf: dict[str, Any]) -> dict[str, str]:
    result = subprocess.run([sys.executable, str(RUNNER), str(DAG_FILE), "finegrain_retrain", logical_date,
                             json.dumps(conf)], env=env, capture_output=True, text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert "DAG_RUN_STATE success" in result.stdout, tail
    return {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()
            if line.startswith("TASK ")}


def published_manifest(settings: Settings, name: str) -> ModelManifest | None:
    zk = zookeeper_client(settings)
    try:
        if not zk.exists(ZkPaths(settings.zookeeper_root).model(name)):
            return None
        data, _ = zk.get(ZkPaths(settings.zookeeper_root).model(name))
    finally:
        zk.stop()
    return decode(ModelManifest, data)


@pytest.mark.parametrize(("model", "publish"), [("ranker_xgboost", True), ("ranker_tf", False)])
def test_a_ranker_branch_builds_its_set_with_spark_trains_and_registers(
        model: str, publish: bool, dag_settings: Settings, airflow_env: dict[str, str],
        retail_data: Path) -> None:
    conf = {**QUICK, "model": model, "as_of": "2010-11-10", "publish": publish,
            "events": str(retail_data / "events.parquet")}
    states = run_retrain(airflow_env, "2026-11-27T10:00:00+00:00", conf)
    assert states == {"choose_model": "success", "build_training_set": "success", "train_ranker": "success",
                      "train_embeddings": "skipped"}, states
    entries = ModelRegistry(dag_settings).list(model)
    assert len(entries) == 1, entries
    manifest = entries[0].manifest
    assert manifest.data_snapshot.as_of_date == "2010-11-10"
    assert "/training_sets/retrain/2010-11-10-" in manifest.params["training_set"]
    if model == "ranker_xgboost":
        assert manifest.params["objective"] == "binary:logistic" and manifest.params["rounds"] == "20"
    assert manifest.metrics["ndcg@20"] > 0.2
    assert entries[0].published is publish
    assert published_manifest(dag_settings, model) == (manifest if publish else None)


def test_the_embeddings_branch_registers_and_publishes(dag_settings: Settings, airflow_env: dict[str, str],
                                                       retail_data: Path) -> None:
    conf = {**QUICK, "model": "embeddings_als", "events": str(retail_data / "events.parquet")}
    states = run_retrain(airflow_env, "2010-11-10T00:00:00+00:00", conf)  # empty as_of: the logical date
    assert states == {"choose_model": "success", "train_embeddings": "success",
                      "build_training_set": "skipped", "train_ranker": "skipped"}, states
    entries = ModelRegistry(dag_settings).list("embeddings_als")
    assert len(entries) == 1 and entries[0].published, entries
    manifest = entries[0].manifest
    assert manifest.params["gate_metric"] == "recall@200" and manifest.metrics["recall@200"] > 0.3
    assert manifest.data_snapshot.as_of_date == "2010-11-10"
    assert published_manifest(dag_settings, "embeddings_als") == manifest
