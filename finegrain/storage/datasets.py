"""Switching a batch dataset to a new version everywhere serving looks: the Redis pointer (what
requests read), the ZooKeeper znode (what tells the workers to reload), then pruning old versions."""

from __future__ import annotations

from finegrain.settings import Settings
from finegrain.storage.clients import redis_client, zookeeper_client
from finegrain.storage.contract import Dataset, ZkPaths
from finegrain.storage.redis_versions import RedisVersions


def switch_dataset(settings: Settings, dataset: Dataset, version: str) -> str | None:
    """Make `version` current; returns the version it replaced. Keeps one older version for rollback."""
    versions = RedisVersions(redis_client(settings))
    previous = versions.switch(dataset, version)
    zk = zookeeper_client(settings)
    try:
        path = ZkPaths(settings.zookeeper_root).dataset(dataset)
        zk.ensure_path(path)
        zk.set(path, version.encode())
    finally:
        zk.stop()
        zk.close()
    versions.prune(dataset)
    return previous


def rollback_dataset(settings: Settings, dataset: Dataset) -> tuple[str | None, str]:
    """Switch back to the version before the current one; returns (from, to)."""
    versions = RedisVersions(redis_client(settings))
    current = versions.current(dataset)
    earlier = [v for v in versions.history(dataset) if v != current]
    if not earlier:
        raise ValueError(f"{dataset}: no earlier version kept to roll back to")
    switch_dataset(settings, dataset, earlier[-1])
    return current, earlier[-1]
