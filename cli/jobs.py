"""`finegrain jobs`: run the offline Spark jobs, see dataset versions, roll a dataset back."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.options import EventsOption
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.dates import parse_as_of
from finegrain.errors import FinegrainError
from finegrain.settings import get_settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset
from finegrain.storage.datasets import rollback_dataset
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs import JOBS
from spark_jobs.runner import RESULT_COLUMNS, load_job, result_row, run_jobs

app = typer.Typer(help="Offline batch jobs (Spark) and the versions of what they built.")


@app.command("list")
def list_jobs() -> None:
    """List the jobs, in the order `jobs run` runs them."""
    rows = [(name, target) for name, target in JOBS.items()]
    console.print(summary_table("Offline jobs", rows, ["name", "module:class"]))


@app.command()
def run(
    names: Annotated[
        list[str] | None, typer.Argument(help="Jobs to run, in order (default: all, as in `jobs list`).")
    ] = None,
    as_of: Annotated[
        str,
        typer.Option("--as-of", help="Logical date of the run (YYYY-MM-DD); only data before it is read."),
    ] = "",
    events: EventsOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as one JSON line at the end.")
    ] = False,
) -> None:
    """Run jobs in one Spark session; each writes a new version and switches to it when complete."""
    unknown = sorted(set(names or ()) - set(JOBS))
    if unknown:
        raise fail(f"unknown job {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    if not as_of:
        raise fail("--as-of is required (YYYY-MM-DD): the jobs read only data before it")
    started = time.perf_counter()
    try:
        date = parse_as_of(as_of)
        jobs = [load_job(name) for name in (names or list(JOBS))]
        results = run_jobs(jobs, date, events)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    total = time.perf_counter() - started
    console.print(
        summary_table(
            f"Offline build as of {date} ({total:.1f} s in all)",
            [result_row(r) for r in results],
            RESULT_COLUMNS,
        )
    )
    if as_json:
        print_json_line(
            {
                "as_of": str(date),
                "seconds": total,
                "jobs": {
                    r.job: {
                        "version": r.version,
                        "rows_in": r.rows_in,
                        "rows_out": r.rows_out,
                        "seconds": r.seconds,
                    }
                    for r in results
                },
            }
        )


@app.command()
def versions(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the versions as one JSON line at the end.")
    ] = False,
) -> None:
    """Show each dataset's current version and the versions kept for rollback."""
    store = RedisVersions(redis_client(get_settings()))
    current = {str(d): store.current(d) for d in Dataset}
    history = {str(d): store.history(d) for d in Dataset}
    figures = {name: {"current": current[name], "history": history[name]} for name in current}
    rows = [(name, current[name] or "-", ", ".join(history[name]) or "-") for name in current]
    console.print(
        summary_table("Dataset versions (Redis)", rows, ["dataset", "current", "switched to (oldest first)"])
    )
    if as_json:
        print_json_line(figures)


@app.command()
def rollback(
    dataset: Annotated[Dataset, typer.Argument(help="Dataset to switch back to its previous version.")],
) -> None:
    """Switch a dataset back to the version before the current one (Redis pointer and ZooKeeper)."""
    try:
        previous, current = rollback_dataset(get_settings(), dataset)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"{dataset}: {previous} -> {current}")
