"""The features job on the real data, through the real stores: what it writes, checked against pandas.

The tests share one module-scoped run as of 2010-11-10 and run in file order: the last ones rerun the
job (as of a January date, which is quick) and so prune that first version.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from finegrain.codecs import decode
from finegrain.features.item import ITEM_BLOCK_SIZE, ITEM_FEATURE_NAMES, item_feature_vector, matrix_rows
from finegrain.schemas import ItemFeatureMatrix, ItemFeatures, UserProfile
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_database, redis_client, zookeeper_client
from finegrain.storage.contract import Dataset, MongoCollections, RedisKeys, ZkPaths
from finegrain.storage.redis_versions import RedisVersions
from finegrain.storage.versions import MongoVersions
from spark_jobs.base import JobContext, JobError, JobResult
from spark_jobs.features import FeaturesJob
from spark_jobs.runner import job_main, run_jobs

pytestmark = pytest.mark.integration

AS_OF = date(2010, 11, 10)
AS_OF_TS = pd.Timestamp("2010-11-10", tz="UTC")
QUICK_AS_OF = date(2009, 12, 8)


@dataclass(frozen=True)
class Run:
    result: JobResult
    events_path: Path
    events: pd.DataFrame  # every event of the file, for the pandas references


@pytest.fixture(scope="module")
def run(settings: Settings, spark: SparkSession, retail_data: Path) -> Run:
    path = retail_data / "events.parquet"
    result = run_jobs([FeaturesJob()], AS_OF, path, settings=settings, spark=spark)[0]
    return Run(result, path, pd.read_parquet(path))


def before(events: pd.DataFrame, as_of: pd.Timestamp = AS_OF_TS) -> pd.DataFrame:
    return events[events["timestamp"] < as_of]


def redis_profile(settings: Settings, version: str, user_id: str) -> UserProfile:
    data = redis_client(settings).get(RedisKeys.user_profile(version, user_id))
    assert data is not None, f"no profile of {user_id} in version {version}"
    return decode(UserProfile, data)  # type: ignore[arg-type]


def mongo_item(settings: Settings, version: str, item_id: str) -> ItemFeatures:
    doc = mongo_database(settings)[MongoCollections.versioned(Dataset.FEATURES, version)].find_one(
        {"_id": f"i:{item_id}"})
    assert doc is not None and doc["kind"] == "item"
    return decode(ItemFeatures, doc["pb"])


def blocks(settings: Settings, version: str) -> Iterator[ItemFeatureMatrix]:
    client = redis_client(settings)
    count = int(client.get(RedisKeys.item_feature_block_count(version)))  # type: ignore[arg-type]
    for block in range(count):
        data = client.get(RedisKeys.item_feature_block(version, block))
        assert data is not None, f"block {block} of {count} missing"
        yield decode(ItemFeatureMatrix, data)  # type: ignore[arg-type]


def version_keys(settings: Settings, version: str) -> int:
    pattern = RedisKeys.versioned_prefix(Dataset.FEATURES, version) + "*"
    return sum(1 for _ in redis_client(settings).scan_iter(match=pattern, count=5000))


def test_counts_and_the_pointer_switch(run: Run, settings: Settings) -> None:
    result, lines = run.result, before(run.events)
    users, items = lines["user_id"].nunique(), lines["item_id"].nunique()
    assert (result.rows_in, result.details["users"], result.details["items"]) == (len(lines), users, items)
    assert (users, items) == (4009, 3954)
    assert result.rows_out == users + items
    blocks_expected = math.ceil(items / ITEM_BLOCK_SIZE)
    assert result.details["item_blocks"] == blocks_expected
    version = result.version
    assert version.startswith("20101110-")
    assert RedisVersions(redis_client(settings)).current(Dataset.FEATURES) == version
    assert MongoVersions(mongo_database(settings)).current(Dataset.FEATURES) == version
    zk = zookeeper_client(settings)
    try:
        data, _ = zk.get(ZkPaths(settings.zookeeper_root).dataset(Dataset.FEATURES))
    finally:
        zk.stop()
    assert data.decode() == version
    assert version_keys(settings, version) == users + blocks_expected + 1
    collection = mongo_database(settings)[MongoCollections.versioned(Dataset.FEATURES, version)]
    assert collection.count_documents({"kind": "user"}) == users
    assert collection.count_documents({"kind": "item"}) == items


def test_user_13085_against_pandas(run: Run, settings: Settings) -> None:
    profile = redis_profile(settings, run.result.version, "13085")
    mine = before(run.events).query("user_id == '13085'")
    # Checked by hand with pandas: six invoices of Dec 2009 and Jan 2010, nothing since.
    assert (profile.purchase_lines, profile.baskets, profile.distinct_items) == (62, 6, 33)
    assert profile.total_spend == pytest.approx(2017.2, abs=1e-3)
    assert (profile.days_since_last_purchase, profile.days_since_first_purchase) == (284, 343)
    assert profile.country == "United Kingdom"
    assert profile.avg_basket_value == pytest.approx(2017.2 / 6, rel=1e-6)
    assert profile.avg_item_price == pytest.approx(mine["price"].mean(), rel=1e-6)
    assert [(w.days, w.lines) for w in profile.windows] == [(7, 0), (30, 0), (90, 0), (365, 62)]
    assert (profile.history.item_ids[0], profile.history.times_bought[0]) == ("22041", 4)
    expected = _history(mine)
    assert list(profile.history.item_ids) == list(expected.index)
    assert list(profile.history.times_bought) == list(expected["times"])
    assert list(profile.history.quantity) == list(expected["quantity"])
    assert list(profile.history.last_bought_day) == list(expected["day"])
    assert profile.as_of_ms == int(AS_OF_TS.timestamp() * 1000)
    assert len(profile.preferred_terms) == 10 and len(profile.preferred_categories) == 5
    collection = MongoCollections.versioned(Dataset.FEATURES, run.result.version)
    stored = mongo_database(settings)[collection].find_one({"_id": "u:13085"})
    assert stored is not None and decode(UserProfile, stored["pb"]) == profile


def test_the_busiest_recent_user_windows_against_pandas(run: Run, settings: Settings) -> None:
    lines = before(run.events)
    recent = lines[lines["timestamp"] >= AS_OF_TS - pd.Timedelta(days=30)]
    user = str(recent["user_id"].value_counts().idxmax())
    profile = redis_profile(settings, run.result.version, user)
    mine = lines[lines["user_id"] == user]
    for window in profile.windows:
        inside = mine[mine["timestamp"] >= AS_OF_TS - pd.Timedelta(days=window.days)]
        assert (window.baskets, window.lines) == (inside["invoice"].nunique(), len(inside)), window.days
        assert window.spend == pytest.approx((inside["quantity"] * inside["price"]).sum(), rel=1e-5)
    assert profile.country == mine["country"].value_counts().idxmax()
    assert list(profile.history.item_ids) == list(_history(mine).index)


def test_item_85123A_against_pandas(run: Run, settings: Settings) -> None:
    item = mongo_item(settings, run.result.version, "85123A")
    sold = before(run.events).query("item_id == '85123A'")
    windows = [int((sold["timestamp"] >= AS_OF_TS - pd.Timedelta(days=d)).sum()) for d in (7, 30, 90)]
    assert windows == [80, 315, 779]  # checked by hand with pandas
    assert [item.popularity_7d, item.popularity_30d, item.popularity_90d] == windows
    days_per_buyer = sold.assign(day=sold["timestamp"].dt.floor("D")).groupby("user_id")["day"].nunique()
    assert item.distinct_buyers == len(days_per_buyer) == 1058
    assert item.repurchase_rate == pytest.approx((days_per_buyer > 1).mean(), rel=1e-6)
    assert item.repurchase_rate == pytest.approx(540 / 1058, rel=1e-6)
    assert item.units_sold == sold["quantity"].sum() == 50267
    assert item.revenue == pytest.approx((sold["quantity"] * sold["price"]).sum(), rel=1e-6)
    assert item.trend == pytest.approx((80 / 7) / (315 / 30), rel=1e-6)
    assert item.first_seen_ms == sold["timestamp"].min().value // 10**6
    assert item.last_seen_ms == sold["timestamp"].max().value // 10**6
    assert (item.description, item.category, item.price_band) == ("WHITE HANGING HEART T-LIGHT HOLDER",
                                                                  "holder", 4)
    assert item.price == pytest.approx(sold["price"].median())
    assert list(item.terms) == ["white", "hanging", "heart", "light", "holder"]
    matrix = next(m for m in blocks(settings, run.result.version) if "85123A" in m.item_ids)
    ids, values = matrix_rows(matrix)
    np.testing.assert_allclose(values[ids.index("85123A")], np.asarray(item_feature_vector(item), np.float32))


def test_blocks_hold_every_item_once_in_id_order(run: Run, settings: Settings) -> None:
    matrices = list(blocks(settings, run.result.version))
    ids = [item_id for matrix in matrices for item_id in matrix.item_ids]
    assert ids == sorted(before(run.events)["item_id"].unique())
    assert all(len(m.item_ids) == ITEM_BLOCK_SIZE for m in matrices[:-1]) and len(matrices[-1].item_ids) > 0
    for matrix in matrices:
        assert list(matrix.feature_names) == list(ITEM_FEATURE_NAMES)
        assert (matrix.version, matrix.as_of_ms) == (run.result.version, int(AS_OF_TS.timestamp() * 1000))
        assert len(matrix.values) == len(matrix.item_ids) * len(ITEM_FEATURE_NAMES)


def test_bad_inputs_fail_clearly_and_leave_the_served_version(
    run: Run, settings: Settings, spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = run.result.version
    with pytest.raises(JobError, match=r"no events at .*finegrain data load"):
        run_jobs([FeaturesJob()], AS_OF, tmp_path / "missing.parquet", settings=settings, spark=spark)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(JobError, match="cannot read events"):
        run_jobs([FeaturesJob()], AS_OF, garbage, settings=settings, spark=spark)
    with pytest.raises(JobError, match="no purchase events before 2009-06-01"):
        run_jobs([FeaturesJob()], date(2009, 6, 1), run.events_path, settings=settings,
                 spark=spark)
    assert job_main([FeaturesJob()], ["--as-of", "2010-13-45"]) == 2
    assert "bad --as-of '2010-13-45'" in capsys.readouterr().err
    assert RedisVersions(redis_client(settings)).current(Dataset.FEATURES) == served
    assert MongoVersions(mongo_database(settings)).current(Dataset.FEATURES) == served
    assert redis_client(settings).get(RedisKeys.item_feature_block_count(served)) is not None


class FailsBeforeTheSwitch(FeaturesJob):
    """Writes the whole version, then fails: what a crash between the writes and the switch looks like."""

    version = ""
    keys_written = 0
    documents_written = 0

    def _write(self, ctx: JobContext, *args: object, **kwargs: object) -> dict[str, int]:
        self.version = ctx.version
        super()._write(ctx, *args, **kwargs)  # type: ignore[arg-type]
        self.keys_written = version_keys(ctx.settings, ctx.version)
        collection = MongoCollections.versioned(Dataset.FEATURES, ctx.version)
        self.documents_written = mongo_database(ctx.settings)[collection].count_documents({})
        raise RuntimeError("injected failure after the writes")


def test_a_failure_before_the_switch_deletes_the_partial_version(run: Run, settings: Settings,
                                                                 spark: SparkSession, tmp_path: Path) -> None:
    job = FailsBeforeTheSwitch()
    with pytest.raises(RuntimeError, match="injected"):
        run_jobs([job], QUICK_AS_OF, run.events_path, settings=settings, spark=spark)
    assert job.version and job.version != run.result.version
    assert job.keys_written > 0 and job.documents_written > 0
    assert version_keys(settings, job.version) == 0
    db = mongo_database(settings)
    assert MongoCollections.versioned(Dataset.FEATURES, job.version) not in db.list_collection_names()
    assert RedisVersions(redis_client(settings)).current(Dataset.FEATURES) == run.result.version
    assert MongoVersions(db).current(Dataset.FEATURES) == run.result.version


def test_reruns_give_the_same_content_and_keep_one_older_version(run: Run, settings: Settings,
                                                                 spark: SparkSession, tmp_path: Path) -> None:
    events_path = run.events_path
    first = run_jobs([FeaturesJob()], QUICK_AS_OF, events_path, settings=settings, spark=spark)[0]
    second = run_jobs([FeaturesJob()], QUICK_AS_OF, events_path, settings=settings, spark=spark)[0]
    assert first.version != second.version
    assert (first.previous_version, second.previous_version) == (run.result.version, first.version)
    assert first.rows_in == second.rows_in == len(before(run.events, pd.Timestamp(QUICK_AS_OF, tz="UTC")))
    assert _contents(settings, first.version) == _contents(settings, second.version)
    # The pruning keeps the served version and the one before it, in Redis and in Mongo.
    assert RedisVersions(redis_client(settings)).history(Dataset.FEATURES) == [first.version, second.version]
    assert version_keys(settings, run.result.version) == 0
    mongo_versions = MongoVersions(mongo_database(settings)).versions(Dataset.FEATURES)
    assert mongo_versions == [first.version, second.version]


def _history(lines: pd.DataFrame) -> pd.DataFrame:
    history = lines.groupby("item_id").agg(times=("invoice", "nunique"), last=("timestamp", "max"),
                                           quantity=("quantity", "sum"))
    history["day"] = history["last"].dt.floor("D").map(lambda t: t.value // (86_400 * 10**9))
    return history.reset_index().sort_values(["last", "times", "item_id"], ascending=[False, False, True]
                                             ).set_index("item_id")


def _contents(settings: Settings, version: str) -> dict[str, bytes]:
    """Every user profile and item of a version, with the version field blanked."""
    contents: dict[str, bytes] = {}
    client = redis_client(settings)
    prefix = RedisKeys.versioned_prefix(Dataset.FEATURES, version)
    for key in client.scan_iter(match=prefix + "user:*", count=5000):
        profile = decode(UserProfile, client.get(key))  # type: ignore[arg-type]
        profile.version = ""
        contents[bytes(key).decode()[len(prefix):]] = profile.SerializeToString(deterministic=True)
    for matrix in blocks(settings, version):
        matrix.version = ""
        contents[f"block:{matrix.item_ids[0]}"] = matrix.SerializeToString(deterministic=True)
    for doc in mongo_database(settings)[MongoCollections.versioned(Dataset.FEATURES, version)].find():
        message = decode(UserProfile if doc["kind"] == "user" else ItemFeatures, doc["pb"])
        message.version = ""
        contents[doc["_id"]] = message.SerializeToString(deterministic=True)
    return contents
