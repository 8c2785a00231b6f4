"""Run one DAG of dags/ with `dag.test()` in this process; used by test_dags.py in a subprocess, so that
Airflow's configuration (AIRFLOW_HOME, DAGS_FOLDER, connections) is set before Airflow is imported.

Usage: python tests/integration/dag_runner.py DAG_FILE DAG_ID LOGICAL_DATE RUN_CONF_JSON
Prints `DAG_RUN_STATE <state>` and the state of each task as `TASK <task_id> <state>`.
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
    run = dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=json.loads(run_conf))
    for ti in run.get_task_instances():
        print(f"TASK {ti.task_id} {ti.state}")
    print(f"DAG_RUN_STATE {run.state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
