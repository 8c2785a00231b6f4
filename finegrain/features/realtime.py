"""The real-time profile: what a user did in the last minutes, folded from behaviour events.

One definition, called by the streaming sidecar (events from Kafka, profile in Redis) and by
anything that needs the profile a user had at a past instant (`profile_as_of`: the same fold over the
actions before it). Every time is event time, never the wall clock, so folding the same actions again
gives the same profile, whatever the micro-batches were.

What a profile holds (`RealtimeProfile`, `proto/finegrain/schemas/profiles.proto`):
- `recent`: the last `max_recent` actions (item, type, time), newest first;
- a sliding window of `window_ms` before the newest event: per-minute `buckets` of counts by type and
  their sum `counts_by_type`;
- `term_affinity` / `category_affinity`: the action weights of the items acted on, spread over their
  description terms and category, halved every `affinity_half_life_ms`, the `max_affinities` largest
  kept;
- the session: the client's `session_id` when it sends one, else actions less than `session_gap_ms`
  apart; `session_items` are its distinct items, newest first;
- `applied_offsets`: per partition of the events topic, the last offset folded in. Events are keyed
  by user, so a user's events come from one partition in offset order: an action at or below the
  applied offset has been counted and is skipped. That makes re-applying a replayed micro-batch a no-op
  (the exactly-once effect on profiles; `docs/streaming.md`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd

from finegrain.dates import AsOf, as_of_ms
from finegrain.features.history import epoch_ms
from finegrain.features.user import ItemLookup
from finegrain.schemas import ActionCounts, EventType, RealtimeProfile, RecentAction

# How much an action says about what the user wants next: a cart add most, a purchase little (the item
# is bought already). Real-time recall seeds with the same weights.
ACTION_WEIGHT: Mapping[int, float] = {EventType.VIEW: 1.0, EventType.CLICK: 1.5, EventType.ADD_TO_CART: 3.0,
                                      EventType.PURCHASE: 1.0}
MINUTE_MS = 60_000


@dataclass(frozen=True)
class RealtimeConfig:
    """The real-time profile's bounds and time constants."""

    max_recent: int = 50
    """Actions kept in `recent`."""
    window_ms: int = 30 * MINUTE_MS
    """Length of the sliding window of counts."""
    affinity_half_life_ms: int = 60 * MINUTE_MS
    """An action's weight in the affinities halves after this long."""
    max_affinities: int = 20
    """Terms (and categories) kept, the largest weights."""
    session_gap_ms: int = 30 * MINUTE_MS
    """Without a client session id, a pause this long starts a new session."""
    max_session_items: int = 50
    """Items kept of the current session."""
    ttl_s: int = 7 * 24 * 3600
    """How long Redis keeps a profile after its last update."""


@dataclass(frozen=True)
class Action:
    """One accepted behaviour event as the fold reads it; `partition` / `offset` locate it in the
    events topic (-1: not from Kafka, e.g. a profile rebuilt from the archive)."""

    item_id: str
    type: int
    timestamp_ms: int
    session_id: str = ""
    partition: int = -1
    offset: int = -1


def fold(profile: RealtimeProfile | None, user_id: str, actions: Iterable[Action], items: ItemLookup | None,
         config: RealtimeConfig) -> RealtimeProfile:
    """The profile after `actions` (a new message; `profile` is left as it was). Actions already
    folded in (at or below their partition's applied offset) are skipped."""
    out = RealtimeProfile()
    if profile is not None:
        out.CopyFrom(profile)
    out.user_id = user_id
    applied = dict(out.applied_offsets)
    fresh = [a for a in actions if a.offset < 0 or a.offset > applied.get(a.partition, -1)]
    if not fresh:
        return out
    fresh.sort(key=lambda a: (a.timestamp_ms, a.partition, a.offset))
    for action in fresh:
        if action.partition >= 0:
            applied[action.partition] = max(applied.get(action.partition, -1), action.offset)
    _fold_recent(out, fresh, config)
    _fold_affinities(out, fresh, items, config)
    _fold_session(out, fresh, config)
    out.updated_ms = max(out.updated_ms, fresh[-1].timestamp_ms)
    _fold_window(out, fresh, config)
    out.applied_offsets.clear()
    out.applied_offsets.update(applied)
    return out


def profile_as_of(user_id: str, actions: Iterable[Action], as_of_ms: int, items: ItemLookup | None,
                  config: RealtimeConfig) -> RealtimeProfile | None:
    """The profile the user had at `as_of_ms`: the fold of their actions strictly before it (None if
    none), the point-in-time twin of what the sidecar keeps."""
    before = [a for a in actions if a.timestamp_ms < as_of_ms]
    return fold(None, user_id, before, items, config) if before else None


def _fold_recent(out: RealtimeProfile, fresh: Sequence[Action], config: RealtimeConfig) -> None:
    # Oldest first: the stored ones (kept newest first), then the fresh ones in topic order. Among
    # equal times (the lines of one basket) the one folded later counts as the newer.
    merged: list[tuple[int, str, int]] = [(a.timestamp_ms, a.item_id, int(a.type))
                                          for a in reversed(out.recent)]
    merged += [(a.timestamp_ms, a.item_id, a.type) for a in fresh]
    merged = [entry for _, entry in sorted(enumerate(merged), key=lambda e: (e[1][0], e[0]), reverse=True)]
    del out.recent[:]
    out.recent.extend(RecentAction(item_id=item, type=cast(EventType, kind), timestamp_ms=ts)
                      for ts, item, kind in merged[:config.max_recent])


