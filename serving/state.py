"""What one serving worker holds in memory: a `DataSnapshot` of the current batch datasets and a
`ModelSet` of the published models. Both are immutable once built; hot swap (`serving.swap`) builds a
new one in the background and replaces the reference, so a request that started on the old one
finishes on it and no request ever sees half of each.

Everything a request needs besides the user's own profile is here, read from Redis once per version:
item features, neighbour matrices, popularity lists and content postings. The request path then makes
one Redis round trip (profile + real-time profile), which is what keeps p99 in milliseconds.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from finegrain.codecs import decode
from finegrain.features.ranking import ItemTable
from finegrain.recall.item_to_item import NeighbourMatrix, read_neighbour_lists
from finegrain.schemas import ItemFeatureMatrix, ModelManifest, ScoredItemList
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import EMPTY_LIST, RankedList, current_version

log = logging.getLogger(__name__)

SERVED_DATASETS = (Dataset.FEATURES, Dataset.INDEX, Dataset.SIMILARITY, Dataset.POPULARITY)
SIMILARITY_ALGORITHMS = ("cosine", "swing")
SCAN_BATCH = 2000


class SnapshotError(Exception):
    """A dataset version that cannot be served (missing pointer, missing keys); the old one stays."""




@dataclass(frozen=True)
class DataSnapshot:
    versions: Mapping[str, str]
    items: ItemTable
    neighbours: Mapping[str, NeighbourMatrix]
    popular: Mapping[str, RankedList]  # "scope:name@window" -> list
    postings: Mapping[tuple[str, str], ScoredItemList]  # (field, value) -> postings
    load_seconds: float
    today: int = field(init=False)  # days since the epoch of the features' as-of time

    def __post_init__(self) -> None:
        object.__setattr__(self, "today", int(self.items.as_of_ms // 86_400_000))

    def popular_list(self, name: str) -> RankedList:
        return self.popular.get(name, EMPTY_LIST)

    def known(self, item_ids: np.ndarray) -> np.ndarray:
        return self.items.index(np.asarray(item_ids, dtype=object)) >= 0

    def posting(self, field_name: str, value: str) -> ScoredItemList | None:
        return self.postings.get((field_name, value))

    def summary(self) -> dict[str, Any]:
        return {"versions": dict(self.versions), "items": len(self.items.item_ids),
                "popular_lists": len(self.popular), "postings": len(self.postings),
                "load_seconds": round(self.load_seconds, 2)}


def _scan(client: redis.Redis, prefix: str) -> Iterator[tuple[str, bytes]]:
    """Every key under a prefix with its value, in pipelined batches (SCAN never blocks the server)."""
    batch: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*", count=SCAN_BATCH):
        batch.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(batch) >= SCAN_BATCH:
            yield from zip(batch, client.mget(batch), strict=True)
            batch = []
    if batch:
        yield from zip(batch, client.mget(batch), strict=True)


def dataset_versions(client: redis.Redis) -> dict[str, str]:
    versions = {}
    for dataset in SERVED_DATASETS:
        version = current_version(client, dataset)
        if version is None:
            raise SnapshotError(f"dataset {dataset} has no current version in Redis: run the offline jobs "
                                "(`finegrain jobs run`)")
        versions[str(dataset)] = version
    return versions


def load_snapshot(client: redis.Redis, versions: Mapping[str, str] | None = None) -> DataSnapshot:
    """Read the given (default: current) versions of every served dataset from Redis."""
    started = time.perf_counter()
    versions = dict(versions or dataset_versions(client))
    features = versions[Dataset.FEATURES]
    count = client.get(RedisKeys.item_feature_block_count(features))
    if count is None:
        raise SnapshotError(f"features {features}: no item blocks (the version is incomplete or pruned)")
    block_keys = [RedisKeys.item_feature_block(features, b) for b in range(int(count))]
    values: list[bytes | None] = client.mget(block_keys)  # type: ignore[assignment]
    blocks = [decode(ItemFeatureMatrix, bytes(v)) for v in values if v is not None]
    if len(blocks) != len(block_keys):
        raise SnapshotError(f"features {features}: {len(block_keys) - len(blocks)} item block(s) missing")

    postings: dict[tuple[str, str], ScoredItemList] = {}
    index_prefix = RedisKeys.versioned_prefix(Dataset.INDEX, versions[Dataset.INDEX])
    for key, value in _scan(client, index_prefix):
        if value is None:
            continue
        field_name, _, name = key[len(index_prefix):].partition(":")
        if field_name != "directory":
            postings[(field_name, name)] = decode(ScoredItemList, bytes(value))
    categories = {item: name for (field_name, name), message in postings.items() if field_name == "category"
                  for item in message.item_ids}
    items = ItemTable.from_matrices(blocks, categories)

    popular: dict[str, RankedList] = {}
    popularity_prefix = RedisKeys.versioned_prefix(Dataset.POPULARITY, versions[Dataset.POPULARITY])
    for key, value in _scan(client, popularity_prefix):
        if value is not None:
            popular[key[len(popularity_prefix):]] = RankedList.of(decode(ScoredItemList, bytes(value)))
    if not any(name.startswith("global:") for name in popular):
        raise SnapshotError(f"popularity {versions[Dataset.POPULARITY]}: no global list")

    item_ids = [str(i) for i in items.item_ids]
    neighbours = {}
    for algorithm in SIMILARITY_ALGORITHMS:
        lists = read_neighbour_lists(client, versions[Dataset.SIMILARITY], algorithm, item_ids)
        neighbours[algorithm] = NeighbourMatrix.from_lists(lists, item_ids)
    if not neighbours["cosine"].matrix.nnz:
        raise SnapshotError(f"similarity {versions[Dataset.SIMILARITY]}: no cosine neighbour lists")
    # Build the id hash tables now, on the loader thread, not in the first request after a swap.
    items.index(items.item_ids[:1])
    for matrix in neighbours.values():
        matrix.index(matrix.item_ids[:1])
    return DataSnapshot(versions, items, neighbours, popular, postings, time.perf_counter() - started)


@dataclass(frozen=True)
class LoadedModel:
    """A published model in memory: the manifest it came from and the object that scores."""

    manifest: ModelManifest
    model: Any
    load_seconds: float

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class ModelSet:
    models: Mapping[str, LoadedModel] = field(default_factory=dict)

    def get(self, name: str) -> Any | None:
        loaded = self.models.get(name)
        return None if loaded is None else loaded.model

    def versions(self) -> dict[str, str]:
        return {name: loaded.version for name, loaded in self.models.items()}

    def with_model(self, name: str, loaded: LoadedModel) -> ModelSet:
        return ModelSet({**self.models, name: loaded})


def save_fallback(snapshot: DataSnapshot, path: Path) -> None:
    """The global best sellers on local disk: what a worker serves if it starts while Redis is down."""
    best = snapshot.popular_list("global:all@30d")
    if not len(best.item_ids):
        globals_ = [name for name in sorted(snapshot.popular) if name.startswith("global:")]
        best = snapshot.popular[globals_[0]] if globals_ else EMPTY_LIST
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"versions": dict(snapshot.versions), "item_ids": [str(i) for i in best.item_ids[:500]],
               "scores": [float(s) for s in best.scores[:500]]}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle)
    Path(handle.name).replace(path)


def load_fallback(path: Path) -> RankedList:
    try:
        payload = json.loads(path.read_text())
        return RankedList(np.asarray(payload["item_ids"], dtype=object),
                          np.asarray(payload["scores"], dtype=np.float64))
    except (OSError, ValueError, KeyError):
        return EMPTY_LIST
