"""Ranked item lists (`ScoredItemList`) as stored in Redis (postings, neighbours, popularity, caches), and
as held in memory (`RankedList`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from finegrain.codecs import decode, encode
from finegrain.schemas import ScoredItemList
from finegrain.storage.contract import Dataset, RedisKeys


@dataclass(frozen=True)
class RankedList:
    """A ranked list in memory, best first: what a `ScoredItemList` holds, as NumPy arrays."""

    item_ids: np.ndarray  # object (str)
    scores: np.ndarray  # float64

    @classmethod
    def of(cls, message: ScoredItemList) -> RankedList:
        return cls(np.asarray(list(message.item_ids), dtype=object),
                   np.asarray(list(message.scores), dtype=np.float64))


EMPTY_LIST = RankedList(np.empty(0, dtype=object), np.empty(0))


def scored_list(
    key: str,
    version: str,
    item_ids: Sequence[str],
    scores: Sequence[float],
    channel: str | None = None,
    generated_ms: int = 0,
) -> bytes:
    """Encode one single-channel list; item_ids and scores are parallel, best first."""
    if len(item_ids) != len(scores):
        raise ValueError(f"{key}: {len(item_ids)} items but {len(scores)} scores")
    message = ScoredItemList(
        key=key,
        version=version,
        item_ids=item_ids,
        scores=scores,
        channels=[channel] if channel else [],
        generated_ms=generated_ms,
    )
    return encode(message)


def read_list(client: redis.Redis, key: str) -> ScoredItemList | None:
    data = client.get(key)
    return None if data is None else decode(ScoredItemList, bytes(data))  # type: ignore[arg-type]


def current_version(client: redis.Redis, dataset: Dataset) -> str | None:
    value = client.get(RedisKeys.pointer(dataset))
    return None if value is None else bytes(value).decode()  # type: ignore[arg-type]
