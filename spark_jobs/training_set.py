"""The ranker training set as a Spark job: the rows `finegrain.training.training_set` defines (as
`models.training_set.build_training_set` builds them in pandas), with
the per-user work spread over Spark partitions.

    spark-submit spark_jobs/training_set.py --as-of 2010-11-10 [--events P] [--out DIR]
        [--cutoffs 2010-08-12,2010-09-11,2010-10-11] [--max-users N]

Output: a training set as `models.training_set_io` reads it (Parquet part files plus
`_manifest.json`), by default under `{var_dir}/training_sets/{as_of}-{build time}`.

How the work is laid out, per cut-off c (default cut-offs: what a ranker training run as of the date
needs, `finegrain.training.plan.TrainingPlan.cutoffs`; each label window must end by the as-of date):
1. The driver builds what serving would hold as of c and what every user shares: the item table,
   the item lookup, the cosine neighbour matrix and the MostPop list (`CutoffInputs.build` with no
   user), and picks the users (`cutoff_users`, the same draw as the pandas builder). These need the
   whole catalogue at once (categories are counted over every item, neighbours over every buyer), so
   they come from the history collected once, projected on the columns they read (348k lines before
   2010-11-10 here). They are broadcast: about 5 MB pickled per cut-off.
2. Spark tags each line of a chosen user with the cut-offs it belongs to (history before c, or label
   window after c; descriptions dropped, they are what makes a line heavy and no per-user definition
   reads them), hash-partitions by (cut-off, user) and runs `mapInArrow`: per partition, the
   users' profiles (`finegrain.features.user.user_profiles`), their candidates, features and labels
   (`finegrain.training.training_set.rows_for_users`, the serving feature code). Rows leave as Arrow
   batches in the training-set schema, with each group's global index, and Spark writes them as Parquet.
3. The driver reads the written set back through `read_training_set` (which checks every group is
   whole and the feature columns are right), writes the manifest and renames the staging folder into
   place: a reader sees the old set or the complete new one.

Not a `BatchJob`: the output is a file set for training, not a Redis dataset that serving reads, so
there is no pointer to switch; the atomic rename plays that part (a failed run leaves no `--out`).
Scale limit: step 1 holds one copy of the history on the driver (about 130 MB as pandas objects
here); at 100x the item-level inputs would come from Spark aggregations as in the features and
similarity jobs (per-item statistics by item partition, the co-purchase pairs reduced before the
driver sees them).

Measured on the real data (3 cut-offs, 2,832 groups, 592,762 rows; 2 cores shared with other work):
23.6 s inside the job (collect 6.1 s, item-level inputs 1 s per cut-off, per-user rows 13.3 s), 35 s
for the whole `spark-submit` with the JVM start; the pandas builder takes 22.3 s for the same rows,
which are identical (same candidates, labels and float32 features, bit for bit). On one machine Spark
buys nothing; it is here so that the per-user work, which grows with users x candidates, can spread
over a cluster.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import typer

from finegrain.console import fail
from finegrain.dates import as_of_ms, midnight_utc, parse_as_of
from finegrain.errors import FinegrainError
from finegrain.settings import Settings, get_settings
from finegrain.training.candidates import CandidateConfig
from finegrain.training.plan import TrainingPlan
from finegrain.training.training_set import (
    LABEL_DAYS,
    CutoffInputs,
    PointInTime,
    check_cutoffs,
    cutoff_users,
    rows_for_users,
    user_inputs,
)
from models.training_set_io import (
    arrow_schema,
    read_training_set,
    replace_directory,
    to_table,
    write_manifest,
)
from spark_jobs.base import JobContext, JobError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# What the driver-side inputs and the per-user features read (see `CutoffInputs.build`, `user_profiles`).
LINE_COLUMNS = ("user_id", "item_id", "invoice", "quantity", "price", "timestamp", "country", "description")
# What the per-user work reads (`user_profiles`' columns): descriptions stay on the driver, out of the
# shuffle, where they are the bulk of a line.
USER_COLUMNS = ("user_id", "item_id", "invoice", "quantity", "price", "timestamp", "country", "line")
USERS_PER_PARTITION = 150


@dataclass(frozen=True)
class TrainingSetRequest:
    as_of: date
    cutoffs: tuple[date, ...]
    out: Path
    events_path: Path
    max_users: int | None = None
    label_days: int = LABEL_DAYS
    seed: int = 0
    config: CandidateConfig = field(default_factory=CandidateConfig)


@dataclass
class TrainingSetBuild:
    out: Path
    rows: int
    groups: int
    manifest: dict[str, Any]
    seconds: float


def default_out(settings: Settings, as_of: date, built: datetime | None = None) -> Path:
    stamp = f"{(built or datetime.now()):%Y%m%dT%H%M%S}"
    return settings.var_dir / "training_sets" / f"{as_of.isoformat()}-{stamp}"


def parse_cutoffs(text: str) -> tuple[date, ...]:
    dates = []
    for part in text.split(","):
        try:
            dates.append(date.fromisoformat(part.strip()))
        except ValueError:
            raise JobError(f"bad --cutoffs entry {part!r}: expected dates as YYYY-MM-DD, comma-separated") \
                from None
    return tuple(dates)


def plan_cutoffs(events_path: Path, as_of: date) -> tuple[date, ...]:
    """The cut-offs of a ranker training run as of `as_of` on these events (`TrainingPlan.cutoffs`)."""
    import pyarrow.compute as pc

    from finegrain.data.retail import read_events_table

    timestamps = read_events_table(events_path).column("timestamp")
    if len(timestamps) == 0:
        raise JobError(f"no events in {events_path}")
    bounds = pc.min_max(timestamps).as_py()
    first, last = bounds["min"], bounds["max"]
    return TrainingPlan.within(as_of, first.date(), last.date() + timedelta(days=1)).cutoffs


def checked_cutoffs(cutoffs: Sequence[date], as_of: date, label_days: int) -> tuple[date, ...]:
    try:
        return tuple(check_cutoffs(cutoffs, as_of, label_days))
    except ValueError as exc:
        raise JobError(str(exc)) from None


def build_training_set_spark(spark: SparkSession, settings: Settings, request: TrainingSetRequest
                             ) -> TrainingSetBuild:
    """Build the set into a staging folder beside `request.out`, check it, then rename it into place."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    cutoffs = checked_cutoffs(request.cutoffs, request.as_of, request.label_days)
    if request.max_users is not None and request.max_users < 1:
        raise JobError(f"--max-users {request.max_users}: draw at least one user per cut-off")
    seconds: dict[str, float] = {}
    ctx = JobContext(settings, spark, request.as_of, request.events_path, version="")
    # `line` numbers the lines in scan order, the file's order for one Parquet file: per-user
    # definitions then see each user's lines in the order the pandas builder reads them.
    lines = (ctx.events().select(*LINE_COLUMNS)
             .withColumn("line", F.monotonically_increasing_id())
             .withColumn("ts", F.col("timestamp").cast("long")))  # seconds: a cheap column to cut on
    # Lines at or after the last label window's end can reach nothing.
    end = midnight_utc(cutoffs[-1] + timedelta(days=request.label_days))
    lines = lines.where(F.col("timestamp") < F.lit(end)).persist()
    try:
        collected: pd.DataFrame = lines.drop("ts").toPandas()
        collected = collected.sort_values("line", kind="stable").reset_index(drop=True)
        seconds["collect"] = round(time.perf_counter() - started, 2)
        if collected.empty:
            raise JobError(f"no purchase events before {request.as_of} in {request.events_path}: nothing "
                           "to build a training set from (is the as-of date before the data starts?)")
        shared: dict[str, CutoffInputs] = {}
        population = []
        for cutoff in cutoffs:
            lap = time.perf_counter()
            point = PointInTime.split(collected, cutoff, request.label_days)
            users = cutoff_users(point, request.max_users, request.seed)
            shared[cutoff.isoformat()] = CutoffInputs.build(point.history, cutoff, users=[])
            population.append(pd.DataFrame({"cutoff": cutoff.isoformat(), "user_id": users.astype(str)}))
            seconds[f"{cutoff}:inputs"] = round(time.perf_counter() - lap, 2)
        del collected
        groups = pd.concat(population, ignore_index=True)
        if groups.empty:  # PointInTime.split refuses empty windows, so this is a guard, not a case
            raise JobError(f"no user bought both before and after the cut-offs {list(map(str, cutoffs))}")
        # Groups by cut-off, then user: the order of `build_training_set`.
        groups["group"] = np.arange(len(groups), dtype=np.int64)
        work = _work_lines(spark, lines, groups, cutoffs, request.label_days)
        partitions = max(1, math.ceil(len(groups) / USERS_PER_PARTITION))
        staging = request.out.parent / f".{request.out.name}.{uuid.uuid4().hex[:8]}.tmp"
        request.out.parent.mkdir(parents=True, exist_ok=True)
        lap = time.perf_counter()
        try:
            _write_rows(spark, work, shared, request.config, partitions, staging)
            seconds["rows"] = round(time.perf_counter() - lap, 2)
            rows = read_training_set(staging)
            if len(rows.group_sizes) != len(groups):
                raise JobError(f"the Spark output holds {len(rows.group_sizes):,} groups, "
                               f"{len(groups):,} users were chosen")
            build_seconds = round(time.perf_counter() - started, 2)
            rows.seconds = seconds
            manifest = write_manifest(staging, rows, {
                "as_of": request.as_of.isoformat(), "label_days": request.label_days,
                "max_users": request.max_users, "seed": request.seed, "events": str(request.events_path),
                "builder": "spark", "build_seconds": build_seconds, "partitions": partitions,
                "candidates": {"i2i_depth": request.config.i2i_depth,
                               "popular_depth": request.config.popular_depth}})
            replace_directory(staging, request.out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        lines.unpersist()
    return TrainingSetBuild(request.out, len(rows.labels), len(rows.group_sizes),
                            json.loads((request.out / manifest.name).read_text()),
                            round(time.perf_counter() - started, 2))


def _work_lines(spark: SparkSession, lines: DataFrame, groups: pd.DataFrame, cutoffs: Sequence[date],
                label_days: int) -> DataFrame:
    """Each chosen user's lines per cut-off: history (before it) and label window (after it) flagged."""
    from pyspark.sql import functions as F

    chosen = F.broadcast(spark.createDataFrame(groups))
    parts = []
    for cutoff in cutoffs:
        start = as_of_ms(cutoff) // 1000
        end = start + label_days * 86_400
        window = (F.when(F.col("ts") < start, F.lit(False))
                  .when(F.col("ts") < end, F.lit(True)))  # null: after the window, dropped below
        parts.append(lines.withColumn("cutoff", F.lit(cutoff.isoformat())).withColumn("is_label", window)
                     .where(F.col("is_label").isNotNull()))
    tagged = parts[0]
    for part in parts[1:]:
        tagged = tagged.unionByName(part)
    return tagged.select(*USER_COLUMNS, "cutoff", "is_label").join(chosen, ["cutoff", "user_id"])


def _write_rows(spark: SparkSession, work: DataFrame, shared: dict[str, CutoffInputs],
                config: CandidateConfig, partitions: int, staging: Path) -> None:
    from pyspark.sql.pandas.types import from_arrow_schema

    inputs = spark.sparkContext.broadcast(shared)

    def rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from partition_rows(batches, inputs.value, config)

    try:
        (work.repartition(partitions, "cutoff", "user_id")
         .mapInArrow(rows, from_arrow_schema(arrow_schema()))
         .write.parquet(str(staging)))
    finally:
        inputs.unpersist()


def partition_rows(batches: Iterator[pa.RecordBatch], shared: dict[str, CutoffInputs], config: CandidateConfig
                   ) -> Iterator[pa.RecordBatch]:
    """The training rows of one partition's (cut-off, user) groups, from their lines."""
    received = [batch for batch in batches if batch.num_rows]
    if not received:
        return
    frame = pa.Table.from_batches(received).to_pandas()
    frame = frame.sort_values("line", kind="stable")
    for cutoff, part in frame.groupby("cutoff", sort=True):
        inputs = shared[str(cutoff)]
        if inputs.lookup is None:
            raise ValueError(f"the inputs of cut-off {cutoff} carry no item lookup")
        history = part.loc[~part["is_label"].astype(bool)]
        labels = part.loc[part["is_label"].astype(bool), ["user_id", "item_id"]].drop_duplicates()
        group_of = part.drop_duplicates("user_id").set_index("user_id")["group"]
        users = sorted(group_of.index.astype(str))
        profiles, realtime = user_inputs(history, inputs.cutoff, inputs.lookup)
        built = rows_for_users(replace(inputs, profiles=profiles, realtime=realtime), users, labels, config)
        table = to_table(built)
        global_group = group_of.loc[users].to_numpy(np.int64)
        table = table.set_column(table.schema.get_field_index("group"), "group",
                                 pa.array(global_group[table.column("group").to_numpy()], pa.int64()))
        yield from table.to_batches()


def main(argv: Sequence[str] | None = None) -> int:
    """The spark-submit entry: `spark-submit spark_jobs/training_set.py --as-of D [options]`."""
    from spark_jobs.runner import entry_app, run_entry

    app = entry_app()

    @app.command(help="Build the ranker training set with Spark.")
    def build(
        as_of: Annotated[str, typer.Option("--as-of", help="The model's as-of date (YYYY-MM-DD); label "
                                           "windows must end by it.", show_default=False)],
        events: Annotated[Path | None, typer.Option("--events", help="Canonical events Parquet.",
                                                    show_default=False)] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="Output folder (default: {var_dir}/training_sets/{as_of}-{build time}).",
            show_default=False)] = None,
        cutoffs: Annotated[str | None, typer.Option(
            "--cutoffs", help="Comma-separated cut-off dates (default: every cut-off a ranker training "
            "run as of --as-of needs, finegrain.training.plan: three 30 days apart, the last 30 days "
            "before --as-of, and those of its backtest when the data ends before a test window after it).",
            show_default=False)] = None,
        max_users: Annotated[int | None, typer.Option("--max-users", help="Users drawn per cut-off (quick "
                                                      "runs); 0: every user, as without the option (a DAG "
                                                      "passes its param as is).", show_default=False)] = None,
        label_days: Annotated[int, typer.Option("--label-days", help="Days after a cut-off whose purchases "
                                                "are its labels.")] = LABEL_DAYS,
    ) -> None:
        settings = get_settings()
        try:
            as_of_date = parse_as_of(as_of)
            request = TrainingSetRequest(
                as_of=as_of_date,
                cutoffs=checked_cutoffs(parse_cutoffs(cutoffs) if cutoffs
                                        else plan_cutoffs(events or settings.events_path, as_of_date),
                                        as_of_date, label_days),
                out=out or default_out(settings, as_of_date),
                events_path=events or settings.events_path,
                max_users=None if max_users == 0 else max_users, label_days=label_days)
            from finegrain.spark import spark_session

            spark = spark_session(settings, app_name="finegrain-training-set")
            built = build_training_set_spark(spark, settings, request)
        except FinegrainError as exc:
            raise fail(str(exc)) from None
        summary = {"out": str(built.out), "rows": built.rows, "groups": built.groups,
                   "seconds": built.seconds,
                   "candidate_recall": built.manifest.get("candidate_recall"),
                   "cutoffs": built.manifest["cutoffs"]}
        print(json.dumps(summary, sort_keys=True))

    return run_entry(app, argv)


if __name__ == "__main__":
    sys.exit(main())
