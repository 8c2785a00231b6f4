"""`finegrain stack up | down | status`: the local stack of real servers."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import JsonOption
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.errors import StackError
from finegrain.settings import get_settings
from finegrain.stack import SERVICE_NAMES, SPARK_SERVICE_NAMES, LocalService, ServiceStatus, services

app = typer.Typer(help="Start, stop and inspect the local stack (Redis, ZooKeeper, MongoDB, Kafka; "
                  "with --spark a Spark standalone cluster).")

OnlyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help=f"Act on this service only (repeatable): {', '.join(SERVICE_NAMES + SPARK_SERVICE_NAMES)}. "
        "Default: all but the Spark cluster.",
    ),
]
SparkOption = Annotated[
    bool,
    typer.Option(
        "--spark",
        help="Also the local Spark standalone cluster (a master and a worker on 127.0.0.1); run the jobs "
        "on it with FINEGRAIN_SPARK_MASTER=spark://<FINEGRAIN_SPARK_CLUSTER_MASTER>.",
    ),
]


@app.command()
def up(only: OnlyOption = None, spark: SparkOption = False, json: JsonOption = False) -> None:
    """Start each server (reusing one already running), wait until it answers, then print the status."""
    statuses = []
    try:
        for service in services(get_settings(), only, spark):
            with console.status(f"starting {service.name} on {service.address_text} ..."):
                statuses.append(service.up())
            console.print(f"[green]✓[/] {service.name} healthy on {service.address_text}")
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(statuses, json)


@app.command()
def down(only: OnlyOption = None, spark: SparkOption = False) -> None:
    """Stop each server started by this stack (the Spark cluster too when it runs), waiting until its
    process has exited."""
    try:
        for service in reversed(_with_running_cluster(only, spark)):
            stopped = service.down()
            console.print(f"{service.name}: {'stopped' if stopped else 'was not running'}")
    except StackError as exc:
        raise fail(str(exc)) from None


@app.command()
def status(only: OnlyOption = None, spark: SparkOption = False, json: JsonOption = False) -> None:
    """Print service, address, PID, version and health of each server (the Spark cluster's when it runs
    or with --spark); exit 1 if one is unhealthy."""
    try:
        statuses = [service.status() for service in _with_running_cluster(only, spark)]
    except StackError as exc:
        raise fail(str(exc)) from None
    _report(statuses, json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _with_running_cluster(only: list[str] | None, spark: bool) -> list[LocalService]:
    """The services asked for; without --only, the Spark cluster's too when this stack started them."""
    chosen = services(get_settings(), only, spark)
    if only or spark:
        return chosen
    cluster = services(get_settings(), list(SPARK_SERVICE_NAMES))
    return chosen + [service for service in cluster if service.running_pid() is not None]


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
