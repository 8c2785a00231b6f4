"""Item features: `ItemFeatures` of many items from their purchase lines before an as-of time, and the
numeric vector of each item that serving keeps in memory as `ItemFeatureMatrix` blocks.

`item_features` is the single definition; the features job applies it to groups of items inside Spark
(`applyInPandas`), and the training-set builder calls it on the lines it holds. Serving and training
read the numbers through `item_feature_vector`, in the order of `ITEM_FEATURE_NAMES`.

Definitions (all over the lines strictly before the as-of time):
- popularity over `ITEM_WINDOWS_DAYS` days: purchase lines in the window before the as-of time;
- distinct buyers; repurchase rate = share of buyers who bought the item on more than one (UTC) day;
- trend = the 7-day daily rate over the 30-day daily rate (`trend`), 0 when the item sold nothing in
  30 days (then it sold nothing in 7 either: no trend to speak of, and no division by zero);
- first / last seen (epoch ms), units sold, revenue (sum of quantity x price);
- description, price, price band, category, terms: the item attributes as of the same date
  (`spark_jobs.item_attributes`); an item missing from them gets its median line price, the band of
  that price, the catch-all category and no description or terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from finegrain.dates import DAY_MS, AsOf, as_of_ms
from finegrain.features.catalog import OTHER_CATEGORY, price_band
from finegrain.features.history import columns_before
from finegrain.schemas import ItemFeatureMatrix, ItemFeatures

ITEM_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
ITEM_BLOCK_SIZE = 512

# The numeric item features serving and the rankers read, in this order (the columns of every
# ItemFeatureMatrix). Times are ages in days at the as-of time, so they fit a float32 and mean the same
# thing for any snapshot. Append new names at the end; a reader maps by name, not position.
ITEM_FEATURE_NAMES: tuple[str, ...] = (
    "price",
    "price_band",
    "popularity_7d",
    "popularity_30d",
    "popularity_90d",
    "distinct_buyers",
    "repurchase_rate",
    "trend",
    "units_sold",
    "revenue",
    "days_since_first_seen",
    "days_since_last_seen",
)

STATS_COLUMNS: tuple[str, ...] = (
    "popularity_7d", "popularity_30d", "popularity_90d", "distinct_buyers", "repurchase_rate", "trend",
    "units_sold", "revenue", "first_seen_ms", "last_seen_ms", "median_price",
)


def trend(popularity_7d: float, popularity_30d: float) -> float:
    """Daily sales rate of the last 7 days relative to that of the last 30 (1 = steady, >1 = rising)."""
    if popularity_30d <= 0:
        return 0.0
    return (popularity_7d / 7.0) / (popularity_30d / 30.0)


def item_stats(lines: pd.DataFrame, as_of: AsOf) -> pd.DataFrame:
    """Behavioural statistics of every item in the lines: one row per item_id (sorted), `STATS_COLUMNS`."""
    cutoff = as_of_ms(as_of)
    columns, timestamps = columns_before(lines, cutoff, ("item_id", "user_id", "quantity", "price"))
    quantity = columns["quantity"].astype(np.int64)
    price = columns["price"].astype(np.float64)
    frame = pd.DataFrame({
        "item_id": columns["item_id"],
        "user_id": columns["user_id"],
        "ts": timestamps,
        "day": timestamps // DAY_MS,
        "quantity": quantity,
        "revenue": quantity * price,
        "price": price,
        **{f"in_{days}d": timestamps >= cutoff - days * DAY_MS for days in ITEM_WINDOWS_DAYS},
    })
    grouped = frame.groupby("item_id", sort=True)
    stats = grouped.agg(
        **{f"popularity_{days}d": (f"in_{days}d", "sum") for days in ITEM_WINDOWS_DAYS},
        distinct_buyers=("user_id", "nunique"),
        units_sold=("quantity", "sum"),
        revenue=("revenue", "sum"),
        first_seen_ms=("ts", "min"),
        last_seen_ms=("ts", "max"),
        median_price=("price", "median"),
    )
    days_per_buyer = frame.groupby(["item_id", "user_id"], sort=False)["day"].nunique()
    stats["repurchase_rate"] = (days_per_buyer > 1).groupby(level="item_id").mean()
    stats["trend"] = [trend(p7, p30) for p7, p30 in zip(stats["popularity_7d"], stats["popularity_30d"],
                                                        strict=True)]
    return stats[list(STATS_COLUMNS)]


def item_features(lines: pd.DataFrame, as_of: AsOf, attributes: pd.DataFrame | None = None, *,
                  version: str = "") -> list[ItemFeatures]:
    """`ItemFeatures` of every item with a line before the as-of time, in order of item id.

    `attributes`: item_id, description, price, price_band, category, terms (extra rows are ignored)."""
    cutoff = as_of_ms(as_of)
    stats = item_stats(lines, as_of)
    known = {} if attributes is None else {
        str(row.item_id): row for row in attributes.itertuples(index=False)
    }
    features = []
    for item_id, row in zip(stats.index, stats.itertuples(index=False), strict=True):
        attribute = known.get(str(item_id))
        if attribute is not None:
            description, price, band = str(attribute.description or ""), float(attribute.price), \
                int(attribute.price_band)
            category, terms = str(attribute.category), [str(t) for t in attribute.terms]
        else:
            description, price, category, terms = "", float(row.median_price), OTHER_CATEGORY, []
            band = price_band(price)
        features.append(ItemFeatures(
            item_id=str(item_id), description=description, price=price, price_band=band,
            category=category, terms=terms,
            popularity_7d=int(row.popularity_7d), popularity_30d=int(row.popularity_30d),
            popularity_90d=int(row.popularity_90d), distinct_buyers=int(row.distinct_buyers),
            repurchase_rate=float(row.repurchase_rate), trend=float(row.trend),
            first_seen_ms=int(row.first_seen_ms), last_seen_ms=int(row.last_seen_ms), as_of_ms=cutoff,
            units_sold=int(row.units_sold), revenue=float(row.revenue), version=version,
        ))
    return features


def item_feature_vector(item: ItemFeatures) -> list[float]:
    """The numbers of one item, in the order of `ITEM_FEATURE_NAMES`."""
    return [
        item.price,
        float(item.price_band),
        float(item.popularity_7d),
        float(item.popularity_30d),
        float(item.popularity_90d),
        float(item.distinct_buyers),
        item.repurchase_rate,
        item.trend,
        float(item.units_sold),
        item.revenue,
        (item.as_of_ms - item.first_seen_ms) / DAY_MS,
        (item.as_of_ms - item.last_seen_ms) / DAY_MS,
    ]


def item_feature_matrix(item_ids: Sequence[str], vectors: Sequence[Sequence[float]], *, version: str,
                        as_of_ms: int) -> ItemFeatureMatrix:
    """One block of items, row-major in the order of `ITEM_FEATURE_NAMES`."""
    width = len(ITEM_FEATURE_NAMES)
    if len(item_ids) != len(vectors) or any(len(v) != width for v in vectors):
        raise ValueError(f"{len(item_ids)} items need as many vectors of {width} values")
    values = np.asarray(vectors, dtype=np.float32).reshape(-1) if len(vectors) else np.zeros(0, np.float32)
    return ItemFeatureMatrix(version=version, as_of_ms=as_of_ms, feature_names=ITEM_FEATURE_NAMES,
                             item_ids=item_ids, values=values.tolist())


def matrix_rows(matrix: ItemFeatureMatrix) -> tuple[list[str], np.ndarray]:
    """A block back as (item ids, float32 array of shape items x features)."""
    values = np.asarray(matrix.values, dtype=np.float32)
    return list(matrix.item_ids), values.reshape(len(matrix.item_ids), len(matrix.feature_names))
