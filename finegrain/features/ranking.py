"""The user x item feature vector the rankers read: one row per recalled candidate of one user.

`ranking_features` is the single definition. The training-set definition (`finegrain.training`) calls
it with a profile and item features computed as of each cut-off, serving calls it with the profile and
the in-memory item matrix of the current version, so training and serving cannot disagree on what a
feature means. A model stores `RANKING_FEATURE_NAMES` (its column order) next to its bytes.

Inputs, all as of one instant (the profile's `as_of_ms`):
- the user's `UserProfile` (scalars, windows, preferred categories / price band, purchase history);
- an `ItemTable`: the numeric item vectors (`ITEM_FEATURE_NAMES`, what `ItemFeatureMatrix` blocks
  hold) and, when known, each item's category;
- the recall scores of each candidate per channel (`RECALL_CHANNELS`; 0 = not recalled by it);
- the user's `RealtimeProfile` when there is one (`finegrain.features.realtime`): online the streaming
  sidecar's, offline the fold of the purchases before the cut-off (`realtime_profiles`).

Point in time: an item table built after the profile's instant is refused (its popularity would
count purchases the user had not made yet at that instant), and every user x item value is read
from the profile's history, which `finegrain.features.user` cuts at the profile's as-of time.
Unknown values (an item missing from the table, a category the table lacks) are NaN, which the
gradient-boosted ranker routes as missing, rather than a 0 that would read as "never sold".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from finegrain.dates import DAY_MS
from finegrain.features.item import ITEM_FEATURE_NAMES, item_feature_vector, matrix_rows
from finegrain.features.user import USER_WINDOWS_DAYS
from finegrain.recall.item_to_item import ItemToItemConfig, seed_weights
from finegrain.recall.realtime import own_action_weights
from finegrain.schemas import ItemFeatureMatrix, ItemFeatures, RealtimeProfile, UserProfile

RECALL_CHANNELS: tuple[str, ...] = ("item_to_item", "popularity", "item_to_item_recent", "realtime")
# The "recent" variant of the item-to-item channel: neighbours only, seeds on a short half-life, so it
# says what goes with the user's last baskets (the main channel's 90 days say what goes with the year).
RECENT_ITEM_TO_ITEM = ItemToItemConfig(half_life_days=14.0, self_weight=0.0)

_RECALL_FEATURES: tuple[str, ...] = (
    "recall_item_to_item",
    "recall_item_to_item_rank",  # 1 = the channel's best candidate for this user; NaN if not recalled
    "recall_item_to_item_share",  # score over the user's best score: comparable across users
    "recall_item_to_item_neighbours",  # the score minus the repeat term: evidence from other items
    "recall_popularity",
    "recall_item_to_item_recent",
    "recall_channels",  # how many channels recalled the candidate
    "recall_realtime",  # `finegrain.recall.realtime`: what goes with the user's latest actions
)
# From the real-time profile (`finegrain.features.realtime`): the streaming sidecar's online, the
# purchases before the cut-off offline (a purchase log holds no views or carts).
_REALTIME_FEATURES: tuple[str, ...] = (
    "realtime_own_weight",  # the user's own latest actions on the candidate, weighted by type and recency
    "realtime_category_affinity",  # the time-decayed weight of the candidate's category in the last actions
)
_USER_ITEM_FEATURES: tuple[str, ...] = (
    "bought_before",
    "times_bought",
    "days_since_bought",
    "units_bought",
    "basket_share",  # share of the user's baskets holding the item
    "days_per_purchase",  # the user's average gap between purchases of the item (repeat cycle)
    "cycle_due",  # days since bought over that gap: ~1 when a restock is due
    "days_before_last_basket",  # days between buying the item and the user's last purchase (0: in it)
    "seed_weight",  # the item-to-item channel's frequency x recency weight of a bought item
    "category_rank",  # 1 = the user's favourite category, 0 = not among the preferred ones
    "price_band_gap",  # item band - the user's preferred band
    "price_ratio",  # item price over the user's average item price
)
_USER_FEATURES: tuple[str, ...] = (
    "user_baskets",
    "user_distinct_items",
    "user_total_spend",
    "user_avg_basket_size",
    "user_avg_basket_value",
    "user_days_since_last_purchase",
    "user_days_since_first_purchase",
    *(f"user_baskets_{days}d" for days in USER_WINDOWS_DAYS),
    "user_candidates",
)
_ITEM_FEATURES: tuple[str, ...] = tuple(f"item_{name}" for name in ITEM_FEATURE_NAMES)

RANKING_FEATURE_NAMES: tuple[str, ...] = (
    _RECALL_FEATURES + _REALTIME_FEATURES + _USER_ITEM_FEATURES + _USER_FEATURES + _ITEM_FEATURES)


@dataclass(frozen=True)
class ItemTable:
    """Numeric item vectors of one snapshot, rows in sorted item id order; `categories` may be empty."""

    item_ids: np.ndarray
    values: np.ndarray  # items x len(ITEM_FEATURE_NAMES), float32
    as_of_ms: int
    categories: np.ndarray  # one per item, or length 0 when unknown

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.item_ids), len(ITEM_FEATURE_NAMES)):
            raise ValueError(f"item values have shape {self.values.shape}, expected "
                             f"({len(self.item_ids)}, {len(ITEM_FEATURE_NAMES)})")
        if len(self.categories) not in (0, len(self.item_ids)):
            raise ValueError(f"{len(self.categories)} categories for {len(self.item_ids)} items")
        if len(self.item_ids) > 1 and not (self.item_ids[1:] > self.item_ids[:-1]).all():
            raise ValueError("item ids must be sorted and distinct")

    @classmethod
    def from_features(cls, items: Iterable[ItemFeatures]) -> ItemTable:
        listed = sorted(items, key=lambda item: item.item_id)
        as_of = {item.as_of_ms for item in listed}
        if len(as_of) > 1:
            raise ValueError(f"item features of {len(as_of)} different as-of times: one snapshot only")
        values = np.asarray([item_feature_vector(item) for item in listed], dtype=np.float32)
        return cls(np.asarray([item.item_id for item in listed], dtype=object),
                   values.reshape(len(listed), len(ITEM_FEATURE_NAMES)),
                   as_of.pop() if as_of else 0,
                   np.asarray([item.category for item in listed], dtype=object))

    @classmethod
    def from_matrices(cls, blocks: Iterable[ItemFeatureMatrix],
                      categories: Mapping[str, str] | None = None) -> ItemTable:
        """From the packed blocks serving keeps in memory (columns mapped by name, not position)."""
        ids: list[str] = []
        rows: list[np.ndarray] = []
        as_of: set[int] = set()
        for block in blocks:
            block_ids, values = matrix_rows(block)
            position = {name: i for i, name in enumerate(block.feature_names)}
            missing = [name for name in ITEM_FEATURE_NAMES if name not in position]
            if missing:
                raise ValueError(f"item matrix block lacks feature(s) {', '.join(missing)}")
            ids.extend(block_ids)
            rows.append(values[:, [position[name] for name in ITEM_FEATURE_NAMES]])
            as_of.add(block.as_of_ms)
        if len(as_of) > 1:
            raise ValueError(f"item matrix blocks of {len(as_of)} different as-of times: one snapshot only")
        item_ids = np.asarray(ids, dtype=object)
        order = np.argsort(item_ids.astype(str), kind="stable")
        values = np.concatenate(rows) if rows else np.zeros((0, len(ITEM_FEATURE_NAMES)), np.float32)
        known = np.asarray([] if categories is None else [categories.get(i, "") for i in item_ids[order]],
                           dtype=object)
        return cls(item_ids[order], values[order].astype(np.float32), as_of.pop() if as_of else 0, known)

    @cached_property
    def _lookup(self) -> pd.Index:
        # A hash index: serving looks up ~1,000 ids per request, and a binary search over Python string
        # objects costs several times more.
        return pd.Index(np.asarray(self.item_ids, dtype=object))

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id; -1 for an item the table does not hold."""
        if not len(item_ids) or not len(self.item_ids):
            return np.full(len(item_ids), -1, dtype=np.int64)
        # Object keys hash as they are; converting them to a fixed-width string array costs more.
        return np.asarray(self._lookup.get_indexer(np.asarray(item_ids, dtype=object)), dtype=np.int64)


