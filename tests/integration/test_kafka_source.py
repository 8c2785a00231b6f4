"""The Python Kafka source of the streaming sidecar (`spark_jobs.stream.kafka_source`) against the real
local broker (tansu): every record exactly once and in order, also where tansu's high watermark is
short; a restart resuming from the checkpoint; the per-batch limit; the errors it must raise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.utils import StreamingQueryException

from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, kafka_admin, kafka_producer
from spark_jobs.stream.kafka_source import (
    SCHEMA,
    SOURCE_NAME,
    KafkaDataSource,
    KafkaSourceError,
    KafkaSourceOptions,
    builtin_kafka_available,
    jvm_has_class,
    read_range,
    read_stream,
    true_end_offsets,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
Row = tuple[int, int, int]  # partition, offset, value (the producer's sequence number)


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    """A topic of the test's own, deleted afterwards (the broker keeps its records in memory)."""
    name = f"{settings.kafka_topic_prefix}.source_{uuid.uuid4().hex[:6]}"
    ensure_topics(settings, [name], partitions=PARTITIONS)
    yield name
    admin = kafka_admin(settings)
    for future in admin.delete_topics([name]).values():
        future.result(10)


@pytest.fixture
def consumer(settings: Settings, topic: str) -> Iterator[Consumer]:
    client = Consumer(KafkaSourceOptions(settings.kafka_bootstrap_servers, topic).consumer_config())
    yield client
    client.close()


