"""Datasets built as of a date, on demand: what an offline evaluation or a training run reads.

An evaluation as of date D must score the lists serving would have held on D, so it reads dataset
versions built as of D (`<YYYYMMDD of D>-<build time>`, `finegrain.storage.contract`), running the
jobs that built none first. It refuses to replace a version built as of a later date unless told to:
in the serving namespace that would switch serving back to older data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.console import Step, quiet
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs.base import JobError, JobResult
from spark_jobs.runner import load_job, run_jobs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Dataset -> the job of spark_jobs.JOBS that builds it: what MostPop and item-to-item read, ...
DATASET_JOBS: dict[Dataset, str] = {Dataset.POPULARITY: "popularity", Dataset.SIMILARITY: "item_similarity"}
# ... and what every recall channel reads (the content channel adds the index).
RECALL_DATASET_JOBS: dict[Dataset, str] = {**DATASET_JOBS, Dataset.INDEX: "content_index"}


def is_built_for(version: str | None, as_of: date) -> bool:
    """Versions are named `<as-of YYYYMMDD>-<build time>` (`spark_jobs.runner.version_for`)."""
    return version is not None and version.startswith(f"{as_of:%Y%m%d}-")


def ensure_datasets(settings: Settings, as_of: date, events_path: Path, *, rebuild: bool = False,
                    spark: SparkSession | None = None, step: Step = quiet,
                    replace_newer: bool = False, dataset_jobs: Mapping[Dataset, str] = DATASET_JOBS
                    ) -> tuple[dict[str, str], list[JobResult]]:
    """The current versions of `dataset_jobs`' datasets (popularity and similarity by default), after
    running the jobs whose current version was not built for `as_of` (all of them with `rebuild`).
    Refuses to replace a version built as of a later date (what serving would be reading) unless
    `replace_newer`."""
    versions = RedisVersions(redis_client(settings))
    stale = [dataset for dataset in dataset_jobs
             if rebuild or not is_built_for(versions.current(dataset), as_of)]
    results: list[JobResult] = []
    newer = [f"{dataset} ({versions.current(dataset)})" for dataset in stale
             if (versions.current(dataset) or "")[:8] > f"{as_of:%Y%m%d}" and not replace_newer]
    if newer:
        raise JobError(
            f"{', '.join(newer)} here {'is' if len(newer) == 1 else 'are'} built as of a later date than "
            f"{as_of}: rebuilding would switch serving back to older data. Evaluate in a namespace of its "
            "own (e.g. FINEGRAIN_REDIS_URL=redis://127.0.0.1:16379/1 FINEGRAIN_MONGO_DATABASE=finegrain_eval "
            "FINEGRAIN_ZOOKEEPER_ROOT=/finegrain_eval), or pass --replace-newer"
        )
    if stale:
        names = [dataset_jobs[dataset] for dataset in stale]
        step(f"building {', '.join(names)} as of {as_of} (Spark)")
        jobs = [load_job(name) for name in names]
        results = run_jobs(jobs, as_of, events_path, settings=settings, spark=spark)
    current = {str(dataset): versions.current(dataset) for dataset in dataset_jobs}
    for dataset, version in current.items():
        if not is_built_for(version, as_of):
            raise JobError(f"{dataset} has no version built as of {as_of} after the build "
                           f"(current: {version})")
    return {name: str(version) for name, version in current.items()}, results
