"""Running the batch jobs: load one by name from `spark_jobs.JOBS`, run several in one Spark session,
and the command-line entry of a job under `spark-submit`.

Three ways in, one code path (`run_jobs`):
- `finegrain jobs run [JOB...] --as-of D` (the CLI, `cli/jobs.py`);
- `spark-submit spark_jobs/submit.py JOB [JOB ...] --as-of D [--events P]` (`submit_main`, what the
  nightly DAG submits);
- `spark-submit spark_jobs/<job>.py --as-of D [--events P]` (`job_main`, one job's own entry).
The entries are typer commands like the CLI's; a bad input ends in one line on stderr and exit 2,
never a traceback. The job interface itself (`BatchJob`, `JobContext`, `JobResult`) is `spark_jobs.base`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from finegrain.console import console, fail, summary_table
from finegrain.dates import parse_as_of
from finegrain.errors import FinegrainError
from finegrain.settings import Settings, get_settings
from finegrain.storage.contract import check_version
from spark_jobs import JOBS
from spark_jobs.base import BatchJob, JobContext, JobError, JobResult

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RESULT_COLUMNS = ["job", "dataset", "version", "rows in", "rows out", "seconds", "replaced"]

AsOfOption = Annotated[str, typer.Option(
    "--as-of", help="Logical date of the run (YYYY-MM-DD); reads data before it.", show_default=False)]
EventsOption = Annotated[Path | None, typer.Option(
    "--events", help="Canonical events Parquet (default: loaded data).", show_default=False)]


def version_for(as_of: date, built: datetime | None = None) -> str:
    """Version name of a run: its as-of date and its build time, e.g. `20101110-20261127T071530`.

    The build time keeps a rerun for the same date from overwriting the version being served."""
    return f"{as_of:%Y%m%d}-{(built or datetime.now()):%Y%m%dT%H%M%S}"


def load_job(name: str) -> BatchJob:
    """The job registered as `name` in `spark_jobs.JOBS`, imported only now (so listing needs no Spark)."""
    if name not in JOBS:
        raise JobError(f"unknown job {name}; choose from {', '.join(JOBS)}")
    module_name, class_name = JOBS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobError(f"the {name} job ({module_name}) cannot be imported: {exc}") from None
    job: BatchJob = getattr(module, class_name)()
    return job


def run_jobs(
    jobs: Sequence[BatchJob],
    as_of: date,
    events_path: Path | None = None,
    settings: Settings | None = None,
    spark: SparkSession | None = None,
) -> list[JobResult]:
    """Run jobs in order in one Spark session (a session costs about 10 s to start)."""
    from finegrain.spark import spark_session

    settings = settings or get_settings()
    events_path = events_path or settings.events_path
    session = spark or spark_session(settings, app_name="finegrain-" + "-".join(job.name for job in jobs))
    version = check_version(version_for(as_of))
    results = []
    for job in jobs:
        started = time.perf_counter()
        result = job.run(JobContext(settings, session, as_of, events_path, version))
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


def result_row(result: JobResult) -> tuple[Any, ...]:
    return (
        result.job,
        str(result.dataset),
        result.version,
        result.rows_in,
        result.rows_out,
        round(result.seconds, 1),
        result.previous_version or "-",
    )


def entry_app() -> typer.Typer:
    """The typer app of a spark-submit entry (one command, whose help is the entry's): no shell
    completion (spark-submit has none to offer) and no pretty tracebacks (errors are one line through
    `finegrain.console.fail`)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def run_entry(app: typer.Typer, argv: Sequence[str] | None = None) -> int:
    """Run a typer app on `argv` (default: the command line) and return its exit status instead of
    exiting, so an entry can be called in process (tests) as well as from `__main__`."""
    try:
        app(args=None if argv is None else list(argv))
    except SystemExit as exc:  # click ends every standalone run with one, success included
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def _run_and_report(jobs: Callable[[], Sequence[BatchJob]], as_of: str, events: Path | None) -> None:
    try:
        results = run_jobs(jobs(), parse_as_of(as_of), events)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    console.print(summary_table("Offline jobs", [result_row(r) for r in results], RESULT_COLUMNS))


def job_main(jobs: Sequence[BatchJob], argv: Sequence[str] | None = None) -> int:
    """Entry point of a job module under `spark-submit`: parse the options, run, print the summary."""
    app = entry_app()

    @app.command(help="; ".join(job.description for job in jobs))
    def main(as_of: AsOfOption, events: EventsOption = None) -> None:
        _run_and_report(lambda: jobs, as_of, events)

    return run_entry(app, argv)


def submit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `spark_jobs/submit.py`: the jobs named first, run in that order in one session."""
    app = entry_app()

    @app.command(help="Run offline jobs in one Spark session; each writes a new version of its dataset and "
                 "switches to it when complete.")
    def main(
        names: Annotated[list[str] | None, typer.Argument(
            help=f"Jobs to run, in order, from {', '.join(JOBS)}.", show_default=False)] = None,
        as_of: AsOfOption = "",
        events: EventsOption = None,
    ) -> None:
        unknown = [name for name in names or () if name not in JOBS]
        if not names or unknown:
            raise fail(f"name the jobs to run first, from {', '.join(JOBS)}"
                       + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        if not as_of:
            raise fail("--as-of is required (YYYY-MM-DD): the jobs read only data before it")
        _run_and_report(lambda: [load_job(name) for name in names], as_of, events)

    return run_entry(app, argv)
