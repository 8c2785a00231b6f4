"""Run one DAG of dags/ with `dag.test()` in this process; used by test_dags.py in a subprocess, so that
Airflow's configuration (AIRFLOW_HOME, DAGS_FOLDER, connections) is set before Airflow is imported.

Usage: python tests/integration/dag_runner.py DAG_FILE DAG_ID LOGICAL_DATE RUN_CONF_JSON
Prints `DAG_RUN_STATE <state>` and the state of each task as `TASK <task_id> <state> <seconds>`
(then its start and end in epoch seconds, if it ran), or `PARAMS_REFUSED <reason>` (exit status 3)
when the run's conf fails the DAG's Param schemas, in which case no run is created and no task runs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime


def main(dag_file: str, dag_id: str, logical_date: str, run_conf: str) -> int:
    spec = importlib.util.spec_from_file_location(f"dag_under_test_{dag_id}", dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert dag.dag_id == dag_id
    from airflow.sdk.exceptions import ParamValidationError

    try:
        run = dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=json.loads(run_conf))
    except ParamValidationError as exc:
        print("PARAMS_REFUSED " + " ".join(str(exc).split()))
        return 3
    for ti in run.get_task_instances():
        if ti.start_date and ti.end_date:  # ran: its seconds, then its start and end (epoch seconds)
            window = f"{(ti.end_date - ti.start_date).total_seconds():.1f} {ti.start_date.timestamp():.3f} " \
                     f"{ti.end_date.timestamp():.3f}"
        else:
            window = "0.0"
        print(f"TASK {ti.task_id} {ti.state} {window}")
    print(f"DAG_RUN_STATE {run.state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
