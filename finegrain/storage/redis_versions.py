"""Versioned batch outputs in Redis: write every key under a new version prefix, then switch the pointer.

Serving reads `fg:ptr:{dataset}` and then keys under that version only, so a half-written version is
never served. Each switch is recorded in the sorted set `fg:versions:{dataset}` (score: switch time),
and pruning deletes every version but the current and the previous one (kept for rollback).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import cast

import redis

from finegrain.storage.contract import REDIS_PREFIX, Dataset, RedisKeys, check_version
from finegrain.storage.lists import current_version

WRITE_BATCH = 2000


def versions_key(dataset: Dataset) -> str:
    return f"{REDIS_PREFIX}:versions:{dataset}"


def write_entries(client: redis.Redis, entries: Iterable[tuple[str, bytes]]) -> int:
    """Write (key, value) pairs in pipelined batches; returns how many were written."""
    written = 0
    pipe = client.pipeline(transaction=False)
    for key, value in entries:
        pipe.set(key, value)
        written += 1
        if written % WRITE_BATCH == 0:
            pipe.execute()
    pipe.execute()
    return written


class RedisVersions:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def current(self, dataset: Dataset) -> str | None:
        return current_version(self.client, dataset)

    def history(self, dataset: Dataset) -> list[str]:
        """Versions switched to, oldest first."""
        members = cast(list[bytes], self.client.zrange(versions_key(dataset), 0, -1))
        return [member.decode() for member in members]

    def switch(self, dataset: Dataset, version: str) -> str | None:
        """Point serving at `version` (one SET); returns the version it replaced."""
        check_version(version)
        pointer = RedisKeys.pointer(dataset)
        pipe = self.client.pipeline(transaction=True)
        pipe.get(pointer)
        pipe.set(pointer, version)
        pipe.zadd(versions_key(dataset), {version: time.time()})
        previous, _, _ = pipe.execute()
        return None if previous is None else bytes(previous).decode()

    def delete_version(self, dataset: Dataset, version: str) -> int:
        if version == self.current(dataset):
            raise ValueError(f"{dataset} version {version} is current; switch away from it first")
        deleted = 0
        pattern = RedisKeys.versioned_prefix(dataset, version) + "*"
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= WRITE_BATCH:
                deleted += int(self.client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self.client.unlink(*batch))
        self.client.zrem(versions_key(dataset), version)
        return deleted

    def prune(self, dataset: Dataset, keep: int = 2) -> list[str]:
        """Delete all but the newest `keep` switched versions (the current one and one for rollback).
        A run that fails before its switch deletes its own partial version (`delete_version`)."""
        history = self.history(dataset)
        current = self.current(dataset)
        kept = set(history[-keep:]) | ({current} if current else set())
        doomed = [v for v in history if v not in kept]
        for version in doomed:
            self.delete_version(dataset, version)
        return doomed