def produce(settings: Settings, topic: str, first: int, count: int, flushes: int = 1) -> None:
    """Records `first`..`first + count - 1` round robin over the partitions, value = the number. The
    linger makes multi-record batches, the case where tansu's high watermark is short."""
    producer = kafka_producer(settings, **{"linger.ms": 50, "batch.num.messages": 1000})
    for i in range(first, first + count):
        producer.produce(topic, key=b"k", value=str(i).encode(), partition=i % PARTITIONS)
        if (i - first + 1) % max(1, count // flushes) == 0:
            producer.flush(10)
    assert producer.flush(10) == 0


def run_available_now(stream: DataFrame, checkpoint: Path) -> list[list[Row]]:
    """Every micro-batch of one availableNow run, in batch order."""
    batches: dict[int, list[Row]] = {}

    def collect(batch: DataFrame, batch_id: int) -> None:
        rows = batch.select("partition", "offset", "value").collect()
        batches[batch_id] = [(r.partition, r.offset, int(r.value.decode())) for r in rows]

    query = (
        stream.writeStream.foreachBatch(collect)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    assert query.awaitTermination(90), "the availableNow query did not finish in 90 s"
    assert query.exception() is None
    return [batches[b] for b in sorted(batches) if batches[b]]


def assert_exactly(rows: list[Row], values: range) -> None:
    """Each value once, and per partition in offset order with the values in production order."""
    assert sorted(v for _, _, v in rows) == list(values)
    assert len({(p, o) for p, o, _ in rows}) == len(rows)
    for p in range(PARTITIONS):
        mine = sorted((o, v) for q, o, v in rows if q == p)
        assert [v for _, v in mine] == [v for v in values if v % PARTITIONS == p]


def test_every_record_once_where_tansu_reports_a_short_high_watermark(
    spark: SparkSession, settings: Settings, topic: str, consumer: Consumer, tmp_path: Path
) -> None:
    produce(settings, topic, 0, 10_000, flushes=4)
    watermarks = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        for p in range(PARTITIONS)
    }
    ends = true_end_offsets(consumer, topic, watermarks)
    reported = {p: high for p, (_, high) in watermarks.items()}
    print(f"reported high watermarks {reported}, true end offsets {ends}")
    assert ends == {0: 5_000, 1: 5_000}
    assert all(reported[p] <= ends[p] for p in ends)
    if sum(reported.values()) < 10_000:  # tansu: the last batch's base offset + 1
        assert all(reported[p] > ends[p] - 1000 for p in ends)  # short by less than one batch

    stream = read_stream(spark, settings, topic, builtin=False)
    assert [(f.name, f.dataType) for f in stream.schema.fields] == [(f.name, f.dataType) for f in SCHEMA]
    rows = [row for batch in run_available_now(stream, tmp_path / "checkpoint") for row in batch]
    assert len(rows) == 10_000
    assert_exactly(rows, range(10_000))


def test_a_restart_reads_exactly_the_new_records_from_the_checkpoint(
    spark: SparkSession, settings: Settings, topic: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint"
    produce(settings, topic, 0, 300)
    first = run_available_now(read_stream(spark, settings, topic, builtin=False), checkpoint)
    assert_exactly([row for batch in first for row in batch], range(300))

    produce(settings, topic, 300, 200)
    # A new DataFrame and query, as after a restart of the sidecar: only the checkpoint carries over.
    again = run_available_now(read_stream(spark, settings, topic, builtin=False), checkpoint)
    assert_exactly([row for batch in again for row in batch], range(300, 500))

    # startingOffsets applies to a query without a checkpoint only: "latest" starts after all 500.
    produce(settings, topic, 500, 10)
    fresh = read_stream(spark, settings, topic, starting_offsets="latest", builtin=False)
    assert run_available_now(fresh, tmp_path / "fresh") == []


def test_a_running_query_picks_up_each_new_batch_of_records(
    spark: SparkSession, settings: Settings, topic: str, tmp_path: Path
) -> None:
    """The sidecar's mode: a processing-time trigger over a topic written while the query runs (the
    driver's cache of true end offsets must move with every new record batch)."""
    rows: list[Row] = []

    def collect(batch: DataFrame, batch_id: int) -> None:
        rows.extend((r.partition, r.offset, int(r.value.decode())) for r in batch.collect())

    stream = read_stream(spark, settings, topic, builtin=False).select("partition", "offset", "value")
    query = (
        stream.writeStream.foreachBatch(collect)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(processingTime="200 milliseconds")
        .start()
    )
    try:
        for first in (0, 150, 300):
            produce(settings, topic, first, 150)
            deadline = time.monotonic() + 30
            while len(rows) < first + 150 and time.monotonic() < deadline and query.isActive:
                time.sleep(0.1)
            assert query.exception() is None
            assert_exactly(list(rows), range(first + 150))
    finally:
        query.stop()


def test_max_records_per_batch_is_respected(
    spark: SparkSession, settings: Settings, topic: str, tmp_path: Path
) -> None:
    produce(settings, topic, 0, 1_000, flushes=2)
    stream = read_stream(spark, settings, topic, max_records_per_batch=300, builtin=False)
    batches = run_available_now(stream, tmp_path / "checkpoint")
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert_exactly([row for batch in batches for row in batch], range(1_000))


def test_an_announced_range_the_broker_does_not_deliver_is_an_error(
    settings: Settings, topic: str
) -> None:
    produce(settings, topic, 0, 10)
    options = KafkaSourceOptions(settings.kafka_bootstrap_servers, topic, fetch_timeout_s=1.0)
    assert sum(b.num_rows for b in read_range(options, 0, 0, 5)) == 5
    with pytest.raises(KafkaSourceError, match=r"offsets \[0, 8\) were announced but only \[0, 5\)"):
        list(read_range(options, 0, 0, 8))


def test_a_missing_topic_is_an_error_naming_it(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    missing = f"{settings.kafka_topic_prefix}.missing_{uuid.uuid4().hex[:6]}"
    spark.dataSource.register(KafkaDataSource)
    servers = settings.kafka_bootstrap_servers
    options: dict[str, Any] = {"kafka.bootstrap.servers": servers, "subscribe": missing}
    stream = spark.readStream.format(SOURCE_NAME).options(**options).load()
    query = stream.writeStream.format("noop").option("checkpointLocation", str(tmp_path / "c")).start()
    with pytest.raises(StreamingQueryException, match=f"Kafka topic '{missing}' does not exist"):
        query.awaitTermination(60)
    query.stop()


def test_the_builtin_source_is_found_by_a_jvm_class_lookup(spark: SparkSession) -> None:
    assert jvm_has_class(spark, "org.apache.spark.sql.SparkSession")
    assert not jvm_has_class(spark, "org.example.NoSuchClass")
    assert isinstance(builtin_kafka_available(spark), bool)
