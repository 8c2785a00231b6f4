"""What the Finegrain DAGs share: where the project and its Python are on the Airflow workers, and the
two kinds of task they run (a `finegrain` command, a spark-submit of a file of `spark_jobs/`).

Not a DAG itself: `.airflowignore` keeps Airflow's dag processor from parsing it, and the DAG files
import it as a sibling module (Airflow puts the DAG folder on `sys.path`). Like the DAGs it imports
only Airflow and the standard library, never a project module, so parsing a DAG stays quick.

Deployment settings (environment of the Airflow workers):
- `FINEGRAIN_HOME`: the project checkout (default: the parent of this folder);
- `FINEGRAIN_PYTHON`: the project's Python (default: the Python running Airflow, i.e. the project's venv);
- `FINEGRAIN_DATA_DIR`: where the loaded data goes (default: `var/data/retail` in the checkout);
- `FINEGRAIN_VAR_DIR`: where built files such as training sets go (default: `var` in the checkout);
- `FINEGRAIN_SPARK_SUBMIT`: the spark-submit binary (default: `spark-submit` beside that Python);
- Airflow connection `finegrain_spark`: the Spark master, e.g.
  `AIRFLOW_CONN_FINEGRAIN_SPARK='{"conn_type": "spark", "host": "local[*]"}'` or a cluster URL;
- every `FINEGRAIN_*` store address, passed through to the tasks (they inherit the environment).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator

FINEGRAIN_HOME = Path(os.environ.get("FINEGRAIN_HOME", Path(__file__).resolve().parent.parent))
PYTHON = os.environ.get("FINEGRAIN_PYTHON", sys.executable)
DATA_DIR = os.environ.get("FINEGRAIN_DATA_DIR", str(FINEGRAIN_HOME / "var" / "data" / "retail"))
VAR_DIR = os.environ.get("FINEGRAIN_VAR_DIR", str(FINEGRAIN_HOME / "var"))
SPARK_SUBMIT = os.environ.get("FINEGRAIN_SPARK_SUBMIT", str(Path(PYTHON).parent / "spark-submit"))
SPARK_CONNECTION = "finegrain_spark"

# The events a run's jobs read: the `events` param, or what the nightly load wrote.
EVENTS = "{{ params.events or '" + DATA_DIR + "/events.parquet' }}"


def finegrain_command(task_id: str, arguments: str, env: dict[str, str], **kwargs: Any) -> BashOperator:
    """A task running `python -m cli <arguments>` in the checkout.

    Run-time values (params, run ids) reach the command only through `env`, templated there and read
    as "$NAME" in `arguments`: pasted into the command line, a param holding a quote would be shell
    code. The task keeps the worker's environment (`append_env`), so FINEGRAIN_* settings and
    PYTHONPATH pass through."""
    return BashOperator(task_id=task_id, bash_command=f"{shlex.quote(PYTHON)} -m cli {arguments}", env=env,
                        append_env=True, cwd=str(FINEGRAIN_HOME), **kwargs)


def spark_submit(task_id: str, application: str, arguments: list[str], **kwargs: Any) -> SparkSubmitOperator:
    """A spark-submit of `application` (a path in the checkout) on the `finegrain_spark` master, with
    the project's Python on the driver and executors. Arguments are a list (no shell in between)."""
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        spark_binary=SPARK_SUBMIT,
        application=str(FINEGRAIN_HOME / application),
        application_args=arguments,
        env_vars={"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON,
                  "PYTHONPATH": str(FINEGRAIN_HOME)},
        **kwargs,
    )
