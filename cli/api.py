"""`finegrain api start | stop | status | smoke | recommend`: the recommendation API under gunicorn."""

from __future__ import annotations

import json as jsonlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import EventsOption, JsonOption, name_versions
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.errors import FinegrainError
from finegrain.settings import Settings, get_settings

app = typer.Typer(help="Start, stop and inspect the recommendation API (gunicorn + Falcon).")


def _pid_file(settings: Settings) -> Path:
    return settings.var_dir / "serving" / "api.pid"


def _running_pid(settings: Settings) -> int | None:
    try:
        pid = int(_pid_file(settings).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@app.command()
def start(
    workers: Annotated[int | None, typer.Option(help="Worker processes (FINEGRAIN_API_WORKERS).")] = None,
    bind: Annotated[str | None, typer.Option(help="host:port (default FINEGRAIN_API_BIND).")] = None,
    ready: Annotated[bool, typer.Option(
        "--ready/--no-ready", help="Wait until every worker is ready (/readyz: datasets and models loaded); "
        "--no-ready returns once they answer /healthz, for an API started before anything is published "
        "(it swaps in the first published versions by itself).")] = True,
) -> None:
    """Start gunicorn in the background and return once every worker has loaded the datasets and models."""
    from serving.process import ApiServer

    updates: dict[str, Any] = {}
    if workers is not None:
        updates["api_workers"] = workers
    if bind is not None:
        updates["api_bind"] = bind
    settings = get_settings().model_copy(update=updates)
    running = _running_pid(settings)
    if running is not None:
        raise fail(f"the API is already running (gunicorn PID {running}); `finegrain api stop` first")
    server = ApiServer(settings)
    try:
        with console.status(f"starting {settings.api_workers} workers on {settings.api_bind} ..."):
            server.start(ready=ready)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    assert server.process is not None
    _pid_file(settings).write_text(str(server.process.pid))
    console.print(f"[green]✓[/] API {'ready' if ready else 'up (not waiting for readiness)'} on {server.url} "
                  f"(gunicorn PID {server.process.pid}, log {server.log_path})")


@app.command()
def stop() -> None:
    """Stop gunicorn (workers finish their requests first)."""
    settings = get_settings()
    pid = _running_pid(settings)
    if pid is None:
        console.print("the API was not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running_pid(settings) is not None:
        time.sleep(0.2)
    _pid_file(settings).unlink(missing_ok=True)
    console.print(f"API stopped (gunicorn PID {pid})")


@app.command()
def status(json: JsonOption = False) -> None:
    """Each worker's loaded dataset and model versions (from ZooKeeper); exit 1 if none is running."""
    from finegrain.storage.clients import zookeeper_client
    from finegrain.storage.workers import worker_states

    settings = get_settings()
    zk = zookeeper_client(settings)
    try:
        states = worker_states(settings, zk)
    finally:
        zk.stop()
        zk.close()
    rows = [(s.get("worker", "?"), jsonlib.dumps(s.get("datasets", {})), jsonlib.dumps(s.get("models", {})),
             "; ".join(f"{k}: {v}" for k, v in s.get("errors", {}).items()) or "-") for s in states]
    console.print(summary_table("API workers", rows, ["worker", "datasets", "models", "errors"]))
    if json:
        print_json_line({"workers": states})
    if not states:
        raise typer.Exit(1)


@app.command()
def smoke(
    expect: Annotated[list[str] | None, typer.Option(
        "--expect", help="NAME=VERSION just published: ZooKeeper must hold it and the API serve it "
        "(repeat for several).", show_default=False)] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="User to ask recommendations for. Default: the one with the most purchase lines in "
        "the events.", show_default=False)] = None,
    events: EventsOption = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1.0, help="Seconds to wait for every worker to swap in what is published.")] = 120.0,
    json: JsonOption = False,
) -> None:
    """Check the running API serves what is published: every worker on the published model and dataset
    versions, and a ranked, non-degraded answer with them for a known user in each ranker's scene."""
    from serving.smoke import smoke_test

    settings = get_settings()
    expected = name_versions(expect or [], "--expect")
    try:
        who = user or _busiest_user(events or settings.events_path)
        report = smoke_test(settings, who, expect=expected, timeout_s=timeout,
                            say=lambda line: console.print(f"[dim]{line}[/]", highlight=False))
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # a store that is down: one line, not a traceback
        raise fail(f"{type(exc).__name__}: {exc} (is the local stack up? `finegrain stack status`)") from None
    rows: list[tuple[str, Any]] = [(f"model {name}", version)
                                   for name, version in sorted(report.models.items())]
    rows += [(f"dataset {name}", version) for name, version in sorted(report.datasets.items())]
    rows += [(f"scene {a['scene']}", f"ranked by {a['ranker']}: {a['items']} items of {a['candidates']} "
              f"candidates, top {', '.join(a['top'])}") for a in report.answers]
    rows += [("workers", report.workers), ("user", report.user), ("waited s", round(report.waited_s, 1))]
    console.print(summary_table(f"Smoke test of {report.url}: passed", rows, ["check", "served"]))
    if json:
        print_json_line(report.as_dict())


