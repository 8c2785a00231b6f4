"""The popularity job on the real data and the real local stack: every list it writes is compared with
the same ranking computed independently with pandas, the global list reproduces the data set README's
MostPop baseline, and versions switch, repeat and fail as the storage contract says."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import redis
from pyspark.sql import SparkSession

from finegrain.features.catalog import OTHER_CATEGORY, categories
from finegrain.schemas import ScoredItemList
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import Dataset, RedisKeys, ZkPaths
from finegrain.storage.lists import read_list
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs.base import JobError, JobResult
from spark_jobs.popularity import MAX_ITEMS, WINDOWS, PopularityJob
from spark_jobs.runner import job_main, run_jobs

pytestmark = pytest.mark.integration

AS_OF = date(2010, 12, 10)
SPLIT = date(2010, 11, 10)  # the data set README's reference split
# The README's MostPop row: HR@10, Recall@10, NDCG@10, Recall@20, NDCG@20.
README_MOSTPOP = {"hr@10": 0.532, "recall@10": 0.039, "ndcg@10": 0.114, "recall@20": 0.067, "ndcg@20": 0.108}

Lists = dict[str, tuple[list[str], list[float]]]


def run(settings: Settings, spark: SparkSession, events: Path, as_of: date = AS_OF) -> JobResult:
    [result] = run_jobs([PopularityJob()], as_of, events, settings=settings, spark=spark)
    return result


def read_events(events_path: Path, before: date) -> pd.DataFrame:
    events = pd.read_parquet(events_path)
    return events[events["timestamp"] < pd.Timestamp(before, tz="UTC")]


def item_categories(events: pd.DataFrame) -> pd.Series:
    """Each item's category from its most frequent description (ties: the smallest), as the job does."""
    described = events[events["description"].fillna("").str.len() > 0]
    counts = described.groupby(["item_id", "description"]).size().reset_index(name="n")
    main = (counts.sort_values(["item_id", "n", "description"], ascending=[True, False, True])
            .drop_duplicates("item_id").set_index("item_id")["description"])
    main = main.reindex(sorted(events["item_id"].unique())).fillna("")
    return pd.Series(categories(main), index=main.index)


def expected_lists(events: pd.DataFrame, as_of: date) -> Lists:
    """Distinct buyers per window, ties by purchase lines then item id, capped per scope."""
    category = item_categories(events)
    out: Lists = {}

    def add(scope: str, name: str, window: str, frame: pd.DataFrame) -> None:
        top = (frame.reset_index().sort_values(["score", "tie", "item_id"], ascending=[False, False, True])
               .head(MAX_ITEMS[scope]))
        out[f"{scope}:{name}@{window}"] = (top["item_id"].tolist(), [float(s) for s in top["score"]])

    for window, days in WINDOWS.items():
        inside = events if days is None else events[
            events["timestamp"] >= pd.Timestamp(as_of, tz="UTC") - pd.Timedelta(days=days)]
        per_item = inside.groupby("item_id").agg(score=("user_id", "nunique"), tie=("user_id", "size"))
        add("global", "all", window, per_item)
        for country, frame in inside.groupby(["country", "item_id"]).agg(
                score=("user_id", "nunique"), tie=("user_id", "size")).groupby(level=0):
            add("country", str(country), window, frame.droplevel(0))
        with_category = per_item.join(category.rename("category"))
        for name, frame in with_category[with_category["category"] != OTHER_CATEGORY].groupby("category"):
            add("category", str(name), window, frame.drop(columns="category"))
    return out


def stored_lists(client: redis.Redis, version: str) -> Lists:
    keys = sorted(client.scan_iter(match=RedisKeys.versioned_prefix(Dataset.POPULARITY, version) + "*",
                                   count=5000))
    out: Lists = {}
    for data in client.mget(keys):  # type: ignore[union-attr]
        message = ScoredItemList.FromString(data)
        assert message.version == version
        out[message.key] = (list(message.item_ids), list(message.scores))
    return out


def popularity_versions_in_redis(client: redis.Redis) -> set[str]:
    pattern = RedisKeys.versioned_prefix(Dataset.POPULARITY, "x")[:-2] + "*"
    return {bytes(k).decode().split(":")[2] for k in client.scan_iter(match=pattern, count=5000)}


def mostpop_metrics(ranking: list[str], events: pd.DataFrame, split: date) -> dict[str, float]:
    """The README protocol: users with a purchase before and after the split, target = distinct items
    bought after it, binary gains, averaged over users."""
    cut = pd.Timestamp(split, tz="UTC")
    train, test = events[events["timestamp"] < cut], events[events["timestamp"] >= cut]
    users = set(train["user_id"]) & set(test["user_id"])
    targets = test[test["user_id"].isin(users)].groupby("user_id")["item_id"].agg(set)
    assert len(targets) == 1291
    sums = dict.fromkeys(README_MOSTPOP, 0.0)
    for target in targets:
        for k in (10, 20):
            hits = [rank for rank, item in enumerate(ranking[:k]) if item in target]
            dcg = sum(1 / math.log2(rank + 2) for rank in hits)
            ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(target), k)))
            sums[f"recall@{k}"] += len(hits) / len(target)
            sums[f"ndcg@{k}"] += dcg / ideal
            if k == 10:
                sums["hr@10"] += bool(hits)
    return {name: total / len(targets) for name, total in sums.items()}


