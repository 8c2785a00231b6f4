"""Manual retraining of one model: train it as of a date, register it, publish it if it passes its
quality gate (or only register it, `publish` false).

Triggered by hand (no schedule) with the params `model`, `as_of`, `publish`, `events` and the
hyper-parameters of `finegrain_deployment.training_params` (null: the training code's defaults):
- `ranker_xgboost` / `ranker_tf`: `build_training_set` submits `spark_jobs/training_set.py` (the ranker
  training set as of `as_of`) to Spark, then `train_ranker` runs `finegrain models train-ranker --kind
  xgboost|tf --as-of <as_of> --training-set <that set>`;
- `embeddings_als`: `train_embeddings` runs `finegrain models train-embeddings --as-of <as_of>` (ALS
  reads the purchase history itself; it needs no training set, so the Spark build is skipped).
`choose_model` picks the branch; the other branch's tasks end up skipped.

The training set travels by path, not XCom (`finegrain_deployment.training_set_path`), so a retry of
`train_ranker` reads the set its run built. A gate refusal exits 1 and fails the training task without
retry: the version stays registered (and listed by `finegrain models list`) but is not published;
training tasks are not retried, since a rerun would only register another version.

Orchestration only: no project module is imported here; commands are argument lists (no shell), and
the deployment settings and task helpers are in `finegrain_deployment.py`, shared with the nightly DAG.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import DAG, Param, get_current_context, task

# Airflow puts the DAG folder on sys.path; a DAG file loaded by path (tests, tools) needs it too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from finegrain_deployment import (
    AS_OF,
    EVENTS,
    RETRY_SPARK,
    as_of_param,
    embedding_arguments,
    max_users_argument,
    optional_text,
    ranker_arguments,
    run_finegrain,
    spark_submit,
    training_params,
    training_set_path,
)

RANKERS = {"ranker_xgboost": "xgboost", "ranker_tf": "tf"}
MODELS = (*RANKERS, "embeddings_als")
TRAINING_SET = training_set_path("retrain")


def choose_model(params: dict[str, Any]) -> str:
    """The first task of the chosen model's branch."""
    model = params["model"]
    if model in RANKERS:
        return "build_training_set"
    if model == "embeddings_als":
        return "train_embeddings"
    raise ValueError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")


def _publish_argument(params: dict[str, Any]) -> str:
    return "--publish" if params["publish"] else "--no-publish"


@task(task_id="train_ranker", retries=0)
def train_ranker(as_of: str, training_set: str, events: str) -> dict[str, Any]:
    params = dict(get_current_context()["params"])
    kind = RANKERS[params["model"]]
    return run_finegrain(["models", "train-ranker", "--kind", kind, "--as-of", as_of, "--training-set",
                          training_set, "--events", events, *ranker_arguments(kind, params),
                          _publish_argument(params), "--json"])


@task(task_id="train_embeddings", retries=0)
def train_embeddings(as_of: str, events: str) -> dict[str, Any]:
    params = dict(get_current_context()["params"])
    return run_finegrain(["models", "train-embeddings", "--as-of", as_of, "--events", events,
                          *embedding_arguments(params), _publish_argument(params), "--json"])


with DAG(
    dag_id="finegrain_retrain",
    description="Retrain one model (ranker or embeddings), register it, publish it behind its gate.",
    schedule=None,
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),  # any past date: runs are triggered by hand
    catchup=False,
    max_active_runs=1,  # two publications of one model at once would race for its znode
    default_args={"execution_timeout": pendulum.duration(minutes=90)},
    params={
        "model": Param("ranker_xgboost", type="string", enum=list(MODELS), description="Model to retrain."),
        "as_of": as_of_param(),
        "publish": Param(True, type="boolean", description="Publish the version if it passes its gate "
                         "(false: register it only; `finegrain models publish` later)."),
        "events": optional_text("Canonical events Parquet; empty: the ingested data."),
        **training_params(),
    },
    tags=["finegrain", "models"],
) as dag:
    choose = BranchPythonOperator(task_id="choose_model", python_callable=choose_model)
    build = spark_submit(
        "build_training_set",
        "spark_jobs/training_set.py",
        ["--as-of", AS_OF, "--events", EVENTS, "--out", TRAINING_SET, *max_users_argument()],
        name="finegrain-training-set",
        **RETRY_SPARK,  # idempotent: the set is written to a staging folder and renamed into place
    )
    choose >> [build, train_embeddings(as_of=AS_OF, events=EVENTS)]
    build >> train_ranker(as_of=AS_OF, training_set=TRAINING_SET, events=EVENTS)
