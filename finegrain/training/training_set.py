"""Ranker training sets: for each cut-off date, the candidates the recall channels would have given each
user at that moment, labelled by what the user bought in the days after, with features as of the
cut-off only.

Per cut-off c (a midnight UTC, like every as-of date):
1. `PointInTime.split` cuts the events once: `history` = purchases strictly before c, `labels` =
   purchases in [c, c + label_days). Everything downstream that computes a feature receives only
   `history` (and `CutoffInputs.build` refuses a frame holding a line at or after c), while the
   feature definitions themselves cut at c again: a feature from after the cut-off cannot be built,
   even by a caller who passes the wrong frame to `ranking_features`' inputs.
2. `CutoffInputs.build` computes, from `history`, what serving would hold as of c: item attributes
   and item features (`finegrain.features.item`), user profiles (`finegrain.features.user`), the
   cosine neighbour lists of the similarity job (`finegrain.recall.similarity`, the job's own kernels
   and caps), and the MostPop list (distinct buyers, as the popularity job ranks it).
3. Candidates per user (`finegrain.training.candidates`, the context serving reads too): the
   item-to-item channel's top `i2i_depth` over the user's whole history (repeats included,
   `finegrain.recall.item_to_item`), then the `popular_depth` most popular items (the fallback
   channel), deduplicated: about 210 per user on the real data.
4. Each candidate becomes one row of `finegrain.features.ranking.ranking_features` (the serving
   code), labelled 1 if the user bought it in the label window.
Users kept: those with a purchase before c and in the label window, the README protocol's population
(a user who buys nothing gives a group without a positive, which teaches a ranker nothing).

This module is the definition; the builders call it: `models.training_set` in pandas on one machine
(a few seconds per cut-off on the real data), `spark_jobs/training_set.py` with the per-user work
spread over Spark partitions and the cut-off's item-level inputs broadcast (the same rows, bit for
bit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from finegrain.dates import DAY_MS, as_of_ms
from finegrain.errors import DataError
from finegrain.features.catalog import item_attributes_as_of
from finegrain.features.history import epoch_ms
from finegrain.features.item import item_features
from finegrain.features.ranking import RANKING_FEATURE_NAMES, RECENT_ITEM_TO_ITEM, ItemTable, ranking_features
from finegrain.features.realtime import RealtimeConfig, realtime_profiles
from finegrain.features.user import ItemLookup, user_profiles
from finegrain.recall.item_to_item import NeighbourMatrix, score_users, seed_matrix
from finegrain.recall.realtime import realtime_scores
from finegrain.recall.similarity import SimilarityConfig, cosine_neighbours
from finegrain.schemas import RealtimeProfile, UserProfile
from finegrain.storage.lists import RankedList
from finegrain.training.candidates import CandidateConfig, candidate_context, training_candidates

# The real-time profile's constants, the sidecar's defaults: offline profiles are folded the same way.
REALTIME = RealtimeConfig()
LABEL_DAYS = 30  # a candidate is a positive if the user buys it within this many days of the cut-off


@dataclass(frozen=True)
class PointInTime:
    """One cut-off's events: `history` strictly before it, `labels` in the label window after it."""

    cutoff: date
    history: pd.DataFrame
    labels: pd.DataFrame

    @classmethod
    def split(cls, events: pd.DataFrame, cutoff: date, label_days: int = LABEL_DAYS) -> PointInTime:
        ts = epoch_ms(events["timestamp"])
        start = as_of_ms(cutoff)
        end = start + label_days * DAY_MS
        history = events.loc[ts < start]
        labels = events.loc[(ts >= start) & (ts < end), ["user_id", "item_id"]].drop_duplicates()
        if history.empty or labels.empty:
            raise DataError(f"cut-off {cutoff} leaves {len(history):,} history and {len(labels):,} label "
                            "lines (pick a date inside the data, at least one label window before its end)")
        return cls(cutoff, history, labels)