@pytest.fixture(scope="module")
def events(events_path: Path) -> pd.DataFrame:
    return read_events(events_path, AS_OF)


@pytest.fixture(scope="module")
def first(settings: Settings, spark: SparkSession, events_path: Path) -> JobResult:
    return run(settings, spark, events_path)


@pytest.fixture(scope="module")
def second(settings: Settings, spark: SparkSession, events_path: Path, first: JobResult) -> JobResult:
    return run(settings, spark, events_path)


def test_every_list_matches_pandas(first: JobResult, client: redis.Redis, settings: Settings,
                                   events: pd.DataFrame) -> None:
    assert client.get(RedisKeys.pointer(Dataset.POPULARITY)) == first.version.encode()
    zk = zookeeper_client(settings)
    try:
        path = ZkPaths(settings.zookeeper_root).dataset(Dataset.POPULARITY)
        assert zk.get(path)[0] == first.version.encode()
    finally:
        zk.stop()
        zk.close()
    stored = stored_lists(client, first.version)
    expected = expected_lists(events, AS_OF)
    assert sorted(stored) == sorted(expected)
    mismatched = [key for key in expected if stored[key] != expected[key]]
    assert not mismatched, f"{len(mismatched)} lists differ, e.g. {mismatched[:3]}"
    assert first.rows_in == len(events)
    assert first.rows_out == len(expected)
    assert first.details["lists_by_scope"]["global"] == len(WINDOWS)
    # A few lists by their documented names, as serving reads them.
    best = read_list(client, RedisKeys.popular_items(first.version, "global", "all@all"))
    assert best is not None and len(best.item_ids) == MAX_ITEMS["global"]
    per_item = events.groupby("item_id")["user_id"].nunique().sort_values(ascending=False)
    assert best.item_ids[0] == per_item.index[0] and best.scores[0] == per_item.iloc[0]
    assert first.details["top_global_all"][0] == (per_item.index[0], int(per_item.iloc[0]))
    france = read_list(client, RedisKeys.popular_items(first.version, "country", "France@30d"))
    assert france is not None and 0 < len(france.item_ids) <= MAX_ITEMS["country"]
    candle = read_list(client, RedisKeys.popular_items(first.version, "category", "candle@all"))
    assert candle is not None and list(candle.scores) == sorted(candle.scores, reverse=True)
    assert not client.exists(RedisKeys.popular_items(first.version, "category", f"{OTHER_CATEGORY}@all"))


def test_rerun_gives_the_same_lists_and_keeps_the_previous_version(
        first: JobResult, second: JobResult, client: redis.Redis) -> None:
    assert second.version != first.version and second.previous_version == first.version
    assert client.get(RedisKeys.pointer(Dataset.POPULARITY)) == second.version.encode()
    assert stored_lists(client, second.version) == stored_lists(client, first.version)
    assert popularity_versions_in_redis(client) == {first.version, second.version}


def test_failures_leave_the_current_version_untouched(
        second: JobResult, settings: Settings, spark: SparkSession, events_path: Path, client: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(JobError, match=r"no events at .*nowhere\.parquet"):
        run(settings, spark, events_path.parent / "nowhere.parquet")
    with pytest.raises(JobError, match="no purchase events before 2009-01-01"):
        run(settings, spark, events_path, as_of=date(2009, 1, 1))
    assert job_main([PopularityJob()], ["--as-of", "10/11/2010"]) == 2
    assert "bad --as-of '10/11/2010': expected a date as YYYY-MM-DD" in capsys.readouterr().err
    assert client.get(RedisKeys.pointer(Dataset.POPULARITY)) == second.version.encode()
    assert popularity_versions_in_redis(client) == set(RedisVersions(client).history(Dataset.POPULARITY))


def test_run_at_the_reference_split_reproduces_mostpop_and_prunes(
        first: JobResult, second: JobResult, settings: Settings, spark: SparkSession, events_path: Path,
        client: redis.Redis) -> None:
    third = run(settings, spark, events_path, as_of=SPLIT)
    assert popularity_versions_in_redis(client) == {second.version, third.version}
    best = read_list(client, RedisKeys.popular_items(third.version, "global", "all@all"))
    assert best is not None
    metrics = mostpop_metrics(list(best.item_ids), read_events(events_path, AS_OF), SPLIT)
    off = {name: round(metrics[name] - value, 4) for name, value in README_MOSTPOP.items()
           if abs(metrics[name] - value) > 0.005}
    assert not off, f"MostPop from the stored list misses the README by {off} ({metrics})"
    # Only events before the split were read: every list matches pandas on that cut.
    assert stored_lists(client, third.version) == expected_lists(read_events(events_path, SPLIT), SPLIT)