def _busiest_user(events: Path) -> str:
    """The user with the most purchase lines: surely in the features dataset of any recent as-of date."""
    from finegrain.data.retail import read_events_table

    users = read_events_table(events).column("user_id").to_pandas()
    if users.empty:
        raise FinegrainError(f"no events in {events}: pass --user")
    return str(users.value_counts().index[0])


def _descriptions(settings: Settings) -> dict[str, str]:
    """Item descriptions from the loaded catalogue, to make the demo's output readable (the API itself
    answers with ids: clients hold their own catalogue)."""
    path = settings.catalog_path
    if not path.exists():
        return {}
    import pandas as pd

    catalog = pd.read_parquet(path, columns=["item_id", "description"])
    descriptions = catalog["description"].fillna("").astype(str)
    return dict(zip(catalog["item_id"].astype(str), descriptions, strict=True))


@app.command()
def recommend(
    user_ids: Annotated[list[str], typer.Argument(help="User ids (unknown ids get the cold start).")],
    n: Annotated[int, typer.Option(help="Items per user.")] = 5,
    scene: Annotated[str | None, typer.Option(help="Scene (default: the configured default).")] = None,
    explain: Annotated[bool, typer.Option(help="Show each item's top feature contributions.")] = True,
) -> None:
    """Ask the running API for recommendations and print them with their channels and explanations."""
    import httpx

    from finegrain.apikeys import bearer_headers

    settings = get_settings()
    names = _descriptions(settings)
    headers = bearer_headers(settings)
    for user_id in user_ids:
        params: dict[str, Any] = {"user_id": user_id, "n": n, "explain": str(explain).lower()}
        if scene:
            params["scene"] = scene
        try:
            response = httpx.get(f"http://{settings.api_bind}/v1/recommendations", params=params,
                                 headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            raise fail(f"the API on {settings.api_bind} does not answer ({exc}); start it with "
                       "`finegrain api start`") from None
        body = response.json()
        if response.status_code != 200:
            hint = " (set FINEGRAIN_API_KEY to a key of scope recommend: `finegrain keys create`)" \
                if response.status_code in (401, 403) else ""
            raise fail(f"HTTP {response.status_code}: {body.get('error', {}).get('message', body)}{hint}")
        rows = []
        for item in body["items"]:
            top = item.get("explanation", [])[:3]
            why = ", ".join(f"{e['feature']} {e['contribution']:+.2f}" for e in top)
            rows.append((item["item_id"], names.get(item["item_id"], "")[:34], f"{item['score']:.3f}",
                         "+".join(item["channels"]), why or "-"))
        state = "cold start (popular)" if body["cold_start"] else f"ranked by {body['ranker']}"
        if body["degraded"]:
            state += f", DEGRADED: {'; '.join(body.get('degraded_reasons', []))}"
        total = body.get("explain", {}).get("total_ms")
        timing = f", {total:.1f} ms in the server" if total is not None else ""
        title = f"user {user_id}: {state}, {body['candidates']} candidates{timing}"
        columns = ["item", "description", "score", "channels", "why (top features)"]
        console.print(summary_table(title, rows, columns))
