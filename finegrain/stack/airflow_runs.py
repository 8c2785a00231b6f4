"""DAG runs of the local Airflow through its REST API (`/api/v2`), as the UI makes them: sign in with
the UI login (`finegrain.stack.airflow.ensure_login`), unpause the DAG, trigger a run with a logical
date and a conf, and follow it task by task until it ends. `finegrain airflow run` and the demo use it;
an operator watching the UI sees the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx

from finegrain.console import Step, quiet
from finegrain.errors import StackError
from finegrain.settings import Settings
from finegrain.stack.airflow import read_login, ui_url

# What a run or a task instance can end in (Airflow 3's states).
FINISHED_RUN = {"success", "failed"}
FINISHED_TASK = {"success", "failed", "skipped", "upstream_failed", "removed"}
POLL_S = 2.0


@dataclass
class TaskState:
    task_id: str
    state: str
    try_number: int = 0
    seconds: float | None = None


@dataclass
class DagRun:
    dag_id: str
    run_id: str
    logical_date: str | None
    state: str
    tasks: list[TaskState] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"/dags/{self.dag_id}/runs/{self.run_id}"

    def as_dict(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "logical_date": self.logical_date,
                "state": self.state, "seconds": round(self.seconds, 1),
                "tasks": {t.task_id: {"state": t.state, "try": t.try_number, "seconds": t.seconds}
                          for t in self.tasks}}


class AirflowRuns:
    """A signed-in client of the local Airflow's REST API."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        login = read_login(settings)
        if login is None:
            raise StackError("airflow: no UI login yet: run `finegrain airflow up` first")
        self.base = ui_url(settings)
        try:
            token = httpx.post(f"{self.base}/auth/token", json={"username": login.user,
                                                                "password": login.password},
                               timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise StackError(f"airflow: the api-server at {self.base} does not answer ({exc}): "
                             "`finegrain airflow status`") from None
        if token.status_code != 201:
            raise StackError(f"airflow: signing in as {login.user} was refused ({token.status_code})")
        self.client = httpx.Client(base_url=f"{self.base}/api/v2", timeout=timeout_s,
                                   headers={"Authorization": f"Bearer {token.json()['access_token']}"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> AirflowRuns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            detail = response.json().get("detail") if "json" in response.headers.get("content-type", "") \
                else response.text[:300]
            raise StackError(f"airflow: {method} {path} answered {response.status_code}: {detail}")
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120.0) -> None:
        """Until the dag-processor has parsed the DAG (a fresh home parses its folder in seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.client.get(f"/dags/{dag_id}")
            if response.status_code == 200:
                return
            known = [d["dag_id"] for d in self.client.get("/dags").json().get("dags", [])]
            if known:  # the folder is parsed (its DAGs come together): the name is wrong
                raise StackError(f"airflow: no DAG {dag_id!r}; the DAGs are {', '.join(sorted(known))}")
            if time.monotonic() > deadline:
                errors = self.client.get("/importErrors").json().get("import_errors", [])
                raise StackError(f"airflow: no DAG {dag_id} after {timeout_s:.0f} s"
                                 + (f" (import errors: {errors})" if errors else ""))
            time.sleep(POLL_S)

    def trigger(self, dag_id: str, logical_date: date | None, conf: dict[str, Any]) -> DagRun:
        """Unpause the DAG (new DAGs start paused) and trigger a run; `logical_date` None: now."""
        self.wait_for_dag(dag_id)
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        body = {"logical_date": None if logical_date is None else f"{logical_date.isoformat()}T00:00:00Z",
                "conf": conf}
        run = self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return DagRun(dag_id, run["dag_run_id"], run.get("logical_date"), run["state"])

    def refresh(self, run: DagRun) -> DagRun:
        state = self._call("GET", f"/dags/{run.dag_id}/dagRuns/{run.run_id}")
        tasks = self._call("GET", f"/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances")
        run.state = state["state"]
        run.tasks = [TaskState(t["task_id"], t.get("state") or "none", int(t.get("try_number") or 0),
                               t.get("duration")) for t in tasks.get("task_instances", [])]
        return run

    def follow(self, run: DagRun, step: Step = quiet, timeout_s: float = 3600.0) -> DagRun:
        """Poll until the run ends, reporting each task as it finishes."""
        started = time.monotonic()
        told: dict[str, str] = {}
        while True:
            self.refresh(run)
            for task in run.tasks:
                if task.state in FINISHED_TASK and told.get(task.task_id) != task.state:
                    took = "" if task.seconds is None else f" in {task.seconds:.0f} s"
                    step(f"{task.task_id}: {task.state}{took}")
                    told[task.task_id] = task.state
            run.seconds = time.monotonic() - started
            if run.state in FINISHED_RUN:
                return run
            if run.seconds > timeout_s:
                raise StackError(f"airflow: {run.dag_id} run {run.run_id} still {run.state} after "
                                 f"{timeout_s:.0f} s; it goes on in Airflow")
            time.sleep(POLL_S)
