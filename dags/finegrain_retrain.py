"""Manual retraining of one model: train it, register it, publish it if it passes its quality gate.

Triggered by hand (no schedule) with the params `model` and `as_of`:
- `ranker_xgboost` / `ranker_tf`: `build_training_set` submits `spark_jobs/training_set.py` (the ranker
  training set for the cut-offs before `as_of`) to Spark, then `train_ranker` runs
  `finegrain models train-ranker --kind xgboost|tf --training-set <that set>`;
- `embeddings_als`: `train_embeddings` runs `finegrain models train-embeddings --as-of <as_of>` (ALS
  reads the purchase history itself; it needs no training set, so the Spark build is skipped).
`choose_model` picks the branch; the other branch's tasks end up skipped.

The training set travels by path, not XCom: its folder is a function of the run
(`{var_dir}/training_sets/retrain/{as_of}-{run_id}`), rendered identically in both tasks, so a retry of
`train_ranker` reads the set its run built. A gate refusal exits 1 and fails the training task: the
version stays registered (and listed by `finegrain models list`) but is not published; training tasks
are not retried, since a rerun would only register another version.

Orchestration only: no project module is imported here. The deployment settings (FINEGRAIN_HOME,
FINEGRAIN_PYTHON, FINEGRAIN_SPARK_SUBMIT, FINEGRAIN_VAR_DIR for the training sets, the
`finegrain_spark` connection) and the task builders are in `finegrain_deployment.py`, shared with the
nightly DAG. Params reach the commands as environment variables, never pasted into a shell line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import DAG, Param

# Airflow puts the DAG folder on sys.path; a DAG file loaded by path (tests, tools) needs it too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from finegrain_deployment import EVENTS, VAR_DIR, finegrain_command, spark_submit

RANKERS = {"ranker_xgboost": "xgboost", "ranker_tf": "tf"}
MODELS = (*RANKERS, "embeddings_als")
# Empty `as_of`: the run's logical date. Training reads the data before it.
AS_OF = "{{ params.as_of or ds }}"
# Run ids hold ':' and '+' (manual__2026-11-27T10:00:00+00:00): fine in a path, awkward in a shell.
TRAINING_SET = (VAR_DIR + "/training_sets/retrain/{{ params.as_of or ds }}-"
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
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),  # any past date: runs are triggered by hand
    catchup=False,
    max_active_runs=1,  # two publications of one model at once would race for its znode
    params={
        "model": Param("ranker_xgboost", type="string", enum=list(MODELS), description="Model to retrain."),
        "as_of": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                       description="As-of date YYYY-MM-DD: training data ends before it; empty: the "
                       "run's logical date."),
        "events": Param("", type="string",
                        description="Canonical events Parquet; empty: the loaded data."),
    },
    tags=["finegrain", "models"],
) as dag:
    choose = BranchPythonOperator(task_id="choose_model", python_callable=choose_model)
    build = spark_submit(
        "build_training_set",
        "spark_jobs/training_set.py",
        ["--as-of", AS_OF, "--events", EVENTS, "--out", TRAINING_SET],
        name="finegrain-training-set",
        retries=1,  # idempotent: the set is written to a staging folder and renamed into place
        retry_delay=pendulum.duration(minutes=2),
    )
    train_ranker = finegrain_command(
        "train_ranker",
        'models train-ranker --kind "$RUN_KIND" --training-set "$RUN_TRAINING_SET" --events "$RUN_EVENTS" '
        "--json",
        env={"RUN_KIND": "{{ 'tf' if params.model == 'ranker_tf' else 'xgboost' }}",
             "RUN_TRAINING_SET": TRAINING_SET, "RUN_EVENTS": EVENTS},
        retries=0,
    )
    train_embeddings = finegrain_command(
        "train_embeddings",
        'models train-embeddings --events "$RUN_EVENTS" --as-of "$RUN_AS_OF" --json',
        env={"RUN_EVENTS": EVENTS, "RUN_AS_OF": AS_OF},
        retries=0,
    )
    choose >> [build, train_embeddings]
    build >> train_ranker
