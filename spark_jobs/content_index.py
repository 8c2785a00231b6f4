"""The content inverted indexes: description term, derived category and price band -> items, each
posting list ranked by recent popularity, as `ScoredItemList`s under `fg:index:{version}:{field}:{value}`,
plus one directory per field (`fg:index:{version}:directory:{field}`) naming every value written.

Ranking: distinct buyers in the 30 days before the as-of date (the list's scores), ties by distinct
buyers over all the data before it, then by item id: the measure of the popularity job
(`spark_jobs.popularity`), so "best sellers in term X" agrees with the best-seller lists. Measured on
the reference split (2010-11-10) as a ranking of all items, 30-day buyers and 30-day purchase lines are
level (Recall@20 0.0979 vs 0.0981, NDCG@20 0.1472 vs 0.1482).

Which terms are indexed (`select_terms`):
- **Colour and pattern words are left out** (`finegrain.features.catalog.COLOUR_AND_PATTERN_WORDS`,
  the words the category derivation skips). They mark variants of a product ("LUNCH BAG PINK"), so
  "pink" lists unrelated product types. Measured on the reference split: offer each evaluated user the
  top 10 of each of their 5 most-bought terms' lists and compare the hits with the global top 10's for
  the same users. Pooled over users, colour terms hit 0.67 times as often as the global list, other
  terms 1.01 times; every colour with at least 40 such users is below 1 (blue 0.44 to white 0.86),
  while product terms spread around 1 (garden 0.05, christmas 0.65, heart 1.0, lunch 2.6; median 0.98).
  Colour, if rules need it, belongs in its own field, not among the terms.
- **Terms on more than `MAX_TERM_SHARE` of the items are dropped**: at that breadth a term is a stop
  word of this catalogue. On the real data the stop-word list and the colour rule already leave none
  (the broadest, "glass", is on 5% of the items); the cap guards other catalogues, where a brand or a
  generic word may sit on most items.
- **Terms on a single item are dropped** (727 of 1,959 terms at 2010-12-10, mostly typos and glued
  words: "braclet", "blackchristmas"): their list is the item itself, which recalls nothing new and
  filters nothing.
- The category "other" (rare product types grouped together, 22% of the items) is not a category and
  gets no list; every price band does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from finegrain.features.catalog import COLOUR_AND_PATTERN_WORDS, OTHER_CATEGORY
from finegrain.storage.contract import Dataset, RedisKeys
from spark_jobs.base import BatchJob, JobContext, JobResult, Stopwatch, verify_written
from spark_jobs.popularity import (
    ListWriter,
    item_popularity,
    ranked_lists,
    write_lists,
)

FIELDS = ("term", "category", "price_band")
RECENT_WINDOW = "30d"
LONG_WINDOW = "all"
MAX_TERM_SHARE = 0.10
MIN_TERM_ITEMS = 2


@dataclass(frozen=True)
class TermSelection:
    kept: frozenset[str]
    colour_words: frozenset[str]
    too_common: frozenset[str]
    single_item: frozenset[str]


def select_terms(document_frequency: Mapping[str, int], n_items: int, max_share: float = MAX_TERM_SHARE,
                 min_items: int = MIN_TERM_ITEMS) -> TermSelection:
    """Split the description terms into the indexed ones and the dropped ones, by reason."""
    if n_items <= 0:
        raise ValueError("no items to index")
    colour = frozenset(t for t in document_frequency if t in COLOUR_AND_PATTERN_WORDS)
    too_common = frozenset(t for t, df in document_frequency.items()
                           if t not in colour and df > max_share * n_items)
    single = frozenset(t for t, df in document_frequency.items()
                       if t not in colour and t not in too_common and df < min_items)
    kept = frozenset(document_frequency) - colour - too_common - single
    return TermSelection(kept=kept, colour_words=colour, too_common=too_common, single_item=single)


class ContentIndexJob(BatchJob):
    name = "content_index"
    dataset = Dataset.INDEX
    description = "Inverted indexes term/category/price band -> items, ranked by recent popularity"

    def build(self, ctx: JobContext, watch: Stopwatch) -> JobResult:
        from pyspark.sql import functions as F

        from spark_jobs.item_attributes import item_attributes

        events = ctx.cache(ctx.events().select("user_id", "item_id", "timestamp", "description", "price"))
        rows_in = events.count()
        if rows_in == 0:
            raise ctx.no_events("index")
        watch.lap("read events")
        attributes = ctx.cache(item_attributes(events).select("item_id", "category", "price_band", "terms"))
        n_items = attributes.count()
        item_terms = attributes.select("item_id", F.explode(F.array_distinct("terms")).alias("value"))
        document_frequency = {r["value"]: int(r["count"])
                              for r in item_terms.groupBy("value").count().collect()}
        selection = select_terms(document_frequency, n_items)
        kept = ctx.spark.createDataFrame([(t,) for t in sorted(selection.kept)], "value string")
        watch.lap("item attributes and terms")

        postings = (
            item_terms.join(F.broadcast(kept), "value")
            .select(F.lit("term").alias("field"), "value", "item_id")
            .unionByName(attributes.where(F.col("category") != OTHER_CATEGORY)
                         .select(F.lit("category").alias("field"), F.col("category").alias("value"),
                                 "item_id"))
            .unionByName(attributes.select(F.lit("price_band").alias("field"),
                                           F.col("price_band").cast("string").alias("value"), "item_id"))
        )
        popularity = item_popularity(events, ctx.as_of).select(
            "item_id", F.col(f"buyers_{RECENT_WINDOW}").alias("score"),
            F.col(f"buyers_{LONG_WINDOW}").alias("tie"))
        scored = postings.join(popularity, "item_id", "left").fillna(0, ["score", "tie"])
        ranked = ctx.cache(ranked_lists(scored, ["field", "value"]).select("field", "value", "items"))
        prefix = RedisKeys.versioned_prefix(self.dataset, ctx.version)
        logical = F.concat_ws(":", "field", "value")
        writer = ListWriter(ctx.settings, ctx.version, int(time.time() * 1000))
        written = write_lists(ranked.select(F.concat(F.lit(prefix), logical).alias("redis_key"),
                                            logical.alias("logical_key"), "items"), writer)
        # The directory is itself a ranked list: values as ids, posting sizes as scores, largest first.
        sizes = ranked.select("field", F.col("value").alias("item_id"), F.size("items").alias("score"),
                              F.lit(0).alias("tie"))
        written += write_lists(ranked_lists(sizes, ["field"]).select(
            F.concat(F.lit(f"{prefix}directory:"), "field").alias("redis_key"),
            F.concat(F.lit("directory:"), "field").alias("logical_key"), "items"), writer)
        watch.lap("rank and write")
        listed = sizes.select("field", "item_id", "score").collect()
        fields = sorted({r["field"] for r in listed})
        self.verify(ctx, [RedisKeys.index_postings(ctx.version, r["field"], r["item_id"]) for r in listed]
                    + [RedisKeys.index_directory(ctx.version, f) for f in fields])
        watch.lap("verify")
        return JobResult(
            job=self.name, dataset=self.dataset, version=ctx.version, rows_in=rows_in, rows_out=written,
            details={
                "items": n_items,
                "lists": {f: sum(1 for r in listed if r["field"] == f) for f in FIELDS},
                "postings": {f: sum(int(r["score"]) for r in listed if r["field"] == f) for f in FIELDS},
                "terms_seen": len(document_frequency),
                "terms_dropped": {"colour_or_pattern": len(selection.colour_words),
                                  "too_common": sorted(selection.too_common),
                                  "single_item": len(selection.single_item)},
                "ranking": f"distinct buyers {RECENT_WINDOW}, then {LONG_WINDOW}, then item id",
                "directory_keys": [RedisKeys.index_directory(ctx.version, f) for f in fields],
            },
        )

    def verify(self, ctx: JobContext, keys: list[str]) -> None:
        """The last step before the switch (tests override it to fail there)."""
        verify_written(ctx.settings, keys)


if __name__ == "__main__":
    from spark_jobs.runner import job_main  # the entry's typer and rich: not for executors

    raise SystemExit(job_main([ContentIndexJob()]))
