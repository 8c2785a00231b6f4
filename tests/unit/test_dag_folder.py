"""The DAG folder as Airflow sees it, without any service: Airflow's own parser finds exactly the two
DAGs and no import error (the shared `finegrain_deployment.py` is ignored, not a broken DAG), and the
nightly DAG submits each job of `spark_jobs.JOBS` in a task of its own, so a job added to the registry
but not to the DAG fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_jobs import JOBS

DAGS = Path(__file__).resolve().parents[2] / "dags"
JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -Xss4m"

# In a subprocess with an Airflow home of its own: Airflow reads its configuration once, at import.
SCRIPT = """
import importlib.util, json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)  # not safe mode: every .py is a candidate
spec = importlib.util.spec_from_file_location("nightly_under_test", sys.argv[1] + "/finegrain_nightly.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("DAGS " + json.dumps({
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {str(path): error for path, error in bag.import_errors.items()},
    "parsed": sorted(str(path) for path in bag.file_last_changed),
    "offline_jobs": list(module.OFFLINE_JOBS),
    "submitted": {job: list(module.dag.get_task(job).application_args) for job in module.OFFLINE_JOBS},
    "upstream": {job: sorted(module.dag.get_task(job).upstream_task_ids) for job in module.OFFLINE_JOBS},
    "conf": {job: module.dag.get_task(job).conf for job in [*module.OFFLINE_JOBS, "training_set"]},
}))
"""


@pytest.fixture(scope="module")
def dag_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS": JAVA_OPTIONS}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(DAGS)], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("DAGS "))
    found: dict[str, object] = json.loads(line.removeprefix("DAGS "))
    return found


def test_airflow_parses_two_dags_and_ignores_the_shared_module(dag_folder: dict[str, object]) -> None:
    assert dag_folder["dag_ids"] == ["finegrain_nightly", "finegrain_retrain"]
    assert dag_folder["import_errors"] == {}
    assert [Path(str(path)).name for path in dag_folder["parsed"]] == [  # type: ignore[attr-defined]
        "finegrain_nightly.py", "finegrain_retrain.py"]


def test_the_nightly_dag_submits_every_registered_job_in_a_task_of_its_own(
        dag_folder: dict[str, object]) -> None:
    assert dag_folder["offline_jobs"] == list(JOBS)
    submitted = dag_folder["submitted"]
    assert isinstance(submitted, dict)
    assert {job: arguments[:2] for job, arguments in submitted.items()} == {
        job: [job, "--as-of"] for job in JOBS}
    # Features first (after the ingest), the others after it, side by side.
    assert dag_folder["upstream"] == {job: ["ingest"] if job == "features" else ["features"] for job in JOBS}


def test_every_spark_submit_starts_its_driver_with_the_deployment_java_options(
        dag_folder: dict[str, object]) -> None:
    """FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS reaches spark-submit as one `--conf` value, spaces and all."""
    assert dag_folder["conf"] == {task: {"spark.driver.extraJavaOptions": JAVA_OPTIONS}
                                  for task in [*JOBS, "training_set"]}
