"""Ranked item lists (`ScoredItemList`) as stored in Redis: postings, neighbours, popularity, caches."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from finegrain.codecs import decode, encode
from finegrain.schemas import ScoredItemList
from finegrain.storage.contract import Dataset, RedisKeys


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
