"""Best-seller lists: global, per country and per derived category, over the last 7, 30, 90 days and all
the data before the as-of date, as `ScoredItemList`s under `fg:popularity:{version}:{scope}:{name}@{window}`.

The popularity of an item is its number of **distinct buyers** in the window. Of the three candidate
measures it is the one that reproduces the data set README's MostPop baseline (test from 2010-11-10,
1,291 users): distinct buyers give HR@10 0.5321, Recall@10 0.0392, NDCG@10 0.1141, Recall@20 0.0666,
NDCG@20 0.1082 (the README: 0.532 / 0.039 / 0.114 / 0.067 / 0.108); purchase lines give 0.5585 /
0.0434 / 0.1215 / 0.0625 / 0.1084 and units 0.4431 / 0.0283 / 0.0835 / 0.0397 / 0.0708. It also keeps
a single wholesaler re-ordering one item every day from looking like a best seller. Ties go to the item
with more purchase lines in the window, then to the smaller item id, so reruns give identical lists.

The content index ranks its postings with the same measure (`item_popularity`), so "best sellers in
term X" read from the index agrees with these lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from finegrain.dates import midnight_utc
from finegrain.features.catalog import OTHER_CATEGORY
from finegrain.settings import Settings
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import scored_list
from spark_jobs.base import BatchJob, JobContext, JobResult, Stopwatch, verify_written

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

# Window name -> days before the as-of date; None is every event before it.
WINDOWS: dict[str, int | None] = {"7d": 7, "30d": 30, "90d": 90, "all": None}
GLOBAL_NAME = "all"
# Popular recall asks for about a thousand candidates; narrower scopes feed quotas, not whole answers.
MAX_ITEMS = {"global": 1000, "country": 200, "category": 200}
POPULARITY_MEASURE = "distinct_buyers"


def window_start(as_of: date, window: str) -> datetime | None:
    """First instant inside `window`, or None when the window is every event before the as-of date."""
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}: expected one of {', '.join(WINDOWS)}")
    days = WINDOWS[window]
    return None if days is None else midnight_utc(as_of) - timedelta(days=days)


def _in_window(column: Column, as_of: date, window: str) -> Column:
    from pyspark.sql import functions as F

    start = window_start(as_of, window)
    return F.lit(True) if start is None else column >= F.lit(start)


def item_popularity(events: DataFrame, as_of: date, by: Iterable[str] = ()) -> DataFrame:
    """Per item (and per `by` columns): `buyers_<window>` and `lines_<window>` for every window.

    Events are first reduced to one row per buyer and item with the buyer's last purchase time: the
    buyer counts in a window exactly when that last purchase falls inside it, so every window comes out
    of one pass instead of one count-distinct each."""
    from pyspark.sql import functions as F

    keys = [*by, "item_id"]
    per_buyer = events.groupBy(*keys, "user_id").agg(
        F.max("timestamp").alias("last_bought"),
        *[F.sum(F.when(_in_window(F.col("timestamp"), as_of, w), 1).otherwise(0)).alias(f"lines_{w}")
          for w in WINDOWS],
    )
    return per_buyer.groupBy(*keys).agg(
        *[F.sum(F.when(_in_window(F.col("last_bought"), as_of, w), 1).otherwise(0)).cast("int")
          .alias(f"buyers_{w}") for w in WINDOWS],
        *[F.sum(f"lines_{w}").cast("int").alias(f"lines_{w}") for w in WINDOWS],
    )


def _long_format(stats: DataFrame, scope: str, name: Column) -> DataFrame:
    """(scope, name, window, item_id, score, tie) rows, one per window in which the item sold."""
    from pyspark.sql import functions as F

    per_window = F.explode(F.array(*[
        F.struct(F.lit(w).alias("window"), F.col(f"buyers_{w}").alias("score"),
                 F.col(f"lines_{w}").alias("tie"))
        for w in WINDOWS
    ])).alias("w")
    return (stats.select(F.lit(scope).alias("scope"), name.alias("name"), "item_id", per_window)
            .select("scope", "name", "w.window", "item_id", "w.score", "w.tie")
            .where(F.col("score") > 0))


def ranked_lists(rows: DataFrame, group: list[str], max_items: Column | int | None = None) -> DataFrame:
    """One row per `group` with `items`: array<struct<neg_score, neg_tie, item_id, score>>, best first.

    Sorting structs of negated counts puts the highest score first, then the highest tie-break, then
    the smallest item id, which makes every list deterministic."""
    from pyspark.sql import functions as F

    ordered = F.sort_array(F.collect_list(F.struct(
        (-F.col("score")).alias("neg_score"), (-F.col("tie")).alias("neg_tie"), F.col("item_id"),
        F.col("score"))))
    items = ordered if max_items is None else F.slice(ordered, 1, max_items)
    return rows.groupBy(*group).agg(items.alias("items"))


@dataclass(frozen=True)
class ListWriter:
    """Writes ranked lists from the executors: one Redis client per partition, pipelined writes.

    Picklable on purpose (plain fields only): Spark ships it to every executor."""

    settings: Settings
    version: str
    generated_ms: int

    def write_partition(self, rows: Iterable[tuple[str, str, list[Any]]]) -> Iterator[int]:
        """Rows are (redis_key, logical_key, items); yields how many lists this partition wrote."""
        from finegrain.storage.clients import redis_client
        from finegrain.storage.redis_versions import write_entries

        client = redis_client(self.settings)
        try:
            written = write_entries(client, (
                (redis_key, scored_list(logical_key, self.version, [i["item_id"] for i in items],
                                        [float(i["score"]) for i in items], generated_ms=self.generated_ms))
                for redis_key, logical_key, items in rows))
        finally:
            client.close()
        yield written


def write_lists(lists: DataFrame, writer: ListWriter) -> int:
    """Write (redis_key, logical_key, items) rows from the executors; returns how many were written.

    `mapPartitions` + `sum` is a `foreachPartition` whose action also returns the count, so the
    job's rows_out is what the executors actually wrote."""
    rdd = lists.select("redis_key", "logical_key", "items").rdd
    return int(rdd.mapPartitions(lambda rows: writer.write_partition(
        (row["redis_key"], row["logical_key"], row["items"]) for row in rows)).sum())


