"""Manual retraining of one model: train it, register it, publish it if it passes its quality gate.

Triggered by hand (no schedule) with the params `model` and `as_of`:
- `ranker_xgboost` / `ranker_tf`: `build_training_set` submits `spark_jobs/training_set.py` (the ranker
  training set for the cut-offs before `as_of`) to Spark, then `train_ranker` runs
  `finegrain models train-ranker --kind xgboost|tf --training-set <that set>`;
- `embeddings_als`: `train_embeddings` runs `python -m models.train_embeddings` (ALS reads the purchase
  history itself; it needs no training set, so the Spark build is skipped).
`choose_model` picks the branch; the other branch's tasks end up skipped.

The training set travels by path, not XCom: its folder is a function of the run
(`{var_dir}/training_sets/retrain/{as_of}-{run_id}`), rendered identically in both tasks, so a retry of
`train_ranker` reads the set its run built. A gate refusal exits 1 and fails the training task: the
version stays registered (and listed by `finegrain models list`) but is not published; training tasks
are not retried, since a rerun would only register another version.

Orchestration only: no project module is imported here (see `finegrain_nightly.py` for the
deployment settings: FINEGRAIN_HOME, FINEGRAIN_PYTHON, FINEGRAIN_SPARK_SUBMIT, the `finegrain_spark`
connection); `FINEGRAIN_VAR_DIR` says where training sets go (default: `var` in the checkout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import DAG, Param

FINEGRAIN_HOME = Path(os.environ.get("FINEGRAIN_HOME", Path(__file__).resolve().parent.parent))
PYTHON = os.environ.get("FINEGRAIN_PYTHON", sys.executable)
DATA_DIR = os.environ.get("FINEGRAIN_DATA_DIR", str(FINEGRAIN_HOME / "var" / "data" / "retail"))
VAR_DIR = os.environ.get("FINEGRAIN_VAR_DIR", str(FINEGRAIN_HOME / "var"))
SPARK_SUBMIT = os.environ.get("FINEGRAIN_SPARK_SUBMIT", str(Path(PYTHON).parent / "spark-submit"))

RANKERS = {"ranker_xgboost": "xgboost", "ranker_tf": "tf"}
MODELS = (*RANKERS, "embeddings_als")
# The README protocol's split: rankers and embeddings are evaluated on the 30 days after it, so
# training on data before it is what makes their metrics (and gates) honest.
DEFAULT_AS_OF = "2010-11-10"

AS_OF = "{{ params.as_of }}"
EVENTS = "{{ params.events or '" + DATA_DIR + "/events.parquet' }}"
# Run ids hold ':' and '+' (manual__2026-11-27T10:00:00+00:00): fine in a path, awkward in a shell.
TRAINING_SET = (VAR_DIR + "/training_sets/retrain/{{ params.as_of }}-"
                "{{ run_id | replace(':', '') | replace('+', '_') }}")


def choose_model(params: dict[str, Any]) -> str:
    """The first task of the chosen model's branch."""
    model = params["model"]
    if model in RANKERS:
        return "build_training_set"
    if model == "embeddings_als":
        return "train_embeddings"
    raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")


with DAG(
    dag_id="finegrain_retrain",
    description="Retrain one model (ranker or embeddings), register it, publish it behind its gate.",
    schedule=None,
    start_date=pendulum.datetime(2009, 12, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two publications of one model at once would race for its znode
    params={
        "model": Param("ranker_xgboost", type="string", enum=list(MODELS), description="Model to retrain."),
        "as_of": Param(DEFAULT_AS_OF, type="string", pattern=r"^\d{4}-\d{2}-\d{2}$",
                       description="As-of date YYYY-MM-DD: training data ends before it."),
        "events": Param("", type="string",
                        description="Canonical events Parquet; empty: the loaded data."),
    },
    tags=["finegrain", "models"],
) as dag:
    choose = BranchPythonOperator(task_id="choose_model", python_callable=choose_model)
    build = SparkSubmitOperator(
        task_id="build_training_set",
        conn_id="finegrain_spark",
        spark_binary=SPARK_SUBMIT,
        application=str(FINEGRAIN_HOME / "spark_jobs" / "training_set.py"),
        application_args=["--as-of", AS_OF, "--events", EVENTS, "--out", TRAINING_SET],
        name="finegrain-training-set",
        env_vars={"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON,
                  "PYTHONPATH": str(FINEGRAIN_HOME)},
        retries=1,  # idempotent: the set is written to a staging folder and renamed into place
        retry_delay=pendulum.duration(minutes=2),
    )
    train_ranker = BashOperator(
        task_id="train_ranker",
        bash_command=(
            f"'{PYTHON}' -m cli models train-ranker"
            " --kind {{ 'tf' if params.model == 'ranker_tf' else 'xgboost' }}"
            f" --training-set '{TRAINING_SET}' --events '{EVENTS}' --json"
        ),
        cwd=str(FINEGRAIN_HOME),
        retries=0,
    )
    train_embeddings = BashOperator(
        task_id="train_embeddings",
        bash_command=f"'{PYTHON}' -m models.train_embeddings --events '{EVENTS}' --as-of '{AS_OF}' --json",
        cwd=str(FINEGRAIN_HOME),
        retries=0,
    )
    choose >> [build, train_embeddings]
    build >> train_ranker
