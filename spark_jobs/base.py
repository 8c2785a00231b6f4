"""The batch-job interface: what a job of `spark_jobs/` is given (`JobContext`), what it reports
(`JobResult`) and the one life cycle every job follows (`BatchJob.run`).

A job reads the canonical events strictly before its as-of date (the logical date of the run), so a
rerun for the same date gives the same output and a backfill never sees the future. It writes a new
version of its dataset and switches the pointer only once everything is written; on failure it
deletes what it wrote and the current version stays untouched.

`BatchJob.run` is a template method, final in every job: it refuses a version name that was already
published, times the phases (`Stopwatch`, reported as `details["phase_seconds"]`), calls the job's
`build` step, switches the dataset to the new version and prunes old ones, deletes the partial version
when anything fails before the switch, and unpersists every frame the job cached through
`JobContext.cache`. A job implements `build` (and, when it writes more than Redis, `switch` and
`discard`); running jobs and the spark-submit entry are in `spark_jobs.runner`.

Nothing here imports Spark at module level: `finegrain jobs list` and the DAG tests read job names
without a JVM.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, final

from finegrain.dates import midnight_utc
from finegrain.errors import DataError, FinegrainError
from finegrain.settings import Settings
from finegrain.storage.contract import Dataset

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class JobError(FinegrainError):
    """A job that cannot run with the inputs it was given."""


@dataclass
class JobContext:
    """One job's run: the settings, the shared Spark session, the as-of date, the events and the
    version being built. A new context per job, so `cache` lists only that job's frames."""

    settings: Settings
    spark: SparkSession
    as_of: date
    events_path: Path
    version: str
    cached: list[DataFrame] = field(default_factory=list, repr=False)

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

    def cache(self, frame: DataFrame) -> DataFrame:
        """Cache a frame for the rest of the job; `BatchJob.run` unpersists it when the job ends,
        whether it succeeded or failed (the session is shared with the jobs that run after it)."""
        cached = frame.cache()
        self.cached.append(cached)
        return cached

    def unpersist(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()

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


class Stopwatch:
    """Seconds per phase of a job, logged as each ends and reported in the job's details."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """End `phase`: it lasted from the previous lap (or the start) until now."""
        now = time.perf_counter()
        self.phases[phase] = round(now - self._last, 2)
        self._last = now
        log.info("%s: %s done in %.1f s", self.job, phase, self.phases[phase])


class BatchJob(ABC):
    """One offline job; subclasses live one per module in `spark_jobs/` and implement `build`."""

    name: ClassVar[str]
    dataset: ClassVar[Dataset]
    description: ClassVar[str]

    @final
    def run(self, ctx: JobContext) -> JobResult:
        """Build the whole new version, switch the pointer, prune old versions; on a failure before the
        switch, delete the partial version (a published one is never touched) and re-raise."""
        ensure_new_version(ctx.settings, self.dataset, ctx.version)
        watch = Stopwatch(self.name)
        try:
            result = self.build(ctx, watch)
            result.previous_version = self.switch(ctx, result)
            watch.lap("switch")
        except BaseException as exc:
            try:
                self.discard(ctx)
            except Exception as cleanup:  # the run's own error is what the caller must see
                exc.add_note(f"also failed to delete the partial {self.dataset} version {ctx.version}: "
                             f"{cleanup}")
            raise
        finally:
            ctx.unpersist()
        result.details["phase_seconds"] = watch.phases
        return result

    @abstractmethod
    def build(self, ctx: JobContext, watch: Stopwatch) -> JobResult:
        """Write the complete version `ctx.version` and check it is complete; return the result
        (`previous_version` and `details["phase_seconds"]` are filled in by `run`). Lap `watch` at the
        end of each phase; cache frames through `ctx.cache` so that `run` unpersists them."""

    def switch(self, ctx: JobContext, result: JobResult) -> str | None:
        """Make the built version current (Redis pointer, ZooKeeper) and prune old versions; returns
        the version it replaced. Jobs writing more than Redis switch their other store here too."""
        from finegrain.storage.datasets import switch_dataset

        return switch_dataset(ctx.settings, self.dataset, ctx.version)

    def discard(self, ctx: JobContext) -> None:
        """Delete what a failed run wrote, unless the version was published (then it is kept)."""
        fail_cleanly(ctx.settings, self.dataset, ctx.version)


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
