"""Merge and filter: one candidate set from the recall channels' lists, for serving and the evaluation.

`merge` runs once per request on about a thousand candidates, so it is a handful of NumPy passes over
the concatenated lists, with no Python loop per candidate:

1. Filters first: items in `exclude` (e.g. already bought, when the scene asks for discovery) and
   items `known` rejects (out of catalogue) are dropped from every list before any quota is counted,
   so a channel whose best items are filtered still fills its quota with its next ones.
2. Quotas: each channel contributes its first `quotas[channel]` remaining items, in its own order.
   An item that several channels bring is kept once, with the scores of all of them; it uses up a
   place in the quota of every channel that brought it within its quota (the quota bounds what the
   channel puts in the set, not what the set holds of it).
3. Fill: the remaining room (up to `total`) goes round-robin to the channels' best leftovers: every
   channel's first item past its quota, then every channel's second, and so on, in `CHANNELS` order
   within a round. Channels without a quota (absent from `quotas`) take part in the fill only.
4. Order of the result: the quota phase then the fill, each round-robin by position in the channels'
   lists: a cut of the first n candidates is still balanced across channels. When the quotas alone
   add up to more than `total`, that order decides which quota items are cut.

The result keeps, per item, every channel's score (0 where the channel did not bring it) and a channel
bitmask: bit i = `CHANNELS[i]`, the dictionary `ScoredItemList.channels` / `channel_mask` use, so a
response can say why each item was recalled. The mask, not the score, says whether a channel brought
an item (a channel's score may legitimately be 0 or negative).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finegrain.schemas import ScoredItemList

# Bit order of `channel_mask`; never reorder, only append (stored lists and logs depend on it).
CHANNELS: tuple[str, ...] = ("content", "item_to_item", "embedding", "rule", "realtime", "popular")
DEFAULT_TOTAL = 1000

ChannelLists = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class MergedCandidates:
    """The merged candidates in merge order: `scores[i, c]` is `CHANNELS[c]`'s score of `item_ids[i]`
    (0 when that channel did not bring it), `channel_mask[i]` bit c set when it did."""

    item_ids: np.ndarray
    scores: np.ndarray
    channel_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def channel_scores(self, channel: str) -> np.ndarray:
        return self.scores[:, _channel_index(channel)]

    def recalled_by(self, channel: str) -> np.ndarray:
        """Boolean per item: whether `channel` brought it."""
        bit = np.uint32(1 << _channel_index(channel))
        recalled: np.ndarray = (self.channel_mask & bit) != 0
        return recalled

    def channels_of(self, position: int) -> list[str]:
        """The names of the channels that brought the item at `position` (for a response's "why")."""
        mask = int(self.channel_mask[position])
        return [name for bit, name in enumerate(CHANNELS) if mask >> bit & 1]

    def to_scored_list(self, key: str, version: str = "", generated_ms: int = 0) -> ScoredItemList:
        """As one multi-channel `ScoredItemList` (e.g. a cached candidate set); the score kept per item
        is its best channel score, the mask says which channels brought it."""
        best = self.scores.max(axis=1) if len(self) else np.empty(0)
        return ScoredItemList(key=key, version=version, generated_ms=generated_ms, channels=list(CHANNELS),
                              item_ids=[str(i) for i in self.item_ids.tolist()], scores=best.tolist(),
                              channel_mask=self.channel_mask.tolist())


def _channel_index(channel: str) -> int:
    try:
        return CHANNELS.index(channel)
    except ValueError:
        raise ValueError(f"unknown recall channel {channel!r}: one of {', '.join(CHANNELS)}") from None


def _empty() -> MergedCandidates:
    return MergedCandidates(np.empty(0, dtype=object), np.zeros((0, len(CHANNELS)), dtype=np.float32),
                            np.zeros(0, dtype=np.uint32))


def merge(channels: ChannelLists, quotas: Mapping[str, int], total: int = DEFAULT_TOTAL,
          exclude: set[str] | frozenset[str] = frozenset(),
          known: Callable[[np.ndarray], np.ndarray] | None = None) -> MergedCandidates:
    """Dedup, filter and cut the channels' lists (`name -> (item ids best first, scores)`) to at most
    `total` candidates with per-channel `quotas`; see the module docstring for the rules."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    for name, value in quotas.items():
        _channel_index(name)
        if value < 0:
            raise ValueError(f"quota of {name} must be >= 0, got {value}")
    id_parts, score_parts, channel_parts = [], [], []
    for name, (ids, scores) in channels.items():
        bit = _channel_index(name)
        ids = np.asarray(ids, dtype=object)
        scores = np.asarray(scores, dtype=np.float32)
        if ids.shape != scores.shape or ids.ndim != 1:
            raise ValueError(f"{name}: {ids.shape} item ids for {scores.shape} scores (parallel 1-D arrays)")
        id_parts.append(ids)
        score_parts.append(scores)
        channel_parts.append(np.full(len(ids), bit, dtype=np.int64))
    if not id_parts or total == 0:
        return _empty()
    ids = np.concatenate(id_parts)
    scores = np.concatenate(score_parts)
    channel = np.concatenate(channel_parts)

    # Hash-based dedup of object ids (pandas) costs a fifth of a sort of fixed-width strings, and the
    # filters then run once per distinct item instead of once per list entry.
    item, unique_ids = pd.factorize(ids)
    unique_ids = np.asarray(unique_ids, dtype=object)
    allowed = np.ones(len(unique_ids), dtype=bool)
    if exclude:
        allowed &= ~pd.Index(unique_ids).isin(list(exclude))
    if known is not None:
        mask = np.asarray(known(unique_ids), dtype=bool)
        if mask.shape != unique_ids.shape:
            raise ValueError(f"known() returned shape {mask.shape} for {unique_ids.shape} ids")
        allowed &= mask
    n_channels = len(CHANNELS)
    keep = allowed[item]
    # A channel listing an item twice keeps its first (best) entry, which alone takes a place in its list.
    keep &= ~pd.Series(item * n_channels + channel).duplicated().to_numpy()
    item, scores, channel = item[keep], scores[keep], channel[keep]
    if not len(item):
        return _empty()

    # Lists were concatenated one channel after another (in `channels`' order, not bit order), so an
    # entry's position in its own filtered list is its index minus where its channel's run starts.
    run_start = np.flatnonzero(np.concatenate([[True], channel[1:] != channel[:-1]]))
    run_length = np.diff(np.append(run_start, len(channel)))
    position = np.arange(len(item)) - np.repeat(run_start, run_length)
    quota_of = np.zeros(n_channels, dtype=np.int64)
    for name, value in quotas.items():
        quota_of[_channel_index(name)] = value
    entry_quota = quota_of[channel]
    leftover = position >= entry_quota
    round_ = np.where(leftover, position - entry_quota, position)
    # One sort key for both phases: quota entries before leftovers, then round, then channel bit.
    key = (leftover.astype(np.int64) * (len(item) + 1) + round_) * n_channels + channel
    in_order = item[np.argsort(key, kind="stable")]
    # An item's place is its first appearance in key order.
    chosen = in_order[~pd.Series(in_order).duplicated().to_numpy()][:total]

    row_of = np.full(len(unique_ids), -1, dtype=np.int64)
    row_of[chosen] = np.arange(len(chosen))
    row = row_of[item]
    kept = row >= 0
    matrix = np.zeros((len(chosen), n_channels), dtype=np.float32)
    matrix[row[kept], channel[kept]] = scores[kept]
    # (item, channel) pairs are unique by now, so summing the channels' bits is OR-ing them.
    bits = np.bincount(row[kept], weights=np.left_shift(1, channel[kept]), minlength=len(chosen))
    return MergedCandidates(unique_ids[chosen], matrix, bits.astype(np.uint32))
