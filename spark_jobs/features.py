"""The offline features job: a `UserProfile` per user and `ItemFeatures` per item, as of a date.

The features are computed by the core package's definitions (`finegrain.features.user` and
`finegrain.features.item`), applied inside Spark with `mapInPandas` to whole partitions of users or
items, so the training-set builder and serving, which call the same functions, cannot compute them
differently. The lines are hash-partitioned by user (by item) and each partition is one pandas frame:
one group per user (`applyInPandas` by user id) was measured 5x slower, thousands of tiny frames
costing more in Arrow round trips than the features do.

Output of one version (see docs/storage.md):
- MongoDB `features__{version}`: `{_id: "u:<user>", kind: "user", pb: UserProfile}` and
  `{_id: "i:<item>", kind: "item", pb: ItemFeatures}`, inserted only (no upserts: a fresh collection
  takes inserts far faster), then the Mongo pointer switch and pruning;
- Redis: `UserProfile` per user, `ItemFeatureMatrix` blocks of `ITEM_BLOCK_SIZE` items in item-id order
  and the block count (written last), then the dataset switch (Redis pointer, ZooKeeper) and pruning.
Every value is written from the executors, a Redis and a Mongo client per partition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd
from pymongo.errors import BulkWriteError

from finegrain.codecs import encode
from finegrain.dates import as_of_ms
from finegrain.features.item import (
    ITEM_BLOCK_SIZE,
    ITEM_FEATURE_NAMES,
    item_feature_matrix,
    item_feature_vector,
    item_features,
)
from finegrain.features.user import ItemLookup, user_profiles
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_client, mongo_database, redis_client
from finegrain.storage.contract import Dataset, MongoCollections, RedisKeys
from finegrain.storage.versions import MongoVersions
from spark_jobs.base import BatchJob, JobContext, JobError, JobResult, Stopwatch
from spark_jobs.item_attributes import item_attributes

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import DataFrame, Row

USER, ITEM, BLOCK = "user", "item", "block"
MONGO_ID_PREFIX = {USER: "u:", ITEM: "i:"}
OUTPUT_SCHEMA = "kind string, id string, pb binary"
ITEM_SCHEMA = "id string, pb binary, vector array<float>"
LINE_COLUMNS = ["user_id", "item_id", "invoice", "quantity", "price", "timestamp", "country"]
# The order each partition's lines reach the definitions in: every column, so that only identical lines
# tie. Sums of floats (spend, revenue) and first-seen tie-breaks depend on the order of the lines, and
# after a shuffle that order is whatever the map outputs arrived in, which differs between local and a
# cluster, and between two runs on a cluster.
LINE_ORDER = ["timestamp", "invoice", "item_id", "user_id", "quantity", "price", "country"]
# Lines per partition (one pandas frame): enough to amortise the per-frame cost, small for an executor.
LINES_PER_PARTITION = 250_000
WRITE_BATCH = 1000
DUPLICATE_KEY = 11000


class FeaturesJob(BatchJob):
    name = "features"
    dataset = Dataset.FEATURES
    description = "User profiles and item features as of a date, into MongoDB and Redis"

    def build(self, ctx: JobContext, watch: Stopwatch) -> JobResult:
        timezone = ctx.spark.conf.get("spark.sql.session.timeZone")
        if timezone != "UTC":
            # Arrow hands pandas naive times in the session zone; the definitions read them as UTC.
            raise JobError(f"the Spark session time zone is {timezone}; the features job needs UTC "
                           "(use finegrain.spark.spark_session)")
        events = ctx.cache(ctx.events().select(*LINE_COLUMNS, "description"))
        rows_in = events.count()
        watch.lap("read")
        if rows_in == 0:
            raise ctx.no_events("build features from")
        version, dataset = ctx.version, self.dataset
        collection = MongoCollections.versioned(dataset, version)
        with _mongo_versions(ctx.settings) as mongo_versions:
            # The Redis side is checked by `BatchJob.run` (`ensure_new_version`); Mongo has its own pointer.
            if version == mongo_versions.current(dataset):
                raise JobError(f"{dataset} version {version} is being served; a run writes a new version")
            mongo_versions.db.drop_collection(collection)  # a partial leftover of the same name, if any
        counts = self._write(ctx, events, rows_in, watch)
        redis = redis_client(ctx.settings)
        try:
            redis.set(RedisKeys.item_feature_block_count(version), str(counts[BLOCK]))
        finally:
            redis.close()
        return JobResult(
            job=self.name, dataset=dataset, version=version, rows_in=rows_in,
            rows_out=counts[USER] + counts[ITEM],
            details={
                "as_of": ctx.as_of.isoformat(),
                "users": counts[USER],
                "items": counts[ITEM],
                "item_blocks": counts[BLOCK],
                "redis_keys": counts[USER] + counts[BLOCK] + 1,
                "mongo_collection": collection,
                "mongo_documents": counts[USER] + counts[ITEM],
                "item_feature_names": list(ITEM_FEATURE_NAMES),
            },
        )

    def switch(self, ctx: JobContext, result: JobResult) -> str | None:
        """Mongo's pointer first, then Redis and ZooKeeper (what tells serving to reload), then the
        old Mongo collections are dropped, keeping the previous one for rollback as Redis does."""
        with _mongo_versions(ctx.settings) as mongo_versions:
            mongo_versions.switch(self.dataset, ctx.version)
            previous = super().switch(ctx, result)
            result.details["mongo_versions_dropped"] = mongo_versions.prune(self.dataset)
        return previous

    def discard(self, ctx: JobContext) -> None:
        """The partial Redis keys (unless published) and the partial Mongo collection, unless Mongo
        already points at it (the Redis switch failed after Mongo's): a reader may be on it then, and
        Mongo's pruning drops it once two newer versions are switched in."""
        super().discard(ctx)
        with _mongo_versions(ctx.settings) as mongo_versions:
            if mongo_versions.current(self.dataset) != ctx.version:
                mongo_versions.db.drop_collection(MongoCollections.versioned(self.dataset, ctx.version))

    def _write(self, ctx: JobContext, events: DataFrame, rows_in: int, watch: Stopwatch) -> dict[str, int]:
        from pyspark.sql import functions as F

        spark, version = ctx.spark, ctx.version
        attributes = item_attributes(events).toPandas()
        lookup = ItemLookup.from_attributes(attributes)
        watch.lap("item_attributes")
        partitions = _partition_count(spark.conf.get("spark.sql.shuffle.partitions"), rows_in)
        lines = events.select(*LINE_COLUMNS)

        as_of, cutoff_ms = ctx.as_of, as_of_ms(ctx.as_of)

        def user_rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            frame = _whole(batches)
            if frame is not None:
                yield _user_rows(frame, as_of=as_of, lookup=lookup, version=version)

        def item_rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            frame = _whole(batches)
            if frame is not None:
                yield _item_rows(frame, as_of=as_of, attributes=attributes, version=version)

        def block_rows(frame: pd.DataFrame) -> pd.DataFrame:
            return _block_rows(frame, version=version, as_of_ms=cutoff_ms)

        # Hash partitioning puts all lines of a user (an item) in one partition, and a partition is
        # one pandas frame: an explicit partition count is also one that adaptive execution keeps,
        # so the work stays spread over every core.
        users = (lines.repartition(partitions, "user_id").sortWithinPartitions(*LINE_ORDER)
                 .mapInPandas(user_rows, OUTPUT_SCHEMA))
        items = ctx.cache(lines.repartition(partitions, "item_id").sortWithinPartitions(*LINE_ORDER)
                          .mapInPandas(item_rows, ITEM_SCHEMA))
        # Blocks are runs of ITEM_BLOCK_SIZE items in id order, numbered from 0, so a reader needs
        # only their count; zipWithIndex numbers the sorted ids without one partition holding all.
        positions = (items.select("id").orderBy("id").rdd.map(lambda row: row[0]).zipWithIndex()
                     .map(lambda pair: (pair[0], pair[1] // ITEM_BLOCK_SIZE)))
        watch.lap("items")  # zipWithIndex runs the item features to count them
        blocks = (items.join(spark.createDataFrame(positions, "id string, block int"), "id")
                  .groupBy("block").applyInPandas(block_rows, OUTPUT_SCHEMA))
        item_documents = items.select(F.lit(ITEM).alias("kind"), "id", "pb")
        outputs = users.unionByName(item_documents).unionByName(blocks)
        written = {kind: spark.sparkContext.accumulator(0) for kind in (USER, ITEM, BLOCK)}
        outputs.foreachPartition(partial(_write_partition, settings=ctx.settings, version=version,
                                         written=written))
        watch.lap("users_and_writes")
        return {kind: int(accumulator.value) for kind, accumulator in written.items()}


@contextmanager
def _mongo_versions(settings: Settings) -> Iterator[MongoVersions]:
    client = mongo_client(settings)
    try:
        yield MongoVersions(mongo_database(settings, client))
    finally:
        client.close()


def _partition_count(shuffle_partitions: str | None, lines: int) -> int:
    return max(int(shuffle_partitions or 8), math.ceil(lines / LINES_PER_PARTITION))


def _whole(batches: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """A partition's Arrow batches as one frame (a user's lines may straddle two batches)."""
    frames = [frame for frame in batches if len(frame)]
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _user_rows(lines: pd.DataFrame, *, as_of: date, lookup: ItemLookup, version: str) -> pd.DataFrame:
    ids, blobs = [], []
    for profile in user_profiles(lines, as_of, lookup, version=version):
        ids.append(profile.user_id)
        blobs.append(encode(profile))
    return pd.DataFrame({"kind": [USER] * len(ids), "id": ids, "pb": blobs})


def _item_rows(lines: pd.DataFrame, *, as_of: date, attributes: pd.DataFrame, version: str) -> pd.DataFrame:
    features = item_features(lines, as_of, attributes, version=version)
    return pd.DataFrame({
        "id": [item.item_id for item in features],
        "pb": [encode(item) for item in features],
        "vector": [item_feature_vector(item) for item in features],
    })


def _block_rows(items: pd.DataFrame, *, version: str, as_of_ms: int) -> pd.DataFrame:
    items = items.sort_values("id")
    matrix = item_feature_matrix(list(items["id"]), [list(vector) for vector in items["vector"]],
                                 version=version, as_of_ms=as_of_ms)
    return pd.DataFrame({"kind": [BLOCK], "id": [str(int(items["block"].iloc[0]))], "pb": [encode(matrix)]})


def _write_partition(rows: Iterable[Row], *, settings: Settings, version: str,
                     written: dict[str, Accumulator[int]]) -> None:
    """Write one partition's values: Redis in pipelined batches, Mongo with insert_many."""
    redis = redis_client(settings)
    mongo = mongo_client(settings)
    collection = mongo_database(settings, mongo)[MongoCollections.versioned(Dataset.FEATURES, version)]
    pipe = redis.pipeline(transaction=False)
    documents: list[dict[str, Any]] = []
    counts = {USER: 0, ITEM: 0, BLOCK: 0}
    try:
        for row in rows:
            kind, key, blob = str(row.kind), str(row.id), bytes(row.pb)
            counts[kind] += 1
            if kind == USER:
                pipe.set(RedisKeys.user_profile(version, key), blob)
            elif kind == BLOCK:
                pipe.set(RedisKeys.item_feature_block(version, int(key)), blob)
            if kind in MONGO_ID_PREFIX:
                documents.append({"_id": MONGO_ID_PREFIX[kind] + key, "kind": kind, "pb": blob})
            if len(pipe) >= WRITE_BATCH:
                pipe.execute()
            if len(documents) >= WRITE_BATCH:
                _insert(collection, documents)
                documents = []
        pipe.execute()
        if documents:
            _insert(collection, documents)
    finally:
        redis.close()
        mongo.close()
    for kind, count in counts.items():
        written[kind].add(count)


def _insert(collection: Any, documents: list[dict[str, Any]]) -> None:
    """Insert only; a retried task finds its earlier documents there with the same content."""
    try:
        collection.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise


if __name__ == "__main__":
    from spark_jobs.runner import job_main  # the entry's typer and rich: not for executors

    raise SystemExit(job_main([FeaturesJob()]))
