"""`finegrain airflow up | down | status`: the local Airflow (api-server, scheduler, dag-processor) with
the project's DAGs, its UI on 127.0.0.1 (`finegrain.stack.airflow`)."""

from __future__ import annotations

import typer

from cli.options import JsonOption
from finegrain.console import console, fail, print_json_line, step, summary_table
from finegrain.errors import StackError
from finegrain.settings import get_settings
from finegrain.stack import ServiceStatus
from finegrain.stack.airflow import LocalAirflow, read_login

app = typer.Typer(help="Start, stop and inspect the local Airflow (UI, scheduler, dag-processor) running the "
                  "project's DAGs.")


@app.command()
def up(json: JsonOption = False) -> None:
    """Migrate the metadata database, start each component (reusing one already running), wait until
    each is healthy, then print the status, the UI address and the login."""
    airflow = LocalAirflow(get_settings())
    try:
        statuses = airflow.up(step)
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(airflow, statuses, json)


@app.command()
def down() -> None:
    """Stop each component with its whole process tree (running tasks included), waiting until every
    process has exited."""
    try:
        stopped = LocalAirflow(get_settings()).down()
    except StackError as exc:
        raise fail(str(exc)) from None
    for name, was_running in stopped.items():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")


@app.command()
def status(json: JsonOption = False) -> None:
    """Print each component's PID and health, the UI address and the login; exit 1 if one is unhealthy."""
    airflow = LocalAirflow(get_settings())
    try:
        statuses = airflow.status()
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(airflow, statuses, json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _report(airflow: LocalAirflow, statuses: list[ServiceStatus], as_json: bool) -> None:
    rows = [(s.name, str(s.pid or "-"), s.version, "[green]yes[/]" if s.healthy else "[red]no[/]", s.detail)
            for s in statuses]
    console.print(summary_table(f"Airflow ({airflow.home})", rows,
                                ["component", "PID", "version", "healthy", "note"]))
    login = read_login(airflow.settings)
    console.print(f"UI: {airflow.url}", highlight=False)
    if login is None:
        console.print("login: none yet (`finegrain airflow up` generates it)", highlight=False)
    else:
        console.print(f"login: {login.user} / {login.password}  (kept in {login.path})", highlight=False)
    if as_json:
        print_json_line({
            "url": airflow.url,
            "home": str(airflow.home),
            "user": airflow.settings.airflow_user,
            "password_file": None if login is None else str(login.path),
            "components": {s.name: {"pid": s.pid, "version": s.version, "healthy": s.healthy,
                                    "note": s.detail} for s in statuses},
        })
