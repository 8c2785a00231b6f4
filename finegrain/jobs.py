"""The batch-job interface shared by `spark_jobs/`, the CLI and the Airflow DAGs.

A job reads the canonical events strictly before its as-of date (the logical date of the run), so a
rerun for the same date gives the same output and a backfill never sees the future. It writes a new
version of its dataset and switches the pointer only once everything is written; on failure it
deletes what it wrote and the current version stays untouched.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from finegrain.dates import midnight_utc, parse_as_of
from finegrain.errors import DataError, FinegrainError
from finegrain.settings import Settings, get_settings
from finegrain.storage.contract import Dataset, check_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class JobError(FinegrainError):
    """A job that cannot run with the inputs it was given."""


def version_for(as_of: date, built: datetime | None = None) -> str:
    """Version name of a run: its as-of date and its build time, e.g. `20101110-20261127T071530`.

    The build time keeps a rerun for the same date from overwriting the version being served."""
    return f"{as_of:%Y%m%d}-{(built or datetime.now()):%Y%m%dT%H%M%S}"


@dataclass
class JobContext:
    settings: Settings
    spark: SparkSession
    as_of: date
    events_path: Path
    version: str

    def events(self) -> DataFrame:
        """The canonical purchase events strictly before the as-of date (midnight UTC)."""
        from pyspark.sql import functions as F

        if not self.events_path.exists():
            raise JobError(
                f"no events at {self.events_path}: run `finegrain data load` (or pass --events PATH)"
            )
        try:
            frame = self.spark.read.parquet(str(self.events_path))
        except Exception as exc:  # Spark wraps I/O errors in Java exceptions
            raise JobError(f"cannot read events at {self.events_path}: {str(exc).splitlines()[0]}") from None
        missing = {"user_id", "item_id", "quantity", "price", "timestamp", "invoice"} - set(frame.columns)
        if missing:
            raise DataError(f"{self.events_path} lacks column(s) {', '.join(sorted(missing))}")
        return frame.where(F.col("timestamp") < F.lit(midnight_utc(self.as_of)))


    def no_events(self, purpose: str) -> JobError:
        """The error of a job given an as-of date before its events start (or an empty file)."""
        return JobError(f"no purchase events before {self.as_of.isoformat()} in {self.events_path}: "
                        f"nothing to {purpose} (is the as-of date before the data starts?)")


@dataclass
class JobResult:
    job: str
    dataset: Dataset
    version: str
    rows_in: int
    rows_out: int
    seconds: float = 0.0
    previous_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class BatchJob(ABC):
    """One offline job; subclasses live one per module in `spark_jobs/`."""

    name: ClassVar[str]
    dataset: ClassVar[Dataset]
    description: ClassVar[str]

    @abstractmethod
    def run(self, ctx: JobContext) -> JobResult:
        """Build the whole new version, switch the pointer, prune old versions."""


class Stopwatch:
    """Seconds per phase of a job, logged as each ends and reported in the job's details."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self._last, 2)
        self._last = now
        log.info("%s: %s done in %.1f s", self.job, phase, self.phases[phase])


def verify_written(settings: Settings, keys: list[str]) -> None:
    """Check that every key a version should have is in Redis before switching serving to it: a task
    that wrote nowhere (or to another server) must fail the job, not leave holes in what is served."""
    from finegrain.storage.clients import redis_client

    client = redis_client(settings)
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        missing = [key for key, found in zip(keys, pipe.execute(), strict=True) if not found]
    finally:
        client.close()
    if missing:
        raise JobError(f"{len(missing)} of {len(keys)} lists missing after the write, e.g. {missing[0]}")


def ensure_new_version(settings: Settings, dataset: Dataset, version: str) -> None:
    """Refuse to build into a version that was already published (two runs started in the same
    second get the same name): writing there would change lists that are served or kept for rollback."""
    from finegrain.storage.clients import redis_client
    from finegrain.storage.redis_versions import RedisVersions

    client = redis_client(settings)
    try:
        published = version in RedisVersions(client).history(dataset)
    finally:
        client.close()
    if published:
        raise JobError(f"{dataset} version {version} is already published; start the run again "
                       "(versions are named after the build time, to the second)")


def fail_cleanly(settings: Settings, dataset: Dataset, version: str) -> None:
    """Delete a partial version after a failure before its switch, so nothing half-built lingers; a
    version that was published (current or kept for rollback) is never touched."""
    from finegrain.storage.clients import redis_client
    from finegrain.storage.redis_versions import RedisVersions

    client = redis_client(settings)
    try:
        versions = RedisVersions(client)
        if version not in versions.history(dataset):
            versions.delete_version(dataset, version)
    finally:
        client.close()


def registry() -> dict[str, str]:
    """Job name -> "module:class", from `spark_jobs.JOBS` (imported lazily: listing needs no Spark)."""
    from spark_jobs import JOBS

    return JOBS


def load_job(name: str) -> BatchJob:
    module_name, class_name = registry()[name].split(":")
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
    events_path = events_path or settings.data_dir / "retail" / "events.parquet"
    session = spark or spark_session(settings, app_name="finegrain-" + "-".join(job.name for job in jobs))
    version = check_version(version_for(as_of))
    results = []
    for job in jobs:
        started = time.perf_counter()
        result = job.run(JobContext(settings, session, as_of, events_path, version))
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


def job_main(jobs: Sequence[BatchJob], argv: Sequence[str] | None = None) -> int:
    """Entry point of a job module under `spark-submit`: parse arguments, run, print the summary."""
    from finegrain.console import console, fail, summary_table

    parser = argparse.ArgumentParser(description="; ".join(job.description for job in jobs))
    parser.add_argument(
        "--as-of", required=True, help="Logical date of the run (YYYY-MM-DD); reads data before it."
    )
    parser.add_argument(
        "--events", type=Path, default=None, help="Canonical events Parquet (default: loaded data)."
    )
    args = parser.parse_args(argv)
    try:
        results = run_jobs(jobs, parse_as_of(args.as_of), args.events)
    except FinegrainError as exc:
        return fail(str(exc)).exit_code
    console.print(summary_table("Offline jobs", [result_row(r) for r in results], RESULT_COLUMNS))
    return 0


RESULT_COLUMNS = ["job", "dataset", "version", "rows in", "rows out", "seconds", "replaced"]


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