def _fold_window(out: RealtimeProfile, fresh: Sequence[Action], config: RealtimeConfig) -> None:
    """Add the fresh actions to their minute buckets, then drop the buckets that slid out."""
    buckets: dict[int, dict[int, int]] = defaultdict(dict)
    for bucket in out.buckets:
        buckets[bucket.start_ms] = dict(bucket.counts)
    for action in fresh:
        counts = buckets[action.timestamp_ms - action.timestamp_ms % MINUTE_MS]
        counts[action.type] = counts.get(action.type, 0) + 1
    start = out.updated_ms - config.window_ms
    kept = sorted((minute, counts) for minute, counts in buckets.items() if minute + MINUTE_MS > start)
    del out.buckets[:]
    totals: dict[int, int] = defaultdict(int)
    for minute, counts in kept:
        out.buckets.append(ActionCounts(start_ms=minute, counts=counts))
        for kind, n in counts.items():
            totals[kind] += n
    out.counts_by_type.clear()
    out.counts_by_type.update(totals)
    out.window_start_ms = start


def _decay(weights: Mapping[str, float], from_ms: int, to_ms: int, half_life_ms: int) -> dict[str, float]:
    factor = math.exp2(-max(to_ms - from_ms, 0) / half_life_ms)
    return {key: value * factor for key, value in weights.items()}


def _fold_affinities(out: RealtimeProfile, fresh: Sequence[Action], items: ItemLookup | None,
                     config: RealtimeConfig) -> None:
    if items is None:
        return
    terms = dict(out.term_affinity)
    categories = dict(out.category_affinity)
    at = out.updated_ms
    for action in fresh:
        if action.timestamp_ms > at:
            terms = _decay(terms, at, action.timestamp_ms, config.affinity_half_life_ms)
            categories = _decay(categories, at, action.timestamp_ms, config.affinity_half_life_ms)
            at = action.timestamp_ms
        # An action older than the profile counts as much as it would have then, decayed to now.
        weight = ACTION_WEIGHT.get(action.type, 1.0) * math.exp2(
            -max(at - action.timestamp_ms, 0) / config.affinity_half_life_ms)
        item_terms = items.terms.get(action.item_id, ())
        for term in item_terms:
            terms[term] = terms.get(term, 0.0) + weight / len(item_terms)
        category = items.category.get(action.item_id)
        if category:
            categories[category] = categories.get(category, 0.0) + weight
    for field, weights in ((out.term_affinity, terms), (out.category_affinity, categories)):
        field.clear()
        best = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:config.max_affinities]
        field.update(best)


def _fold_session(out: RealtimeProfile, fresh: Sequence[Action], config: RealtimeConfig) -> None:
    session, last = out.session_id, out.updated_ms
    items = list(out.session_items)
    for action in fresh:
        if action.session_id:
            current = action.session_id
        elif session.startswith("gap:") and action.timestamp_ms - last < config.session_gap_ms:
            current = session
        else:
            current = f"gap:{action.timestamp_ms}"
        if current != session and action.timestamp_ms >= last:
            session, items = current, []
        if current == session:
            items = [action.item_id, *(i for i in items if i != action.item_id)]
        last = max(last, action.timestamp_ms)
    out.session_id = session
    del out.session_items[:]
    out.session_items.extend(items[:config.max_session_items])


# Actions older than this many half-lives before the newest one weigh under 1e-7 in the affinities:
# `realtime_profiles` leaves them out (beyond the last `max_recent`), which keeps a wholesaler's years of
# lines from costing a Python loop each at every training cut-off.
NEGLIGIBLE_HALF_LIVES = 24


def realtime_profiles(lines: pd.DataFrame, as_of: AsOf, items: ItemLookup | None, config: RealtimeConfig
                      ) -> dict[str, RealtimeProfile]:
    """The real-time profile every user of these purchase lines had at `as_of` (lines at or after it
    are ignored): the point-in-time twin of what the sidecar keeps, for training sets. Purchases are the
    only actions a purchase log holds, so offline profiles are made of purchases."""
    cutoff = as_of_ms(as_of)
    timestamps = epoch_ms(lines["timestamp"])
    keep = timestamps < cutoff
    users = lines["user_id"].to_numpy()[keep].astype(str)
    item_ids = lines["item_id"].to_numpy()[keep].astype(str)
    times = timestamps[keep]
    horizon = max(config.window_ms, NEGLIGIBLE_HALF_LIVES * config.affinity_half_life_ms)
    profiles: dict[str, RealtimeProfile] = {}
    order = np.argsort(users, kind="stable")  # stable: each user's lines stay in the frame's order
    boundaries = np.flatnonzero(users[order][1:] != users[order][:-1]) + 1
    for group in np.split(order, boundaries):
        if not len(group):
            continue
        newest = int(times[group].max())
        recent_cut = np.sort(times[group])[-config.max_recent] if len(group) > config.max_recent else newest
        chosen = group[(times[group] >= newest - horizon) | (times[group] >= recent_cut)]
        actions = [Action(item_ids[i], int(EventType.PURCHASE), int(times[i])) for i in chosen]
        profiles[str(users[group[0]])] = fold(None, str(users[group[0]]), actions, items, config)
    return profiles