def ranking_features(profile: UserProfile, candidates: Sequence[str] | np.ndarray,
                     recall: Mapping[str, np.ndarray], items: ItemTable,
                     config: ItemToItemConfig | None = None, candidate_count: int | None = None,
                     realtime: RealtimeProfile | None = None) -> np.ndarray:
    """Candidates x `RANKING_FEATURE_NAMES` (float32) for one user.

    `recall[channel]` holds one score per candidate (0: the channel did not recall it); a channel of
    `RECALL_CHANNELS` left out counts as recalling nothing. `config` is the item-to-item channel's
    (its half-life defines `seed_weight`). `candidate_count` is `user_candidates` when it is not the
    number of rows: training recalls from item-to-item and popular items only, serving from every
    channel, so serving passes the size of that same item-to-item + popular set to keep the feature's
    meaning (and scale) what the model learnt. `realtime` is the user's real-time profile at the same
    instant (None: no recent action)."""
    if items.as_of_ms > profile.as_of_ms:
        raise ValueError(f"item features as of {items.as_of_ms} are newer than the profile "
                         f"({profile.as_of_ms}): they would leak later purchases into the features")
    unknown = set(recall) - set(RECALL_CHANNELS)
    if unknown:
        raise ValueError(f"unknown recall channel(s) {', '.join(sorted(unknown))}; known: {RECALL_CHANNELS}")
    text_ids = np.asarray(list(candidates) if not isinstance(candidates, np.ndarray) else candidates,
                          dtype=object).astype(str)  # converted once: serving calls this per request
    ids = text_ids.astype(object)
    n = len(ids)
    scores = {}
    for channel in RECALL_CHANNELS:
        values = np.asarray(recall.get(channel, np.zeros(n)), dtype=np.float64)
        if values.shape != (n,):
            raise ValueError(f"recall scores of {channel} have shape {values.shape}, expected ({n},)")
        scores[channel] = values
    out = np.full((n, len(RANKING_FEATURE_NAMES)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    column = {name: i for i, name in enumerate(RANKING_FEATURE_NAMES)}

    # Recall evidence.
    i2i = scores["item_to_item"]
    recalled = i2i > 0
    order = np.lexsort((text_ids, -i2i))
    rank = np.empty(n)
    rank[order] = np.arange(1, n + 1)
    best = i2i.max()
    out[:, column["recall_item_to_item"]] = i2i
    out[:, column["recall_item_to_item_rank"]] = np.where(recalled, rank, np.nan)
    out[:, column["recall_item_to_item_share"]] = i2i / best if best > 0 else 0.0
    out[:, column["recall_popularity"]] = scores["popularity"]
    out[:, column["recall_item_to_item_recent"]] = scores["item_to_item_recent"]
    out[:, column["recall_channels"]] = sum((s > 0).astype(np.float32) for s in scores.values())
    out[:, column["recall_realtime"]] = scores["realtime"]
    out[:, column["realtime_own_weight"]] = own_action_weights(realtime, text_ids)

    # The user's own history with each candidate.
    today = profile.as_of_ms // DAY_MS
    history = profile.history
    hist_ids = np.asarray(list(history.item_ids), dtype=str)
    times = np.asarray(history.times_bought, dtype=np.float64)
    last_day = np.asarray(history.last_bought_day, dtype=np.int64)
    units = np.asarray(history.quantity, dtype=np.float64)
    position = np.full(n, -1, dtype=np.int64)
    if len(hist_ids):
        hist_order = np.argsort(hist_ids)
        found = np.minimum(np.searchsorted(hist_ids[hist_order], text_ids), len(hist_ids) - 1)
        position = np.where(hist_ids[hist_order][found] == text_ids, hist_order[found], -1)
    bought = position >= 0
    safe = np.maximum(position, 0)
    if len(hist_ids):
        t = np.where(bought, times[safe], 0.0)
        last = np.where(bought, last_day[safe], today)
        u = np.where(bought, units[safe], 0.0)
    else:
        t, last, u = np.zeros(n), np.full(n, today), np.zeros(n)
    baskets = max(profile.baskets, 1)
    tenure = float(max(profile.days_since_first_purchase, 1))
    since = np.where(bought, today - last, np.nan)
    cycle = np.where(bought, tenure / np.maximum(t, 1.0), np.nan)
    out[:, column["bought_before"]] = bought
    out[:, column["times_bought"]] = t
    out[:, column["days_since_bought"]] = since
    out[:, column["units_bought"]] = u
    out[:, column["basket_share"]] = t / baskets
    out[:, column["days_per_purchase"]] = cycle
    out[:, column["cycle_due"]] = since / cycle
    config = config or ItemToItemConfig()
    weight = seed_weights(t, last, today, config)
    out[:, column["seed_weight"]] = weight
    out[:, column["days_before_last_basket"]] = since - profile.days_since_last_purchase
    out[:, column["recall_item_to_item_neighbours"]] = np.maximum(i2i - config.self_weight * weight, 0.0)

    # The user on their own (the same for every candidate: lets trees condition on the kind of buyer).
    windows = {w.days: w for w in profile.windows}
    user_values = {
        "user_baskets": profile.baskets,
        "user_distinct_items": profile.distinct_items,
        "user_total_spend": profile.total_spend,
        "user_avg_basket_size": profile.avg_basket_size,
        "user_avg_basket_value": profile.avg_basket_value,
        "user_days_since_last_purchase": profile.days_since_last_purchase,
        "user_days_since_first_purchase": profile.days_since_first_purchase,
        **{f"user_baskets_{days}d": (windows[days].baskets if days in windows else np.nan)
           for days in USER_WINDOWS_DAYS},
        "user_candidates": n if candidate_count is None else candidate_count,
    }
    for name, value in user_values.items():
        out[:, column[name]] = value

    # The item, and how it matches the user's taste.
    rows = items.index(ids)
    known = rows >= 0
    first_item = column[_ITEM_FEATURES[0]]
    out[known, first_item:first_item + len(_ITEM_FEATURES)] = items.values[rows[known]]
    item_price = out[:, column["item_price"]]
    out[:, column["price_band_gap"]] = out[:, column["item_price_band"]] - profile.preferred_price_band
    if profile.avg_item_price > 0:
        out[:, column["price_ratio"]] = item_price / profile.avg_item_price
    if len(items.categories):
        preferred = {category: i + 1 for i, category in enumerate(profile.preferred_categories)}
        category = items.categories[np.maximum(rows, 0)]
        out[:, column["category_rank"]] = np.where(
            known, [preferred.get(str(c), 0) for c in category], np.nan)
        affinity = dict(realtime.category_affinity) if realtime is not None else {}
        out[:, column["realtime_category_affinity"]] = np.where(
            known, [affinity.get(str(c), 0.0) for c in category], np.nan)
    return out