@dataclass(frozen=True)
class CutoffInputs:
    """What serving would hold as of the cut-off, computed from the history only."""

    cutoff: date
    items: ItemTable
    profiles: dict[str, UserProfile]
    neighbours: NeighbourMatrix
    popular: np.ndarray  # item ids, most distinct buyers first (ties by id)
    popular_scores: np.ndarray
    # What `user_profiles` needs about items as of the cut-off: kept so profiles can be built later,
    # elsewhere (the Spark builder builds them per partition of users).
    lookup: ItemLookup | None = None
    # The real-time profile each user had at the cut-off (no entry: none).
    realtime: dict[str, RealtimeProfile] = field(default_factory=dict)

    @classmethod
    def build(cls, history: pd.DataFrame, cutoff: date, users: Iterable[str] | None = None,
              similarity: SimilarityConfig | None = None) -> CutoffInputs:
        """`users`: whose profiles to build (all users of the history by default)."""
        start = as_of_ms(cutoff)
        if len(history) and int(epoch_ms(history["timestamp"]).max()) >= start:
            raise ValueError(f"the history for cut-off {cutoff} holds lines at or after it: features must "
                             "come from before the cut-off only (use PointInTime.split)")
        attributes = item_attributes_as_of(history)
        table = ItemTable.from_features(item_features(history, cutoff, attributes))
        lookup = ItemLookup.from_attributes(attributes)
        lines = history if users is None else history[history["user_id"].isin(set(users))]
        profiles, realtime = user_inputs(lines, cutoff, lookup)
        buyers = history.groupby("item_id")["user_id"].nunique().reset_index()
        buyers = buyers.sort_values(["user_id", "item_id"], ascending=[False, True])
        return cls(cutoff, table, profiles, cosine_neighbours(history, similarity),
                   buyers["item_id"].to_numpy(dtype=object), buyers["user_id"].to_numpy(np.float64), lookup,
                   realtime)


def user_inputs(lines: pd.DataFrame, cutoff: date, lookup: ItemLookup
                ) -> tuple[dict[str, UserProfile], dict[str, RealtimeProfile]]:
    """The offline and the real-time profile of every user of these lines as of the cut-off: what both
    builders compute per user (the pandas one for all users at once, the Spark one per partition)."""
    profiles = {p.user_id: p for p in user_profiles(lines, cutoff, lookup)}
    return profiles, realtime_profiles(lines, cutoff, lookup, REALTIME)


@dataclass
class TrainingSet:
    """Rows grouped by (cut-off, user), groups contiguous; `group_sizes` in row order."""

    features: np.ndarray  # rows x feature_names, float32
    labels: np.ndarray  # rows, 0/1
    item_ids: np.ndarray  # rows
    group_users: np.ndarray  # per group
    group_cutoffs: np.ndarray  # per group, ISO dates
    group_sizes: np.ndarray  # per group
    n_targets: np.ndarray  # per group: distinct items bought in the window (including non-candidates)
    feature_names: tuple[str, ...] = RANKING_FEATURE_NAMES
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def group_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.group_sizes)), self.group_sizes)

    def candidate_recall(self) -> float:
        """Mean over users of the share of their targets among their candidates."""
        hits = np.bincount(self.group_of_row, weights=self.labels, minlength=len(self.group_sizes))
        return float(np.mean(hits / self.n_targets))

    def summary(self) -> dict[str, object]:
        return {"rows": len(self.labels), "groups": len(self.group_sizes),
                "positives": int(self.labels.sum()), "candidates_per_user": float(self.group_sizes.mean()),
                "candidate_recall": round(self.candidate_recall(), 4),
                "cutoffs": sorted(set(self.group_cutoffs.tolist())), "seconds": self.seconds}

    def cutoff_dates(self) -> list[date]:
        return sorted(date.fromisoformat(c) for c in set(self.group_cutoffs.astype(str).tolist()))

    def select(self, cutoffs: Iterable[date]) -> TrainingSet:
        """The groups of these cut-offs only (in their order here); refused if one is missing."""
        wanted = {c.isoformat() for c in cutoffs}
        missing = sorted(wanted - set(self.group_cutoffs.astype(str).tolist()))
        if missing:
            raise DataError(f"the training set has no rows for cut-off(s) {', '.join(missing)} (it holds "
                            f"{', '.join(map(str, self.cutoff_dates()))})")
        groups = np.isin(self.group_cutoffs.astype(str), sorted(wanted))
        rows = np.repeat(groups, self.group_sizes)
        return TrainingSet(self.features[rows], self.labels[rows], self.item_ids[rows],
                           self.group_users[groups], self.group_cutoffs[groups], self.group_sizes[groups],
                           self.n_targets[groups], self.feature_names, dict(self.seconds))

    @classmethod
    def concat(cls, parts: Sequence[TrainingSet]) -> TrainingSet:
        seconds: dict[str, float] = {}
        for part in parts:
            seconds.update(part.seconds)
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(part, name) for part in parts])

        return cls(joined("features"), joined("labels"), joined("item_ids"), joined("group_users"),
                   joined("group_cutoffs"), joined("group_sizes"), joined("n_targets"), seconds=seconds)


