"""`finegrain stack up | down | status`: the local stack of real servers."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import JsonOption
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.errors import StackError
from finegrain.settings import get_settings
from finegrain.stack import SERVICE_NAMES, ServiceStatus, services

app = typer.Typer(help="Start, stop and inspect the local stack (Redis, ZooKeeper, MongoDB, Kafka).")

OnlyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help=f"Act on this service only (repeatable): {', '.join(SERVICE_NAMES)}. Default: all of them.",
    ),
]


@app.command()
def up(only: OnlyOption = None, json: JsonOption = False) -> None:
    """Start each server (reusing one already running), wait until it answers, then print the status."""
    statuses = []
    try:
        for service in services(get_settings(), only):
            with console.status(f"starting {service.name} on {service.address_text} ..."):
                statuses.append(service.up())
            console.print(f"[green]✓[/] {service.name} healthy on {service.address_text}")
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(statuses, json)


@app.command()
def down(only: OnlyOption = None) -> None:
    """Stop each server started by this stack, waiting until its process has exited."""
    try:
        for service in reversed(services(get_settings(), only)):
            stopped = service.down()
            console.print(f"{service.name}: {'stopped' if stopped else 'was not running'}")
    except StackError as exc:
        raise fail(str(exc)) from None


@app.command()
def status(only: OnlyOption = None, json: JsonOption = False) -> None:
    """Print service, address, PID, version and health of each server; exit 1 if one is unhealthy."""
    try:
        statuses = [service.status() for service in services(get_settings(), only)]
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(statuses, json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _report(statuses: list[ServiceStatus], as_json: bool) -> None:
    rows = [
        (s.name, s.address, str(s.pid or "-"), s.version, _healthy(s.healthy), s.detail) for s in statuses
    ]
    console.print(
        summary_table("Local stack", rows, ["service", "address", "PID", "version", "healthy", "note"])
    )
    if as_json:
        print_json_line(
            {
                s.name: {"address": s.address, "pid": s.pid, "version": s.version, "healthy": s.healthy}
                for s in statuses
            }
        )


def _healthy(healthy: bool) -> str:
    return "[green]yes[/]" if healthy else "[red]no[/]"
