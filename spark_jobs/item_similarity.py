"""Item-to-item similarity from co-purchase behaviour: cosine and Swing, top-N neighbours per item.

Output: for every item bought before the as-of date and each algorithm, one `ScoredItemList` under
`fg:similarity:{version}:{algorithm}:{item_id}` (best first, scores kept; empty when the item has no
co-buyer), then the dataset pointer is switched.

The definitions, the caps and the kernels are `finegrain.recall.similarity`'s; this module is the
Spark job around them.

How the work is laid out (2 cores here, a cluster in production):
1. Spark reduces the events to one row per (user, item) with the last purchase time and the number of
   purchase lines (240,613 rows before 2010-11-10 on the real data, 2.4M at 10x): one hash
   aggregation.
2. The driver ranks each user's items by recency, applies the caps and builds a compact sparse
   user x item matrix (CSR, a few MB; about 30 MB at 10x), which is broadcast.
3. Executors take interleaved blocks of items (`foreachPartition`), compute both algorithms with
   vectorised kernels (a sparse product per block for cosine, small dense BLAS products per item for
   Swing) and write their lists to Redis, one pipelined client per partition. Pair generation never
   materialises as Spark rows: co-purchase pairs grow with the square of basket sizes, which as rows
   would be tens of millions on this data alone and a shuffle of them per run.
The cost per item does not depend on the catalogue size, so the job scales linearly with the number of
items (measured: 10x synthetic data took 7-9x the time of the real data in the same session).
Limit: the broadcast matrix must fit in an executor's memory; at a few hundred million user-item pairs
this becomes a block-partitioned join instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from finegrain.recall.similarity import (
    CoPurchaseMatrix,
    SimilarityConfig,
    build_matrix,
    cosine_block,
    swing_item,
)
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import scored_list
from finegrain.storage.redis_versions import WRITE_BATCH
from spark_jobs.base import BatchJob, JobContext, JobError, JobResult, Stopwatch

if TYPE_CHECKING:
    import pandas as pd
    import redis
    from pyspark import Accumulator, Broadcast

ALGORITHMS = ("cosine", "swing")
CHANNEL_PREFIX = "item_to_item"
VERIFY_BATCH = 1000
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def write_partition(partition: Iterator[int], *, broadcast: Broadcast[CoPurchaseMatrix], n_tasks: int,
                    redis_url: str, version: str, config: SimilarityConfig, generated_ms: int,
                    counters: dict[str, Accumulator[int]]) -> None:
    """Executor side: compute and write the lists of the items assigned to these tasks."""
    import redis

    matrix = broadcast.value
    client = redis.Redis.from_url(redis_url, socket_timeout=10.0, socket_connect_timeout=2.0)
    pipe = client.pipeline(transaction=False)
    pending = 0
    column_of = np.full(matrix.n_items, -1, dtype=np.int64)
    block_size = 256

    def put(algorithm: str, item: int, neighbours: np.ndarray, scores: np.ndarray) -> None:
        nonlocal pending
        item_id = str(matrix.item_ids[item])
        key = RedisKeys.similar_items(version, algorithm, item_id)
        pipe.set(key, scored_list(key, version, [str(i) for i in matrix.item_ids[neighbours]],
                                  scores.astype(np.float32).tolist(), f"{CHANNEL_PREFIX}:{algorithm}",
                                  generated_ms))
        counters[f"{algorithm}_keys"].add(1)
        counters[f"{algorithm}_neighbours"].add(len(neighbours))
        counters[f"{algorithm}_empty"].add(int(len(neighbours) == 0))
        pending += 1
        if pending >= WRITE_BATCH:
            pipe.execute()
            pending = 0

    started = time.perf_counter()
    try:
        for task in partition:
            # Interleaved assignment: neighbouring ids often have similar popularity, so striding
            # spreads the expensive items over every task.
            mine = np.arange(task, matrix.n_items, n_tasks)
            for start in range(0, len(mine), block_size):
                block = mine[start:start + block_size]
                for item, neighbours, scores in cosine_block(matrix, block, config.top_n):
                    put("cosine", item, neighbours, scores)
                for item in block:
                    put("swing", int(item), *swing_item(matrix, int(item), config, column_of))
        pipe.execute()
    finally:
        client.close()
    counters["task_ms"].add(int((time.perf_counter() - started) * 1000))


class ItemSimilarityJob(BatchJob):
    name = "item_similarity"
    dataset = Dataset.SIMILARITY
    description = "Item-to-item neighbours (cosine and Swing) from co-purchases before the as-of date"

    def __init__(self, config: SimilarityConfig | None = None, tasks_per_core: int = 4) -> None:
        self.config = config or SimilarityConfig()
        # Popular items cost far more than rare ones, so more, smaller tasks even out.
        self.tasks_per_core = tasks_per_core

    def build(self, ctx: JobContext, watch: Stopwatch) -> JobResult:
        # Imported here, not at the top: executors import this module for `write_partition`, and the
        # store clients (Mongo, Kafka, ZooKeeper) would add about a second to every worker's start.
        from finegrain.storage.clients import redis_client

        client = redis_client(ctx.settings)
        try:
            result, item_ids = self._build(ctx, watch)
            self.verify(client, ctx.version, item_ids)
            watch.lap("verify")
        finally:
            client.close()
        return result

    def verify(self, client: redis.Redis, version: str, item_ids: np.ndarray) -> None:
        """Every list must be in Redis before serving switches to the version: a task that wrote
        nowhere (or to another server) fails the job instead of leaving holes."""
        keys = [RedisKeys.similar_items(version, algorithm, str(item)) for algorithm in ALGORITHMS
                for item in item_ids]
        found = sum(int(client.exists(*keys[start:start + VERIFY_BATCH]))
                    for start in range(0, len(keys), VERIFY_BATCH))
        if found != len(keys):
            raise JobError(f"only {found} of {len(keys)} similarity lists are in Redis after the write")

    def _build(self, ctx: JobContext, watch: Stopwatch) -> tuple[JobResult, np.ndarray]:
        from pyspark.sql import functions as F

        config = self.config
        # One hash aggregation is all Spark needs to do here: the per-user recency ranking and the
        # caps are a sort of these rows on the driver, which builds the broadcast matrix anyway.
        pairs: pd.DataFrame = (ctx.events().groupBy("user_id", "item_id")
                 .agg(F.max("timestamp").cast("long").alias("last_ts"), F.count(F.lit(1)).alias("lines"))
                 .toPandas())
        watch.lap("aggregate")
        if pairs.empty:
            raise ctx.no_events("build")
        rows_in = int(pairs["lines"].sum())

        matrix, caps = build_matrix(pairs, config)
        del pairs
        watch.lap("matrix")

        sc = ctx.spark.sparkContext
        # Spark already runs one task per core; a multi-threaded BLAS inside each task fights it for the
        # cores, and on these small matrices OpenBLAS threads made Swing 16x slower (measured: 19 s
        # against 1.2 s). Python workers take their environment from here when they start.
        for variable in BLAS_THREAD_VARIABLES:
            sc.environment.setdefault(variable, "1")
        n_tasks = max(2, sc.defaultParallelism * self.tasks_per_core)
        counters = {f"{algorithm}_{what}": sc.accumulator(0)
                    for algorithm in ALGORITHMS for what in ("keys", "neighbours", "empty")}
        counters["task_ms"] = sc.accumulator(0)
        broadcast = sc.broadcast(matrix)
        try:
            sc.parallelize(range(n_tasks), n_tasks).foreachPartition(partial(
                write_partition, broadcast=broadcast, n_tasks=n_tasks, redis_url=ctx.settings.redis_url,
                version=ctx.version, config=config,
                generated_ms=int(datetime.now(UTC).timestamp() * 1000), counters=counters))
        finally:
            broadcast.destroy()
        watch.lap("similarity_and_write")

        counts = {name: int(counter.value) for name, counter in counters.items()}
        expected = matrix.n_items
        for algorithm in ALGORITHMS:
            if counts[f"{algorithm}_keys"] != expected:
                raise JobError(f"{algorithm}: wrote {counts[f'{algorithm}_keys']} lists for {expected} items")
        details: dict[str, Any] = {
            **caps,
            **counts,
            "tasks": n_tasks,
            "config": asdict(config),
            "key_example": RedisKeys.similar_items(ctx.version, "cosine", str(matrix.item_ids[0])),
        }
        result = JobResult(job=self.name, dataset=self.dataset, version=ctx.version, rows_in=rows_in,
                           rows_out=sum(counts[f"{a}_keys"] for a in ALGORITHMS), details=details)
        return result, matrix.item_ids


if __name__ == "__main__":
    # Under spark-submit this file is `__main__`, and executors could not unpickle the broadcast
    # `__main__.CoPurchaseMatrix`: run the job from the importable module instead.
    from spark_jobs.item_similarity import ItemSimilarityJob as ImportableJob
    from spark_jobs.runner import job_main

    raise SystemExit(job_main([ImportableJob()]))
