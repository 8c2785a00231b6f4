"""Nightly offline pipeline: load the raw data, then build every offline dataset as of the run's date.

Orchestration only: each task runs a `finegrain` command or submits a job module of `spark_jobs/`
with spark-submit; no logic lives here, and importing this file needs nothing beyond Airflow.

Deployment settings (FINEGRAIN_HOME, FINEGRAIN_PYTHON, FINEGRAIN_DATA_DIR, FINEGRAIN_SPARK_SUBMIT, the
`finegrain_spark` connection) and the task builders are in `finegrain_deployment.py`, shared with the
retrain DAG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param

# Airflow puts the DAG folder on sys.path; a DAG file loaded by path (tests, tools) needs it too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from finegrain_deployment import DATA_DIR, EVENTS, finegrain_command, spark_submit

# The jobs of spark_jobs.JOBS (a test checks they are the same), submitted together: they then share
# one Spark session (a session costs about 10 s to start and ~400 MB), and each is idempotent, so a
# retry reruns all of them safely.
OFFLINE_JOBS = ("features", "content_index", "item_similarity", "popularity")

with DAG(
    dag_id="finegrain_nightly",
    description="Load the raw data and rebuild features, content indexes, item similarity and popularity.",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),  # any past date; backfills name their own dates
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
    load = finegrain_command(
        "load_data",
        # ${VAR:+...}: --source only when the param is set; quoted, a value stays one word.
        'data load --out "$RUN_DATA_DIR" ${RUN_SOURCE_CSV:+--source "$RUN_SOURCE_CSV"}',
        env={"RUN_DATA_DIR": DATA_DIR, "RUN_SOURCE_CSV": "{{ params.source_csv }}"},
    )
    load >> spark_submit(
        "offline_build",
        "spark_jobs/submit.py",
        [*OFFLINE_JOBS, "--as-of", "{{ params.as_of or ds }}", "--events", EVENTS],
        name="finegrain-offline-build",
    )
