"""What the Finegrain DAGs share: where the project and its Python are on the Airflow workers, the two
kinds of task they run (a `finegrain` command, a spark-submit of a file of `spark_jobs/`), and the
training params both DAGs take.

Not a DAG itself: `.airflowignore` keeps Airflow's dag processor from parsing it, and the DAG files
import it as a sibling module (Airflow puts the DAG folder on `sys.path`). Like the DAGs it imports
only Airflow and the standard library, never a project module, so parsing a DAG stays quick.

No shell anywhere: a `finegrain` command is an argument list handed to `subprocess` (`run_finegrain`)
and spark-submit gets `application_args` as a list, so a param is one argument whatever it holds
(`'; touch x; '` is a file name that does not exist, never a command).

Deployment settings (environment of the Airflow workers):
- `FINEGRAIN_HOME`: the project checkout (default: the parent of this folder);
- `FINEGRAIN_PYTHON`: the project's Python (default: the Python running Airflow, i.e. the project's venv);
- `FINEGRAIN_VAR_DIR`: where built files such as training sets go (default: `var` in the checkout);
- `FINEGRAIN_DATA_DIR`: the canonical events the nightly ingest writes and the jobs read (default:
  `<FINEGRAIN_VAR_DIR>/data/retail`, where the `finegrain` commands look by default);
- `FINEGRAIN_SPARK_SUBMIT`: the spark-submit binary (default: `spark-submit` beside that Python);
- `FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS`: the spark-submitted driver's JVM options (the setting of that
  name; `finegrain airflow up` passes its value, unset means the JVM's defaults);
- Airflow connection `finegrain_spark`: the Spark master, e.g.
  `AIRFLOW_CONN_FINEGRAIN_SPARK='{"conn_type": "spark", "host": "local[*]"}'` or a cluster URL;
- every `FINEGRAIN_*` setting (store addresses, `FINEGRAIN_API_BIND` for the smoke test, the archive),
  passed through to the tasks: they inherit the environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

FINEGRAIN_HOME = Path(os.environ.get("FINEGRAIN_HOME", Path(__file__).resolve().parent.parent))
PYTHON = os.environ.get("FINEGRAIN_PYTHON", sys.executable)
VAR_DIR = os.environ.get("FINEGRAIN_VAR_DIR", str(FINEGRAIN_HOME / "var"))
# The default is the settings' `retail_dir`, where every `finegrain` command looks for the events.
DATA_DIR = os.environ.get("FINEGRAIN_DATA_DIR", str(Path(VAR_DIR) / "data" / "retail"))
SPARK_SUBMIT = os.environ.get("FINEGRAIN_SPARK_SUBMIT", str(Path(PYTHON).parent / "spark-submit"))
SPARK_CONNECTION = "finegrain_spark"
SPARK_DRIVER_JAVA_OPTIONS = os.environ.get("FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS", "")

# The as-of date of a run: the `as_of` param, else the logical date.
AS_OF = "{{ params.as_of or ds }}"
# The canonical events the nightly ingest writes (a retrain may name others with its `events` param).
DATA_EVENTS = DATA_DIR + "/events.parquet"
EVENTS = "{{ params.events or '" + DATA_EVENTS + "' }}"

# `finegrain` exit statuses (cli/models.py): 1 = refused (a quality gate, a pin), 2 = an error.
REFUSED = 1

log = logging.getLogger(__name__)


def training_set_path(dag: str) -> str:
    """The training-set folder of a run: a function of the run, rendered the same in every task that
    needs it, so it travels by path, not XCom, and a retried task reads the set its run built. Run ids
    hold ':' and '+' (manual__2026-11-27T10:00:00+00:00): fine in a path, awkward in a shell."""
    return (VAR_DIR + f"/training_sets/{dag}/" + "{{ params.as_of or ds }}-"
            "{{ run_id | replace(':', '') | replace('+', '_') }}")


def run_finegrain(arguments: Sequence[str]) -> dict[str, Any]:
    """Run `python -m cli <arguments>` in the checkout and return its JSON result (the last line a
    `--json` command prints), which becomes the task's XCom.

    The arguments go to exec as a list, no shell in between. The command's output goes to the task
    log line by line as it comes (progress, then its summary table). Exit 1 (refused by a quality gate
    or a pin) fails the task without a retry: retrying would decide the same. Any other failure is an
    ordinary one, retried if the task has retries. If Airflow stops the task (timeout, marked failed),
    the command's process group is stopped too."""
    command = [PYTHON, "-m", "cli", *[str(argument) for argument in arguments]]
    what = "finegrain " + " ".join(arguments[:2])
    log.info("running %s", shlex.join(command))  # quoted for the log only: nothing parses this line
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(FINEGRAIN_HOME), os.environ.get("PYTHONPATH", "")]))}
    process = subprocess.Popen(command, cwd=FINEGRAIN_HOME, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    result: dict[str, Any] = {}
    errors: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            log.info("%s", line)
            if line.startswith("error:"):
                errors.append(line.removeprefix("error:").strip())
            elif line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line of output that only looks like JSON
                    result = json.loads(line)
        status = process.wait()
    finally:
        if process.poll() is None:  # the task was stopped while the command ran
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    if status == REFUSED:
        raise AirflowFailException(f"`{what}` refused: {refusal(result) or 'see the log above'}")
    if status != 0:
        raise AirflowException(f"`{what}` failed (exit status {status}): "
                               f"{errors[-1] if errors else 'see the log above'}")
    return result


def refusal(result: Mapping[str, Any]) -> str:
    """The reasons a `--json` result gives for a refusal (`models gate`'s checks, a training run's
    publication)."""
    checks = result.get("checks") or [result.get("publish") or {}]
    return "; ".join(f"{c.get('name')} {c.get('version')}: {c.get('reason')}" for c in checks
                     if c and (c.get("verdict") == "refused" or c.get("refused")))


def spark_submit(task_id: str, application: str, arguments: list[str], **kwargs: Any) -> SparkSubmitOperator:
    """A spark-submit of `application` (a path in the checkout) on the `finegrain_spark` master, with
    the project's Python on the driver and executors. Arguments are a list (no shell in between)."""
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        spark_binary=SPARK_SUBMIT,
        application=str(FINEGRAIN_HOME / application),
        application_args=arguments,
        # A driver's JVM options take effect only as spark-submit starts it (client mode, as here).
        conf={"spark.driver.extraJavaOptions": SPARK_DRIVER_JAVA_OPTIONS} if SPARK_DRIVER_JAVA_OPTIONS
        else None,
        env_vars={"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON,
                  "PYTHONPATH": str(FINEGRAIN_HOME)},
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Params both DAGs take. A param that may stay empty is nullable: the trigger form sends an empty
# field as null, and a plain string type would make it required there. null (the default) means the
# logical date, the configured path or the training code's own setting; quick values make a test run
# short.

OBJECTIVES = [None, "binary:logistic", "rank:ndcg", "rank:pairwise", "published"]
AS_OF_PATTERN = r"^(\d{4}-\d{2}-\d{2})?$"


def as_of_param() -> Param:
    return Param(None, type=["null", "string"], pattern=AS_OF_PATTERN,
                 description="As-of date YYYY-MM-DD: the run reads the data before it; empty: the run's "
                 "logical date.")


def optional_text(description: str) -> Param:
    return Param(None, type=["null", "string"], description=description)


def _count(description: str) -> Param:
    return Param(None, type=["null", "integer"], minimum=1, description=description + " null: the default.")


def training_params() -> dict[str, Param]:
    return {
        "max_users": _count("Rankers: users drawn per training cut-off (a quick run);"),
        "xgboost_rounds": _count("XGBoost ranker: boosting rounds;"),
        "xgboost_objective": Param(None, type=["null", "string"], enum=OBJECTIVES, description="XGBoost "
                                   "ranker: the objective, or `published` (the serving version's); empty: "
                                   "the nightly run keeps the published version's, the retrain chooses one "
                                   "on the validation cut-off."),
        "tf_epochs": _count("TensorFlow ranker: at most this many epochs;"),
        "als_factors": _count("Embeddings: ALS factors;"),
        "als_iterations": _count("Embeddings: ALS iterations;"),
    }


def ranker_arguments(kind: str, params: Mapping[str, Any], default_objective: str | None = None
                     ) -> list[str]:
    """`finegrain models train-ranker` options for the hyper-parameter params that are set;
    `default_objective` when the objective param is not."""
    if kind == "xgboost":
        objective = params.get("xgboost_objective") or default_objective
        return (["--rounds", str(params["xgboost_rounds"])] if params.get("xgboost_rounds") else []) + (
            ["--objective", objective] if objective else [])
    return ["--epochs", str(params["tf_epochs"])] if params.get("tf_epochs") else []


def embedding_arguments(params: Mapping[str, Any]) -> list[str]:
    """`finegrain models train-embeddings` options for the hyper-parameter params that are set."""
    return (["--factors", str(params["als_factors"])] if params.get("als_factors") else []) + (
        ["--iterations", str(params["als_iterations"])] if params.get("als_iterations") else [])


def max_users_argument() -> list[str]:
    """The training-set job's `--max-users` (0: every user), templated for spark-submit's list."""
    return ["--max-users", "{{ params.max_users or 0 }}"]


RETRY_SPARK = {"retries": 1, "retry_delay": pendulum.duration(minutes=2)}