def recall_candidates(inputs: CutoffInputs, users: Sequence[str], config: CandidateConfig
                      ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per user: (candidate item ids, recall scores per channel), item-to-item first, then popular
    items it did not recall. Histories come from the profiles, as serving reads them."""
    neighbours = inputs.neighbours
    user_parts, item_parts, time_parts, last_parts = [], [], [], []
    for row, user in enumerate(users):
        history = inputs.profiles[user].history
        index = neighbours.index(list(history.item_ids))
        known = index >= 0
        user_parts.append(np.full(int(known.sum()), row))
        item_parts.append(index[known])
        time_parts.append(np.asarray(history.times_bought, dtype=np.float64)[known])
        last_parts.append(np.asarray(history.last_bought_day, dtype=np.int64)[known])
    today = as_of_ms(inputs.cutoff) // DAY_MS
    seed_users = np.concatenate(user_parts).astype(np.int64)
    seed_items = np.concatenate(item_parts).astype(np.int64)
    times, last = np.concatenate(time_parts), np.concatenate(last_parts)
    shape = (len(users), len(neighbours.item_ids))
    seeds = seed_matrix(seed_users, seed_items, times, last, *shape, today, config.item_to_item)
    top, top_scores = score_users(seeds, neighbours, config.i2i_depth, config=config.item_to_item)
    recent_seeds = seed_matrix(seed_users, seed_items, times, last, *shape, today, RECENT_ITEM_TO_ITEM)
    # Every candidate's score, not a top k: what `score_history` with that config gives each item.
    recent = (recent_seeds @ neighbours.matrix).tocsr()
    popular = RankedList(inputs.popular.astype(str), inputs.popular_scores)
    out = []
    for row in range(len(users)):
        valid = top[row] >= 0
        item_to_item = RankedList(neighbours.item_ids[top[row][valid]].astype(str), top_scores[row][valid])
        ids = training_candidates(item_to_item, popular, config)
        recent_row = np.asarray(recent[row].toarray()).ravel()
        realtime = realtime_scores(inputs.realtime.get(users[row]), neighbours)
        context = candidate_context(ids, item_to_item, popular, recent_row, realtime, neighbours, config)
        out.append((ids, context.recall))
    return out


def rows_for_users(inputs: CutoffInputs, users: Sequence[str], labels: pd.DataFrame, config: CandidateConfig
                   ) -> TrainingSet:
    """The labelled rows of these users at the cut-off (`labels`: user_id, item_id bought after it)."""
    bought = labels.groupby("user_id")["item_id"].agg(lambda s: set(s.astype(str)))
    features, label_parts, item_parts, sizes, n_targets = [], [], [], [], []
    for user, (ids, recall) in zip(users, recall_candidates(inputs, users, config), strict=True):
        profile = inputs.profiles[user]
        features.append(ranking_features(profile, ids, recall, inputs.items, config.item_to_item,
                                         realtime=inputs.realtime.get(user)))
        targets = bought.get(user, set())
        label_parts.append(np.fromiter((i in targets for i in ids.tolist()), dtype=np.int8, count=len(ids)))
        item_parts.append(ids)
        sizes.append(len(ids))
        n_targets.append(max(len(targets), 1))
    width = len(RANKING_FEATURE_NAMES)
    return TrainingSet(
        features=np.concatenate(features) if features else np.zeros((0, width), np.float32),
        labels=np.concatenate(label_parts) if label_parts else np.zeros(0, np.int8),
        item_ids=np.concatenate(item_parts) if item_parts else np.zeros(0, object),
        group_users=np.asarray(list(users), dtype=object),
        group_cutoffs=np.full(len(users), inputs.cutoff.isoformat(), dtype=object),
        group_sizes=np.asarray(sizes, dtype=np.int64), n_targets=np.asarray(n_targets, dtype=np.int64))


def cutoff_users(point: PointInTime, max_users: int | None = None, seed: int = 0) -> np.ndarray:
    """The cut-off's users, sorted: a purchase before it and in its label window; `max_users` draws
    that many of them (the same draw for the same seed, whichever builder asks)."""
    users = np.intersect1d(point.history["user_id"].astype(str).unique(),
                           point.labels["user_id"].astype(str).unique())
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def train_cutoffs(as_of: date, count: int = 3, spacing_days: int = LABEL_DAYS) -> tuple[date, ...]:
    """The default training cut-offs of a model as of `as_of`: `count` of them, `spacing_days` apart,
    the last one label window before `as_of` (so every label window ends by it), oldest first."""
    return tuple(as_of - timedelta(days=spacing_days * k) for k in range(count, 0, -1))


def validation_cutoff(as_of: date) -> date:
    """The cut-off a model as of `as_of` is validated on: one label window before it."""
    return as_of - timedelta(days=LABEL_DAYS)


def check_cutoffs(cutoffs: Iterable[date], as_of: date, label_days: int = LABEL_DAYS) -> list[date]:
    """The cut-offs sorted, refused if none or if a label window runs past the as-of date."""
    dates = sorted(cutoffs)
    if not dates:
        raise ValueError("no cut-off date given")
    late = [d for d in dates if d + timedelta(days=label_days) > as_of]
    if late:
        raise ValueError(f"cut-off(s) {', '.join(map(str, late))}: their {label_days}-day label window runs "
                         f"past the as-of date {as_of} (it would train on the evaluation window)")
    return dates
