"""Wall time of the whole nightly DAG on the real data, ingest to smoke test, and of each of its tasks.

One run of `dags/finegrain_nightly.py` against the local stack in a namespace of its own (Redis
database 2, Mongo database `finegrain_bench_nightly`, ZooKeeper root `/finegrain_bench_nightly`,
emptied first so the gate publishes a first version), with an API of one worker started beside it for
the smoke test (asked with a `recommend` key created for it), and canonical events ingested from
scratch out of the raw file (FINEGRAIN_SOURCE_CSV). Two ways to run it:
- `--mode airflow` (default): through the local Airflow (`finegrain.stack.airflow`, in a home of its
  own, api-server on 127.0.0.1:18383): triggered through its REST API as `finegrain airflow run` does
  (`finegrain.stack.airflow_runs`), its scheduler's LocalExecutor
  running the tasks, side by side where the graph allows, as in production; the scheduler's own cron
  runs are off (`use_job_schedule`), so unpausing the DAG starts nothing else;
- `--mode dag-test`: `dag.test()` in a process of its own, the tasks one after another.
The as-of date is the day after the data's last purchase (what a shop's nightly run is), unless
`--as-of` names one. The figure is the run's wall time from the first task's start to the last task's
end; starting Airflow before it is reported apart. Target: under 5 minutes on a 2-core machine.

Usage: .venv/bin/python bench/nightly.py [--mode airflow|dag-test] [--parallelism N] [--as-of D]
                                         [--quick] [--conf JSON] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from _machine_speed import probe_seconds  # bench/_machine_speed.py, beside this script
from pydantic import SecretStr

from cli.options import json_params
from finegrain.apikeys import KeyStore, Scope
from finegrain.console import console, print_json_line, summary_table
from finegrain.data.retail import clean_online_retail, dataset_counts
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.stack.airflow import LocalAirflow
from finegrain.stack.airflow_runs import AirflowRuns
from finegrain.storage.namespace import drop_namespace
from serving.process import ApiServer

RUNNER = PROJECT_ROOT / "tests" / "integration" / "dag_runner.py"
NIGHTLY = PROJECT_ROOT / "dags" / "finegrain_nightly.py"
API_BIND = "127.0.0.1:18382"
AIRFLOW_PORT = 18383
MODES = ("airflow", "dag-test")
TARGET_S = 300.0
# The tests' quick hyper-parameters (tests/integration/test_dags.py): a check of the wiring, not a figure.
QUICK = {"max_users": 150, "xgboost_rounds": 20, "xgboost_objective": "binary:logistic", "tf_epochs": 1,
         "als_factors": 16, "als_iterations": 4}


def bench_settings(folder: Path) -> Settings:
    base = get_settings()
    host, port = base.redis_address()
    return base.model_copy(update={
        "mongo_database": "finegrain_bench_nightly", "zookeeper_root": "/finegrain_bench_nightly",
        "redis_url": f"redis://{host}:{port}/2", "var_dir": folder / "var",
        "event_archive": str(folder / "archive"), "api_bind": API_BIND, "api_workers": 1,
        "airflow_port": AIRFLOW_PORT, "airflow_home": folder / "airflow"})


def airflow_env(settings: Settings, folder: Path) -> dict[str, str]:
    env = {**settings.environment(), "AIRFLOW_HOME": str(folder / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(NIGHTLY.parent), "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
           "AIRFLOW_CONN_FINEGRAIN_SPARK": json.dumps({"conn_type": "spark", "host": settings.spark_master}),
           "FINEGRAIN_DATA_DIR": str(settings.var_dir / "data" / "retail")}
    migrate = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env,
                             capture_output=True, text=True, timeout=600)
    if migrate.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{migrate.stderr[-2000:]}")
    return env


def run_through_airflow(settings: Settings, as_of: str, conf: dict[str, Any], parallelism: int | None
                        ) -> dict[str, Any]:
    """Start the local Airflow, trigger the run through its REST API as `finegrain airflow run` does
    (`finegrain.stack.airflow_runs`), follow it to its end, then stop Airflow."""
    os.environ["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"  # passed through to the scheduler
    if parallelism is not None:  # else the local Airflow's own (finegrain.stack.airflow)
        os.environ["AIRFLOW__CORE__PARALLELISM"] = str(parallelism)
    airflow = LocalAirflow(settings)
    started = time.perf_counter()
    try:
        airflow.up()
        with AirflowRuns(settings) as runs:
            runs.wait_for_dag("finegrain_nightly")
            startup = time.perf_counter() - started
            run = runs.follow(runs.trigger("finegrain_nightly", date.fromisoformat(as_of), conf))
            # Each task's start and end, for the run's wall time (the follow loop polls every 2 s).
            instances = runs.client.get(f"/dags/finegrain_nightly/dagRuns/{run.run_id}/taskInstances"
                                        ).json()["task_instances"]
    finally:
        airflow.down()
    tasks = {}
    for ti in instances:
        ran = ti["start_date"] and ti["end_date"]
        window = [_epoch(ti["start_date"]), _epoch(ti["end_date"])] if ran else []
        tasks[ti["task_id"]] = {"state": ti["state"], "seconds": window[1] - window[0] if window else 0.0,
                                "window": window}
    windows = [task["window"] for task in tasks.values() if task["window"]]
    run_s = max(end for _, end in windows) - min(start for start, _ in windows) if windows else 0.0
    return {"state": run.state, "tasks": tasks, "run_s": run_s, "startup_s": startup,
            "log": str(settings.airflow_dir / "logs")}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_nightly(env: dict[str, str], as_of: str, conf: dict[str, Any], log: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run([sys.executable, str(RUNNER), str(NIGHTLY), "finegrain_nightly",
                                 f"{as_of}T02:00:00+00:00", json.dumps(conf)], env=env,
                                stdout=subprocess.PIPE, stderr=out, text=True, timeout=3600, cwd=PROJECT_ROOT)
    wall = time.perf_counter() - started
    tasks = {}
    for line in result.stdout.splitlines():
        if line.startswith("TASK "):
            _, task, state, seconds, *window = line.split()
            tasks[task] = {"state": state, "seconds": float(seconds),
                           "window": [float(value) for value in window]}
    state = next((line.split()[1] for line in result.stdout.splitlines() if line.startswith("DAG_RUN_STATE")),
                 "not run")
    windows = [task["window"] for task in tasks.values() if task["window"]]
    run_s = max(end for _, end in windows) - min(start for start, _ in windows) if windows else 0.0
    return {"state": state, "tasks": tasks, "run_s": run_s, "process_s": wall,
            "startup_s": wall - run_s, "log": str(log)}


def main(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="As-of date of the run (YYYY-MM-DD). Default: the day after the data's last "
        "purchase.", show_default=False)] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="airflow: through the local Airflow's scheduler (LocalExecutor, tasks side by side "
        "where the graph allows); dag-test: dag.test(), one task after another.")] = "airflow",
    quick: Annotated[bool, typer.Option(
        "--quick", help="The tests' quick hyper-parameters (a check of the wiring, not the figure).")
    ] = False,
    parallelism: Annotated[int | None, typer.Option(
        "--parallelism", min=1, help="--mode airflow: how many tasks the scheduler runs at once (1: one "
        "after another). Default: the local Airflow's.", show_default=False)] = None,
    conf: Annotated[str, typer.Option(
        "--conf", help="More params of the run, as a JSON object (e.g. '{\"xgboost_objective\": "
        "\"binary:logistic\"}').")] = "{}",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON line at the end.")
                       ] = False,
) -> None:
    """Time the nightly DAG, ingest to smoke test, on the real data."""
    if mode not in MODES:
        raise typer.BadParameter(f"choose {' or '.join(MODES)}, not {mode!r}", param_hint="--mode")
    extra = json_params(conf)
    if as_of is None:
        with console.status("reading the raw data for its last purchase ..."):
            last = dataset_counts(clean_online_retail(get_settings().source_csv).events)["last_timestamp"]
        as_of = (last.date() + timedelta(days=1)).isoformat()
    folder = Path(tempfile.mkdtemp(prefix="finegrain-bench-nightly-"))
    settings = bench_settings(folder)
    drop_namespace(settings)
    with KeyStore(settings) as keys:  # the smoke test asks the API as a client does, with a key
        _, token, _ = keys.create("bench-nightly-smoke", [str(Scope.RECOMMEND)])
    settings = settings.model_copy(update={"api_key": SecretStr(token)})
    api = ApiServer(settings)
    with console.status(f"starting the API on {API_BIND} ..."):
        api.start(ready=False)  # nothing is published yet: the run publishes, the API swaps it in
    params = {**(QUICK if quick else {}), **extra}
    speed = {"before": probe_seconds()}
    try:
        if mode == "airflow":
            with console.status(f"running the nightly DAG as of {as_of} through Airflow ..."):
                figures = run_through_airflow(settings, as_of, params, parallelism)
        else:
            with console.status("setting up Airflow (db migrate) ..."):
                env = airflow_env(settings, folder)
            with console.status(f"running the nightly DAG as of {as_of} (log: {folder / 'dag.log'}) ..."):
                figures = run_nightly(env, as_of, params, folder / "dag.log")
    finally:
        api.stop()
    speed["after"] = probe_seconds()
    rows = [(task, figures["tasks"][task]["state"], figures["tasks"][task]["seconds"])
            for task in sorted(figures["tasks"], key=lambda t: figures["tasks"][t]["window"] or [0.0])]
    rows.append(("whole run, first task start to last task end", figures["state"], figures["run_s"]))
    rows.append(("starting Airflow, parsing the DAG (not in the run)", "", figures["startup_s"]))
    rows.append(("machine speed probe before / after (bench/_machine_speed.py)", "",
                 f"{speed['before']:.2f} / {speed['after']:.2f}"))
    target = "met" if figures["run_s"] < TARGET_S and figures["state"] == "success" else "missed"
    how = (f"through Airflow, LocalExecutor, parallelism {parallelism or 'default'}" if mode == "airflow"
           else "dag.test, one task after another") + (", quick" if quick else "") + (
        f", {json.dumps(extra)}" if extra else "")
    console.print(summary_table(f"Nightly DAG as of {as_of} ({how}): target < "
                                f"{TARGET_S:.0f} s {target}", rows, ["task", "state", "seconds"]))
    if as_json:
        print_json_line({"as_of": as_of, "mode": mode, "quick": quick, "params": params,
                         "parallelism": parallelism, "target_s": TARGET_S,
                         "cpus": os.cpu_count(), "speed_probe_s": speed,
                         **figures})
    if figures["state"] != "success":
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
