"""The manual retrain DAG (dags/finegrain_retrain.py): light and quick to import, the task graph, the
rendered commands (training-set path shared by the ranker's two tasks, params passed in the
environment) and a real `dag.test()` run of the embeddings branch (`finegrain models
train-embeddings`) that registers and publishes a version on the local stack."""

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

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
DAG_FILE = PROJECT / "dags" / "finegrain_retrain.py"
RUNNER = Path(__file__).with_name("dag_runner.py")
RUN_ID = "manual__2026-11-27T10:00:00+00:00"

INSPECT = """
import json, sys, time, importlib.util
import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit
import airflow.providers.standard.operators.bash, airflow.providers.standard.operators.python
before = set(sys.modules)
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("finegrain_retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - started
heavy_roots = {"pyspark", "pandas", "numpy", "tensorflow", "xgboost", "faiss", "finegrain", "spark_jobs",
               "models"}
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy_roots)
dag = module.dag
out = {"seconds": seconds, "heavy": heavy, "schedule": str(dag.schedule),
       "params": {name: dag.params[name] for name in dag.params},
       "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
       "branch": {m: module.choose_model({"model": m}) for m in module.MODELS}, "rendered": {}}
for model in ("ranker_xgboost", "ranker_tf", "embeddings_als"):
    context = {"params": {"model": model, "as_of": "2010-10-01", "events": "/data/ev.parquet"},
               "run_id": sys.argv[2]}
    tasks = {t.task_id: t for t in dag.tasks}
    out["rendered"][model] = {
        "spark_args": tasks["build_training_set"].render_template(
            tasks["build_training_set"].application_args, context),
        **{task: {"command": tasks[task].render_template(tasks[task].bash_command, context),
                  "env": tasks[task].render_template(tasks[task].env, context),
                  "append_env": tasks[task].append_env}
           for task in ("train_ranker", "train_embeddings")},
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
    assert inspected["params"]["model"] == "ranker_xgboost" and inspected["params"]["as_of"] == ""
    assert inspected["downstream"] == {
        "choose_model": ["build_training_set", "train_embeddings"],
        "build_training_set": ["train_ranker"],
        "train_ranker": [],
        "train_embeddings": [],
    }
    assert inspected["branch"] == {"ranker_xgboost": "build_training_set", "ranker_tf": "build_training_set",
                                   "embeddings_als": "train_embeddings"}
    assert "unknown model 'ranker_lightgbm'" in inspected["unknown"]


def test_rendered_ranker_commands_share_the_training_set(inspected: dict[str, Any]) -> None:
    path = "/srv/fg/var/training_sets/retrain/2010-10-01-manual__2026-11-27T100000_0000"
    for model, kind in (("ranker_xgboost", "xgboost"), ("ranker_tf", "tf")):
        rendered = inspected["rendered"][model]
        assert rendered["spark_args"] == ["--as-of", "2010-10-01", "--events", "/data/ev.parquet",
                                          "--out", path]
        task = rendered["train_ranker"]
        assert task["command"].endswith('-m cli models train-ranker --kind "$RUN_KIND" --training-set '
                                        '"$RUN_TRAINING_SET" --events "$RUN_EVENTS" --json')
        assert task["env"] == {"RUN_KIND": kind, "RUN_TRAINING_SET": path, "RUN_EVENTS": "/data/ev.parquet"}
        assert task["append_env"]  # the worker's FINEGRAIN_* settings and PYTHONPATH pass through


def test_embeddings_are_trained_by_the_cli_with_params_in_the_environment(inspected: dict[str, Any]) -> None:
    task = inspected["rendered"]["embeddings_als"]["train_embeddings"]
    assert task["command"].endswith('-m cli models train-embeddings --events "$RUN_EVENTS" '
                                    '--as-of "$RUN_AS_OF" --json')
    assert task["env"] == {"RUN_EVENTS": "/data/ev.parquet", "RUN_AS_OF": "2010-10-01"}
    # No rendered param reaches a command line, where a quote in it would be shell code.
    for rendered in inspected["rendered"].values():
        for name in ("train_ranker", "train_embeddings"):
            assert "/data/ev.parquet" not in rendered[name]["command"]
            assert "2010-10-01" not in rendered[name]["command"]


@pytest.fixture(scope="module")
def dag_settings(settings: Settings) -> Iterator[Settings]:
    """A registry and ZooKeeper root of its own: the run's gate compares against nothing another test
    published."""
    own = settings.model_copy(update={"mongo_database": settings.mongo_database + "_retrain",
                                      "zookeeper_root": settings.zookeeper_root + "_retrain"})
    yield own
    drop_namespace(own)


def test_embeddings_branch_registers_and_publishes(dag_settings: Settings, retail_data: Path,
                                                   tmp_path: Path) -> None:
    env = migrated_airflow_env(dag_settings, tmp_path / "airflow", tmp_path / "var")
    conf = {"model": "embeddings_als", "events": str(retail_data / "events.parquet")}
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(DAG_FILE), "finegrain_retrain", "2010-11-10T00:00:00+00:00",
         json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=600)
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    states = dict(line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("TASK "))
    assert states == {"choose_model": "success", "train_embeddings": "success",
                      "build_training_set": "skipped", "train_ranker": "skipped"}, tail
    assert "DAG_RUN_STATE success" in result.stdout

    entries = ModelRegistry(dag_settings).list("embeddings_als")
    assert len(entries) == 1 and entries[0].published, entries
    manifest = entries[0].manifest
    assert manifest.params["gate_metric"] == "recall@200" and manifest.metrics["recall@200"] > 0.4
    zk = zookeeper_client(dag_settings)
    try:
        data, _ = zk.get(ZkPaths(dag_settings.zookeeper_root).model("embeddings_als"))
    finally:
        zk.stop()
    assert decode(ModelManifest, data) == manifest
    assert not (tmp_path / "var" / "training_sets").exists()  # the Spark branch did not run