class PopularityJob(BatchJob):
    name = "popularity"
    dataset = Dataset.POPULARITY
    description = "Best-seller lists (global, per country, per category) over 7d/30d/90d/all windows"

    def build(self, ctx: JobContext, watch: Stopwatch) -> JobResult:
        from pyspark.sql import functions as F

        from spark_jobs.item_attributes import item_attributes

        events = ctx.cache(ctx.events().select("user_id", "item_id", "timestamp", "country", "description",
                                               "price"))
        rows_in = events.count()
        if rows_in == 0:
            raise ctx.no_events("rank")
        watch.lap("read events")
        global_stats = ctx.cache(item_popularity(events, ctx.as_of))
        categories = (item_attributes(events).where(F.col("category") != OTHER_CATEGORY)
                      .select("item_id", "category"))
        watch.lap("item categories")
        by_country = item_popularity(events.where(F.col("country").isNotNull()), ctx.as_of, by=["country"])
        rows = (
            _long_format(global_stats, "global", F.lit(GLOBAL_NAME))
            .unionByName(_long_format(by_country, "country", F.col("country")))
            # An item has one category, so its popularity within the category is its global one.
            .unionByName(_long_format(global_stats.join(categories, "item_id"), "category",
                                      F.col("category")))
        )
        cap = F.coalesce(*[F.when(F.col("scope") == s, F.lit(n)) for s, n in MAX_ITEMS.items()])
        logical = F.concat_ws(":", "scope", F.concat_ws("@", "name", "window"))
        prefix = RedisKeys.popular_items(ctx.version, "", "")[:-1]
        lists = ctx.cache(ranked_lists(rows, ["scope", "name", "window"], cap)
                          .select(F.concat(F.lit(prefix), logical).alias("redis_key"),
                                  logical.alias("logical_key"), "scope", "items"))
        written = write_lists(lists, ListWriter(ctx.settings, ctx.version, int(time.time() * 1000)))
        watch.lap("rank and write")
        top_key = f"global:{GLOBAL_NAME}@all"
        meta = lists.select("redis_key", "scope", F.size("items").alias("entries"),
                            F.when(F.col("logical_key") == top_key, F.slice("items", 1, 5)).alias("top")
                            ).collect()
        self.verify(ctx, [r["redis_key"] for r in meta])
        watch.lap("verify")
        lists_by_scope: dict[str, int] = {}
        entries_by_scope: dict[str, int] = {}
        top_items: list[tuple[str, int]] = []
        for r in meta:
            lists_by_scope[r["scope"]] = lists_by_scope.get(r["scope"], 0) + 1
            entries_by_scope[r["scope"]] = entries_by_scope.get(r["scope"], 0) + int(r["entries"])
            if r["top"] is not None:
                top_items = [(i["item_id"], int(i["score"])) for i in r["top"]]
        return JobResult(
            job=self.name, dataset=self.dataset, version=ctx.version, rows_in=rows_in, rows_out=written,
            details={
                "measure": POPULARITY_MEASURE,
                "windows": list(WINDOWS),
                "lists_by_scope": lists_by_scope,
                "entries_by_scope": entries_by_scope,
                "top_global_all": top_items,
                "example_key": RedisKeys.popular_items(ctx.version, "global", f"{GLOBAL_NAME}@30d"),
            },
        )

    def verify(self, ctx: JobContext, keys: list[str]) -> None:
        """The last step before the switch (tests override it to fail there)."""
        verify_written(ctx.settings, keys)


if __name__ == "__main__":
    from spark_jobs.runner import job_main  # the entry's typer and rich: not for executors

    raise SystemExit(job_main([PopularityJob()]))
