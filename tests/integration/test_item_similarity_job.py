"""The item-similarity job on the real data, against the real Redis and ZooKeeper of the local stack."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from pyspark.sql import SparkSession

from finegrain.codecs import decode
from finegrain.dates import parse_as_of
from finegrain.errors import DataError
from finegrain.schemas import ScoredItemList
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client, zookeeper_client
from finegrain.storage.contract import Dataset, RedisKeys, ZkPaths
from finegrain.storage.lists import read_list
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs.base import JobError
from spark_jobs.item_similarity import ItemSimilarityJob
from spark_jobs.runner import run_jobs

pytestmark = pytest.mark.integration

AS_OF = date(2010, 11, 10)
OLD_VERSION = "20000101-20000101T000000"  # a stand-in for an earlier build, to see pruning


@pytest.fixture(scope="module")
def events(retail_data: Path) -> pd.DataFrame:
    columns = ["user_id", "item_id", "invoice", "timestamp"]
    frame = pd.read_parquet(retail_data / "events.parquet", columns=columns)
    return frame[frame["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")]


@pytest.fixture(scope="module")
def runs(settings: Settings, spark: SparkSession, retail_data: Path) -> dict[str, Any]:
    """An older version switched in first, then two runs for the same as-of date."""
    client = redis_client(settings)
    versions = RedisVersions(client)
    client.set(RedisKeys.similar_items(OLD_VERSION, "cosine", "85123A"), b"")
    versions.switch(Dataset.SIMILARITY, OLD_VERSION)
    path = retail_data / "events.parquet"
    first = run_jobs([ItemSimilarityJob()], AS_OF, path, settings=settings, spark=spark)[0]
    first_lists = snapshot(client, first.version)
    history_after_first = versions.history(Dataset.SIMILARITY)
    second = run_jobs([ItemSimilarityJob()], AS_OF, path, settings=settings, spark=spark)[0]
    return {"client": client, "first": first, "second": second, "first_lists": first_lists,
            "history_after_first": history_after_first, "lists": snapshot(client, second.version)}


def snapshot(client: redis.Redis, version: str) -> dict[str, tuple[list[str], list[float]]]:
    lists = {}
    keys = [bytes(key).decode() for key in client.scan_iter(
        match=RedisKeys.versioned_prefix(Dataset.SIMILARITY, version) + "*", count=5000)]
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        stored = decode(ScoredItemList, value)
        # "fg:similarity:{version}:{algorithm}:{item}" -> "{algorithm}:{item}"
        lists[key.split(":", 3)[3]] = (list(stored.item_ids), list(stored.scores))
    return lists


def capped_buyers(events: pd.DataFrame, max_items: int = 100) -> tuple[pd.DataFrame, pd.Series]:
    """Each user's 100 most recently bought items (ties: more lines, then id), as the job caps them."""
    pairs = events.groupby(["user_id", "item_id"]).agg(last=("timestamp", "max"), lines=("invoice", "size"))
    pairs = pairs.reset_index().sort_values(["user_id", "last", "lines", "item_id"],
                                            ascending=[True, False, False, True])
    kept = pairs.groupby("user_id").head(max_items)
    return kept, kept.groupby("item_id")["user_id"].apply(set)


def test_one_list_per_item_and_algorithm_and_the_pointer_switched(
        runs: dict[str, Any], events: pd.DataFrame, settings: Settings) -> None:
    first, second, client = runs["first"], runs["second"], runs["client"]
    items = events["item_id"].nunique()
    assert first.rows_in == len(events) == 348_244
    assert first.rows_out == 2 * items
    assert first.details["users"] == events["user_id"].nunique()
    assert first.details["cosine_keys"] == first.details["swing_keys"] == items
    assert RedisVersions(client).current(Dataset.SIMILARITY) == second.version
    zk = zookeeper_client(settings)
    try:
        value, _ = zk.get(ZkPaths(settings.zookeeper_root).dataset(Dataset.SIMILARITY))
    finally:
        zk.stop()
        zk.close()
    assert value.decode() == second.version
    lists = runs["lists"]
    assert len(lists) == 2 * items
    assert all(len(ids) <= 100 for ids, _ in lists.values())
    assert all(scores == sorted(scores, reverse=True) for _, scores in lists.values())
    stored = read_list(client, RedisKeys.similar_items(second.version, "swing", "85123A"))
    assert stored is not None and stored.version == second.version
    assert list(stored.channels) == ["item_to_item:swing"]


def test_hand_checked_neighbours(runs: dict[str, Any]) -> None:
    """Pairs checked by hand with pandas (see test_cosine_lists_match_pandas for the computation)."""
    lists = runs["lists"]
    # WHITE HANGING HEART T-LIGHT HOLDER: its red twin first, then the wicker hearts.
    ids, scores = lists["cosine:85123A"]
    assert ids[:3] == ["21733", "22470", "22469"]
    assert scores[:3] == pytest.approx([0.531931, 0.375002, 0.357243], abs=1e-5)
    # REGENCY CAKESTAND 3 TIER: the regency teacups.
    assert lists["cosine:22423"][0][:3] == ["22699", "22697", "22698"]
    # STRAWBERRY CERAMIC TRINKET BOX <-> SWEETHEART CERAMIC TRINKET BOX, both ways and both algorithms.
    assert lists["cosine:21232"][0][0] == "21231"
    assert lists["cosine:21232"][1][0] == pytest.approx(0.726681, abs=1e-5)
    assert lists["swing:21231"][0][:3] == ["21232", "22646", "22645"]
    assert lists["swing:21231"][1][0] == pytest.approx(39.9324, abs=1e-3)
    assert lists["swing:15056P"][0][:3] == ["15056N", "20679", "15056BL"]


