"""Item attributes as of a date, derived from the events (not the all-time catalogue, which would leak
later prices and descriptions into a backfill): description, median price, category, price band, terms.
Shared by the jobs that need them, computed with the core package's feature definitions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finegrain.features.catalog import item_attributes_frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def item_attributes(events: DataFrame) -> DataFrame:
    """One row per item: item_id, description, price, category, price_band, terms (array<string>)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    descriptions = (
        events.where(F.col("description").isNotNull() & (F.length("description") > 0))
        .groupBy("item_id", "description")
        .count()
        .withColumn(
            "rank",
            F.row_number().over(Window.partitionBy("item_id").orderBy(F.desc("count"), F.asc("description"))),
        )
        .where("rank = 1")
        .select("item_id", "description")
    )
    # The exact median, as the pandas definition (`item_attributes_as_of`) takes it: an approximate one
    # merges per-partition summaries, so past a few thousand lines an item's price would depend on how
    # the events happen to be partitioned (local or cluster, how many cores).
    prices = events.groupBy("item_id").agg(F.median("price").alias("price"))
    # A few thousand rows (tens of thousands at 10x): the category needs corpus-wide counts, so it is
    # computed on the driver with the same functions serving uses.
    frame = item_attributes_frame(prices.join(descriptions, "item_id", "left").toPandas())
    return events.sparkSession.createDataFrame(frame)
