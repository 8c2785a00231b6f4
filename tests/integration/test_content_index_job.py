"""The content index job on the real data and the real local stack: what it writes to Redis, checked
against the same derivations done independently with pandas, its version switching and its failures."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import redis
from pyspark.sql import SparkSession

from finegrain.features.catalog import COLOUR_AND_PATTERN_WORDS, OTHER_CATEGORY, categories
from finegrain.features.text import description_terms
from finegrain.schemas import ScoredItemList
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import Dataset, RedisKeys, ZkPaths
from finegrain.storage.lists import read_list
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs.base import JobContext, JobError, JobResult
from spark_jobs.content_index import FIELDS, ContentIndexJob
from spark_jobs.runner import job_main, run_jobs

pytestmark = pytest.mark.integration

AS_OF = date(2010, 12, 10)
EARLY_AS_OF = date(2010, 1, 1)


def run(settings: Settings, spark: SparkSession, events: Path, as_of: date = AS_OF,
        job: ContentIndexJob | None = None) -> JobResult:
    [result] = run_jobs([job or ContentIndexJob()], as_of, events, settings=settings, spark=spark)
    return result


def expected_items(events_path: Path, as_of: date) -> pd.DataFrame:
    """Per item as the job should see it: main description, category, 30-day and all-time buyers."""
    events = pd.read_parquet(events_path)
    events = events[events["timestamp"] < pd.Timestamp(as_of, tz="UTC")]
    described = events[events["description"].fillna("").str.len() > 0]
    counts = described.groupby(["item_id", "description"]).size().reset_index(name="n")
    main = (counts.sort_values(["item_id", "n", "description"], ascending=[True, False, True])
            .drop_duplicates("item_id").set_index("item_id")["description"])
    recent = events[events["timestamp"] >= pd.Timestamp(as_of, tz="UTC") - pd.Timedelta(days=30)]
    items = pd.DataFrame({
        "buyers_all": events.groupby("item_id")["user_id"].nunique(),
        "buyers_30d": recent.groupby("item_id")["user_id"].nunique(),
        "lines": events.groupby("item_id").size(),
    }).fillna(0).astype(int)
    items["description"] = main.reindex(items.index).fillna("")
    items["category"] = categories(items["description"])
    items["terms"] = [description_terms(d) for d in items["description"]]
    return items


def ranked(items: pd.DataFrame) -> tuple[list[str], list[float]]:
    frame = items.reset_index().sort_values(["buyers_30d", "buyers_all", "item_id"],
                                            ascending=[False, False, True])
    return frame["item_id"].tolist(), [float(s) for s in frame["buyers_30d"]]


def get(client: redis.Redis, version: str, field: str, value: str) -> ScoredItemList:
    found = read_list(client, RedisKeys.index_postings(version, field, value))
    assert found is not None, f"no {field}:{value} in version {version}"
    return found


def directory(client: redis.Redis, version: str, field: str) -> dict[str, int]:
    found = read_list(client, RedisKeys.index_directory(version, field))
    assert found is not None, f"no directory of {field} in version {version}"
    return {value: int(size) for value, size in zip(found.item_ids, found.scores, strict=True)}


def all_lists(client: redis.Redis, version: str) -> dict[str, tuple[list[str], list[float]]]:
    keys = [(f, v) for f in FIELDS for v in directory(client, version, f)]
    values = client.mget([RedisKeys.index_postings(version, f, v) for f, v in keys])
    out = {}
    for (field, value), data in zip(keys, values, strict=True):  # type: ignore[arg-type]
        message = ScoredItemList.FromString(data)
        out[f"{field}:{value}"] = (list(message.item_ids), list(message.scores))
    return out


def index_versions_in_redis(client: redis.Redis) -> set[str]:
    pattern = RedisKeys.versioned_prefix(Dataset.INDEX, "x")[:-2] + "*"
    return {bytes(k).decode().split(":")[2] for k in client.scan_iter(match=pattern, count=5000)}


@pytest.fixture(scope="module")
def items(events_path: Path) -> pd.DataFrame:
    return expected_items(events_path, AS_OF)


@pytest.fixture(scope="module")
def first(settings: Settings, spark: SparkSession, events_path: Path) -> JobResult:
    return run(settings, spark, events_path)


@pytest.fixture(scope="module")
def second(settings: Settings, spark: SparkSession, events_path: Path, first: JobResult) -> JobResult:
    return run(settings, spark, events_path)


def test_run_writes_every_list_and_switches_the_pointer(first: JobResult, client: redis.Redis,
                                                        settings: Settings, items: pd.DataFrame) -> None:
    assert client.get(RedisKeys.pointer(Dataset.INDEX)) == first.version.encode()
    zk = zookeeper_client(settings)
    try:
        assert zk.get(ZkPaths(settings.zookeeper_root).dataset(Dataset.INDEX))[0] == first.version.encode()
    finally:
        zk.stop()
        zk.close()
    assert first.rows_in == int(items["lines"].sum())
    dirs = {field: directory(client, first.version, field) for field in FIELDS}
    assert first.rows_out == sum(len(d) for d in dirs.values()) + len(FIELDS)
    assert first.details["items"] == len(items)
    # Every item has exactly one price band; every listed posting has the size its directory says.
    assert sum(dirs["price_band"].values()) == len(items)
    lists = all_lists(client, first.version)
    assert {key: len(ids) for key, (ids, _) in lists.items()} == {
        f"{f}:{v}": n for f, d in dirs.items() for v, n in d.items()}
    assert set(dirs["price_band"]) <= {str(b) for b in range(9)}
    assert not set(dirs["term"]) & COLOUR_AND_PATTERN_WORDS
    assert min(dirs["term"].values()) >= 2
    assert OTHER_CATEGORY not in dirs["category"]


def test_term_postings_match_the_descriptions_ranked_by_recent_buyers(
        first: JobResult, client: redis.Redis, items: pd.DataFrame) -> None:
    lights = get(client, first.version, "term", "lights")
    expected_ids, expected_scores = ranked(items[items["terms"].map(lambda t: "lights" in t)])
    assert list(lights.item_ids) == expected_ids
    assert list(lights.scores) == expected_scores
    assert all("LIGHTS" in items.at[i, "description"] for i in lights.item_ids)
    assert list(lights.scores) == sorted(lights.scores, reverse=True)
    assert lights.key == "term:lights" and lights.version == first.version
    # The term index is complete for a kept term: every item whose description has it.
    holder = get(client, first.version, "term", "holder")
    assert set(holder.item_ids) == set(items.index[items["terms"].map(lambda t: "holder" in t)])


def test_category_and_price_band_postings(first: JobResult, client: redis.Redis, items: pd.DataFrame) -> None:
    candle = get(client, first.version, "category", "candle")
    assert (list(candle.item_ids), list(candle.scores)) == ranked(items[items["category"] == "candle"])
    seen: list[str] = []
    for band in directory(client, first.version, "price_band"):
        seen.extend(get(client, first.version, "price_band", band).item_ids)
    assert sorted(seen) == sorted(items.index)


def test_colour_words_and_single_item_terms_get_no_list(first: JobResult, client: redis.Redis,
                                                        items: pd.DataFrame) -> None:
    frequency = items["terms"].explode().value_counts()
    single = sorted(t for t, n in frequency.items() if n == 1)
    assert first.details["terms_dropped"]["single_item"] == len(single)
    for term in ["pink", "retrospot", single[0], single[-1]]:
        assert not client.exists(RedisKeys.index_postings(first.version, "term", term)), term
    assert "pink" in frequency.index  # the term exists in the data; leaving it out was the job's choice


def test_rerun_gives_the_same_lists_and_keeps_the_previous_version(
        first: JobResult, second: JobResult, client: redis.Redis) -> None:
    assert second.version != first.version
    assert second.previous_version == first.version
    assert client.get(RedisKeys.pointer(Dataset.INDEX)) == second.version.encode()
    assert all_lists(client, second.version) == all_lists(client, first.version)
    assert index_versions_in_redis(client) == {first.version, second.version}


class FailsBeforeSwitch(ContentIndexJob):
    def verify(self, ctx: JobContext, keys: list[str]) -> None:
        super().verify(ctx, keys)
        raise RuntimeError("injected failure after the write")


def test_failures_leave_the_current_version_untouched(
        second: JobResult, settings: Settings, spark: SparkSession, events_path: Path, client: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(JobError, match=r"no events at .*missing\.parquet"):
        run(settings, spark, events_path.parent / "missing.parquet")
    with pytest.raises(JobError, match="no purchase events before 2009-06-01"):
        run(settings, spark, events_path, as_of=date(2009, 6, 1))
    with pytest.raises(RuntimeError, match="injected failure"):
        run(settings, spark, events_path, as_of=EARLY_AS_OF, job=FailsBeforeSwitch())
    assert job_main([ContentIndexJob()], ["--as-of", "2010-13-45"]) == 2
    assert "bad --as-of '2010-13-45'" in capsys.readouterr().err
    assert client.get(RedisKeys.pointer(Dataset.INDEX)) == second.version.encode()
    # The partial version written before the injected failure is gone; only published ones remain.
    assert index_versions_in_redis(client) == set(RedisVersions(client).history(Dataset.INDEX))
    assert get(client, second.version, "term", "lights").item_ids


def test_next_run_prunes_the_oldest_version_and_reads_only_the_past(
        first: JobResult, second: JobResult, settings: Settings, spark: SparkSession, events_path: Path,
        client: redis.Redis, items: pd.DataFrame) -> None:
    third = run(settings, spark, events_path, as_of=EARLY_AS_OF)
    assert index_versions_in_redis(client) == {second.version, third.version}
    assert RedisVersions(client).history(Dataset.INDEX) == [second.version, third.version]
    early = expected_items(events_path, EARLY_AS_OF)
    bands = directory(client, third.version, "price_band")
    listed = {i for band in bands for i in get(client, third.version, "price_band", band).item_ids}
    assert listed == set(early.index)
    assert third.details["items"] == len(early) < len(items)
    assert third.rows_in == int(early["lines"].sum())
