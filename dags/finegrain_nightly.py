"""Nightly offline pipeline: load the raw data, then build every offline dataset as of the run's date.

Orchestration only: each task runs a `finegrain` command or submits a job module of `spark_jobs/`
with spark-submit; no logic lives here, and importing this file needs nothing beyond Airflow.

Deployment settings (environment of the Airflow workers):
- `FINEGRAIN_HOME`: the project checkout (default: the parent of this folder);
- `FINEGRAIN_DATA_DIR`: where the loaded data goes (default: `var/data/retail` in the checkout);
- `FINEGRAIN_SPARK_SUBMIT`: the spark-submit binary (default: `spark-submit` beside the Python running
  Airflow, i.e. the project's venv);
- Airflow connection `finegrain_spark`: the Spark master, e.g.
  `AIRFLOW_CONN_FINEGRAIN_SPARK='{"conn_type": "spark", "host": "local[*]"}'` or a cluster URL;
- every `FINEGRAIN_*` store address, passed through to the jobs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

FINEGRAIN_HOME = Path(os.environ.get("FINEGRAIN_HOME", Path(__file__).resolve().parent.parent))
PYTHON = os.environ.get("FINEGRAIN_PYTHON", sys.executable)
DATA_DIR = os.environ.get("FINEGRAIN_DATA_DIR", str(FINEGRAIN_HOME / "var" / "data" / "retail"))
SPARK_SUBMIT = os.environ.get("FINEGRAIN_SPARK_SUBMIT", str(Path(PYTHON).parent / "spark-submit"))
# The jobs of spark_jobs.JOBS, submitted together: they then share one Spark session (a session costs
# about 10 s to start and ~400 MB), and each is idempotent, so a retry reruns all of them safely.
OFFLINE_JOBS = ("features", "content_index", "item_similarity", "popularity")

with DAG(
    dag_id="finegrain_nightly",
    description="Load the raw data and rebuild features, content indexes, item similarity and popularity.",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2009, 12, 1, tz="UTC"),  # the data starts here; backfills may too
    catchup=False,
    max_active_runs=1,  # two builds of one dataset at once would race for its pointer
    default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=5)},
    params={
        "source_csv": Param(
            "", type="string", description="Raw CSV (gzip) to load; empty: the configured one."
        ),
        "events": Param(
            "",
            type="string",
            description="Canonical events Parquet for the jobs; empty: the freshly loaded data.",
        ),
        "as_of": Param(
            "", type="string", description="As-of date YYYY-MM-DD; empty: the run's logical date."
        ),
    },
    tags=["finegrain", "offline"],
) as dag:
    load = BashOperator(
        task_id="load_data",
        bash_command=(
            f"'{PYTHON}' -m cli data load --out '{DATA_DIR}'"
            "{% if params.source_csv %} --source '{{ params.source_csv }}'{% endif %}"
        ),
        cwd=str(FINEGRAIN_HOME),
    )
    as_of = "{{ params.as_of or ds }}"
    events = "{{ params.events or '" + DATA_DIR + "/events.parquet' }}"
    load >> SparkSubmitOperator(
        task_id="offline_build",
        conn_id="finegrain_spark",
        spark_binary=SPARK_SUBMIT,
        application=str(FINEGRAIN_HOME / "spark_jobs" / "submit.py"),
        application_args=[*OFFLINE_JOBS, "--as-of", as_of, "--events", events],
        name="finegrain-offline-build",
        env_vars={
            "PYSPARK_PYTHON": PYTHON,
            "PYSPARK_DRIVER_PYTHON": PYTHON,
            "PYTHONPATH": str(FINEGRAIN_HOME),
        },
    )