def test_cosine_lists_match_pandas(runs: dict[str, Any], events: pd.DataFrame) -> None:
    lists = runs["lists"]
    _, buyers = capped_buyers(events)
    for item in ("85123A", "21232", "10135"):
        mine = buyers[item]
        scores = {j: len(mine & users) / math.sqrt(len(mine) * len(users))
                  for j, users in buyers.items() if j != item and mine & users}
        expected = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:100]
        ids, got = lists[f"cosine:{item}"]
        assert ids == [j for j, _ in expected]
        assert got == pytest.approx([s for _, s in expected], abs=1e-6)


def test_swing_list_matches_pandas(runs: dict[str, Any], events: pd.DataFrame) -> None:
    """Swing by its definition, looping over user pairs, for an item under the 100-buyer cap."""
    kept, buyers = capped_buyers(events)
    items_of = kept.groupby("user_id")["item_id"].apply(set)
    degree = events.groupby("user_id")["item_id"].nunique()
    item = "15056P"
    assert len(buyers[item]) < 100
    weight = (degree + 15.0) ** -0.3
    scores: dict[str, float] = {}
    users = sorted(buyers[item])
    for n, u in enumerate(users):
        for v in users[n + 1:]:
            common = items_of[u] & items_of[v]
            for j in common - {item}:
                scores[j] = scores.get(j, 0.0) + weight[u] * weight[v] / (1.0 + len(common))
    expected = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:100]
    ids, got = runs["lists"][f"swing:{item}"]
    assert ids[:20] == [j for j, _ in expected][:20]
    assert got == pytest.approx([s for _, s in expected], rel=1e-5)


def test_rerun_is_idempotent_and_keeps_one_older_version(runs: dict[str, Any]) -> None:
    first, second, client = runs["first"], runs["second"], runs["client"]
    assert first.previous_version == OLD_VERSION
    assert runs["history_after_first"] == [OLD_VERSION, first.version]
    assert second.version != first.version
    assert second.previous_version == first.version
    assert RedisVersions(client).history(Dataset.SIMILARITY) == [first.version, second.version]
    assert not list(client.scan_iter(match=RedisKeys.versioned_prefix(Dataset.SIMILARITY, OLD_VERSION) + "*"))
    again = runs["lists"]
    before = runs["first_lists"]
    assert again.keys() == before.keys()
    for key, (ids, scores) in before.items():
        assert again[key][0] == ids, key
        assert np.allclose(again[key][1], scores, rtol=1e-6)


def _state(client: redis.Redis) -> tuple[str | None, list[str], int]:
    versions = RedisVersions(client)
    keys = sum(1 for _ in client.scan_iter(match="fg:similarity:*", count=5000))
    return versions.current(Dataset.SIMILARITY), versions.history(Dataset.SIMILARITY), keys


def test_bad_events_path_fails_clearly_and_changes_nothing(
        runs: dict[str, Any], settings: Settings, spark: SparkSession, tmp_path: Path) -> None:
    before = _state(runs["client"])
    with pytest.raises(JobError, match="no events at"):
        run_jobs([ItemSimilarityJob()], AS_OF, tmp_path / "missing.parquet", settings=settings, spark=spark)
    assert _state(runs["client"]) == before


def test_bad_dates_fail_clearly_and_change_nothing(
        runs: dict[str, Any], settings: Settings, spark: SparkSession, retail_data: Path) -> None:
    before = _state(runs["client"])
    with pytest.raises(DataError, match="expected a date"):
        parse_as_of("2010-13-45")
    with pytest.raises(JobError, match="no purchase events before 2009-01-01"):
        run_jobs([ItemSimilarityJob()], date(2009, 1, 1), retail_data / "events.parquet", settings=settings,
                 spark=spark)
    assert _state(runs["client"]) == before


class FailingBeforeSwitch(ItemSimilarityJob):
    def verify(self, client: redis.Redis, version: str, item_ids: np.ndarray) -> None:
        written = sum(1 for _ in client.scan_iter(
            match=RedisKeys.versioned_prefix(Dataset.SIMILARITY, version) + "*", count=5000))
        raise RuntimeError(f"injected failure after {written} lists")


def test_failure_after_writing_deletes_the_partial_version(
        runs: dict[str, Any], settings: Settings, spark: SparkSession, retail_data: Path) -> None:
    before = _state(runs["client"])
    with pytest.raises(RuntimeError, match=r"injected failure after [1-9]\d* lists"):
        run_jobs([FailingBeforeSwitch()], AS_OF, retail_data / "events.parquet", settings=settings,
                 spark=spark)
    assert _state(runs["client"]) == before
