"""The Airflow DAGs: importable without heavy modules, and a real run with `dag.test()` that builds every
offline dataset on the local stack (Airflow on SQLite in a temporary AIRFLOW_HOME)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset
from finegrain.storage.redis_versions import RedisVersions
from tests.integration.airflow_env import DAGS, migrated_airflow_env

pytestmark = pytest.mark.integration

RUNNER = Path(__file__).with_name("dag_runner.py")


@pytest.fixture(scope="module")
def airflow_env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("airflow")
    env = migrated_airflow_env(settings, home, home / "var")
    yield env


def test_dags_import_only_airflow() -> None:
    """DAG files orchestrate: importing one must not pull in Spark, pandas, TensorFlow or our core."""
    script = f"""
import sys, importlib.util, pathlib
import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit
import airflow.providers.standard.operators.bash
before = set(sys.modules)
for path in sorted(pathlib.Path({str(DAGS)!r}).glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy_roots = {{"pyspark", "pandas", "tensorflow", "xgboost", "finegrain", "spark_jobs"}}
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy_roots)
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout


def test_nightly_dag_builds_every_offline_dataset(
    airflow_env: dict[str, str], settings: Settings, retail_data: Path, tmp_path: Path
) -> None:
    # The last ten weeks of data keep the run short; the jobs read only what is before the as-of date.
    events = pd.read_parquet(retail_data / "events.parquet")
    recent = events[events["timestamp"] >= pd.Timestamp("2010-10-01", tz="UTC")]
    recent.to_parquet(tmp_path / "events.parquet", index=False)
    conf = {"events": str(tmp_path / "events.parquet"), "as_of": "2010-12-01"}
    result = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            str(DAGS / "finegrain_nightly.py"),
            "finegrain_nightly",
            "2010-12-01T02:00:00+00:00",
            json.dumps(conf),
        ],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    states = dict(line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("TASK "))
    assert states == {"load_data": "success", "offline_build": "success"}, tail
    assert "DAG_RUN_STATE success" in result.stdout
    assert (Path(airflow_env["FINEGRAIN_DATA_DIR"]) / "events.parquet").exists()
    versions = RedisVersions(redis_client(settings))
    for dataset in (Dataset.FEATURES, Dataset.INDEX, Dataset.SIMILARITY, Dataset.POPULARITY):
        current = versions.current(dataset)
        assert current is not None and current.startswith("20101201-"), (dataset, current)
