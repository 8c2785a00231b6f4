"""The nightly pipeline, one task per step so an operator sees what failed and retries only that:

    ingest -> features -> content_index, item_similarity, popularity -> training_set
           -> train_ranker_xgboost, train_ranker_tf, train_embeddings -> gate -> publish -> smoke_test

The logical date is the as-of date (the `as_of` param overrides it): every step reads the data before
its midnight UTC.
- `ingest`: `finegrain data ingest --as-of D` merges what arrived since the last run (the raw file
  drop, the streaming sidecar's event archive) into the canonical events (FINEGRAIN_DATA_DIR);
- the four offline jobs: a spark-submit each on the `finegrain_spark` connection (features first, then
  the three others, which are independent of each other); each writes a new version of its dataset
  and switches to it;
- `training_set`: the rankers' point-in-time training set as of D (`spark_jobs/training_set.py`);
- the three training tasks train as of D, evaluate, and register without publishing (`--no-publish`);
  each returns the version it registered. XGBoost keeps the published version's objective (chosen on
  the validation cut-off on the first night, or by a retrain);
- `gate`: `finegrain models gate` decides for the three versions together against what serves now.
  A refusal fails the task with each reason in its log, and nothing of the night is published (the
  previous versions keep serving); a pinned model's version is held, not published, and not a failure;
- `publish`: `finegrain models publish` of exactly the versions that passed;
- `smoke_test`: `finegrain api smoke`: the running API (FINEGRAIN_API_BIND) serves what was published
  and answers a known user with it.

Orchestration only: no project module is imported; every task runs a `finegrain` command (an
argument list, no shell) or a spark-submit. `docs/operations.md` says what each failure means and how
to rerun a day. Deployment settings and the task helpers: `finegrain_deployment.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

# Airflow puts the DAG folder on sys.path; a DAG file loaded by path (tests, tools) needs it too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from finegrain_deployment import (
    AS_OF,
    DATA_DIR,
    DATA_EVENTS,
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

# The jobs of spark_jobs.JOBS (a test checks they are the same): features first, the others after it.
OFFLINE_JOBS = ("features", "content_index", "item_similarity", "popularity")
TRAINING_SET = training_set_path("nightly")
# The nightly retrain keeps the serving XGBoost version's objective instead of choosing it again each
# night (that choice is three fits, most of the task's time); the retrain DAG chooses.
NIGHTLY_OBJECTIVE = "published"


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


@task(task_id="ingest", retries=0, execution_timeout=pendulum.duration(minutes=20))
def ingest(as_of: str) -> dict[str, Any]:
    """Not retried: it reads and writes files only, so a failure is about the input, which a retry
    would read again."""
    params = _params()
    arguments = ["data", "ingest", "--as-of", as_of, "--out", DATA_DIR, "--json"]
    if not params["file_drop"]:
        arguments.append("--no-source")
    elif params["source_csv"]:
        arguments += ["--source", params["source_csv"]]
    if params["archive"]:
        arguments += ["--archive", params["archive"]]
    return run_finegrain(arguments)


# Training is not retried: a rerun would register one more version; clear the task to train again.
@task(task_id="train_ranker_xgboost", retries=0, execution_timeout=pendulum.duration(minutes=90))
def train_ranker_xgboost(as_of: str, training_set: str) -> dict[str, Any]:
    return _train_ranker("xgboost", as_of, training_set)


@task(task_id="train_ranker_tf", retries=0, execution_timeout=pendulum.duration(minutes=90))
def train_ranker_tf(as_of: str, training_set: str) -> dict[str, Any]:
    return _train_ranker("tf", as_of, training_set)


def _train_ranker(kind: str, as_of: str, training_set: str) -> dict[str, Any]:
    hyper_parameters = ranker_arguments(kind, _params(), NIGHTLY_OBJECTIVE)
    return run_finegrain(["models", "train-ranker", "--kind", kind, "--as-of", as_of, "--training-set",
                          training_set, "--events", DATA_EVENTS, *hyper_parameters, "--no-publish", "--json"])


@task(task_id="train_embeddings", retries=0, execution_timeout=pendulum.duration(minutes=60))
def train_embeddings(as_of: str) -> dict[str, Any]:
    return run_finegrain(["models", "train-embeddings", "--as-of", as_of, "--events", DATA_EVENTS,
                          *embedding_arguments(_params()), "--no-publish", "--json"])


@task(task_id="gate", retries=0, execution_timeout=pendulum.duration(minutes=10))
def gate(xgboost: dict[str, Any], tf: dict[str, Any], embeddings: dict[str, Any]) -> dict[str, str]:
    """The versions that passed (model -> version); a refusal fails here, before anything is published."""
    candidates = [f"{run['name']}={run['version']}" for run in (xgboost, tf, embeddings)]
    decided = run_finegrain(["models", "gate", *candidates, "--tolerance", str(_params()["tolerance"]),
                             "--json"])
    passed: dict[str, str] = decided["passed"]
    return passed


@task(task_id="publish", retries=1, retry_delay=pendulum.duration(minutes=1),
      execution_timeout=pendulum.duration(minutes=10))
def publish(passed: dict[str, str]) -> dict[str, str]:
    """Publishes exactly what the gate passed, in one command; a retry is safe (a published version
    stays as it is)."""
    if passed:
        models = [f"{name}={version}" for name, version in sorted(passed.items())]
        run_finegrain(["models", "publish", *models, "--tolerance", str(_params()["tolerance"]), "--json"])
    return passed


@task(task_id="smoke_test", retries=1, retry_delay=pendulum.duration(minutes=2),
      execution_timeout=pendulum.duration(minutes=15))
def smoke_test(published: dict[str, str]) -> dict[str, Any]:
    if not _params()["smoke_test"]:
        raise AirflowSkipException("smoke_test param is false: the API is not checked")
    expected = [f"{name}={version}" for name, version in sorted(published.items())]
    return run_finegrain(["api", "smoke", *[token for pair in expected for token in ("--expect", pair)],
                          "--events", DATA_EVENTS, "--json"])


with DAG(
    dag_id="finegrain_nightly",
    description="Ingest, rebuild the offline datasets, train every model, gate, publish, smoke-test the API.",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),  # any past date; backfills name their own dates
    catchup=False,
    max_active_runs=1,  # two builds of one dataset at once would race for its pointer
    default_args={"retries": 0, "execution_timeout": pendulum.duration(minutes=45)},
    params={
        "as_of": as_of_param(),
        "file_drop": Param(True, type="boolean", description="Read the raw file drop (source_csv)."),
        "source_csv": optional_text("Raw CSV (gzip) of the file drop; empty: FINEGRAIN_SOURCE_CSV of the "
                                    "workers."),
        "archive": optional_text("The streaming sidecar's event archive; empty: FINEGRAIN_EVENT_ARCHIVE of "
                                 "the workers."),
        **training_params(),
        "tolerance": Param(0.01, type="number", minimum=0, description="How much worse than the published "
                           "version (absolute, on its gate metric) a model may be and still be published."),
        "smoke_test": Param(True, type="boolean", description="Check the running API serves what was "
                            "published (false: no API runs beside this pipeline)."),
    },
    tags=["finegrain", "offline", "models"],
) as dag:
    jobs = {job: spark_submit(job, "spark_jobs/submit.py", [job, "--as-of", AS_OF, "--events", DATA_EVENTS],
                              name=f"finegrain-{job}", **RETRY_SPARK)
            for job in OFFLINE_JOBS}
    training_set = spark_submit(
        "training_set", "spark_jobs/training_set.py",
        ["--as-of", AS_OF, "--events", DATA_EVENTS, "--out", TRAINING_SET, *max_users_argument()],
        name="finegrain-training-set", **RETRY_SPARK)  # idempotent: staged, then renamed into place
    runs = [train_ranker_xgboost(as_of=AS_OF, training_set=TRAINING_SET),
            train_ranker_tf(as_of=AS_OF, training_set=TRAINING_SET), train_embeddings(as_of=AS_OF)]
    ingest(as_of=AS_OF) >> jobs["features"] >> [jobs[job] for job in OFFLINE_JOBS[1:]] >> training_set >> runs
    smoke_test(publish(gate(*runs)))
