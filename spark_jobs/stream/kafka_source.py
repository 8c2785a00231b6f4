"""Reading a Kafka topic as a Spark streaming DataFrame, with or without Spark's Kafka connector jars.

Spark's built-in `kafka` format needs connector jars that the package registries here do not carry, so
this module also implements the source in Python: a PySpark streaming data source
(`pyspark.sql.datasource`, short name `finegrain_kafka`) over confluent-kafka. `read_stream` uses the
built-in format when its classes are on the JVM's classpath (the production image) and this one
otherwise, and returns the same six columns either way (`key`, `value`, `topic`, `partition`, `offset`,
`timestamp`), so the code after the source has one path.

How the Python source works:
- An offset is a JSON dict `{"<partition>": <next offset to read>}`. Spark keeps it in the query's
  checkpoint (offsets/ and commits/ logs), so a restarted query resumes where the last committed
  micro-batch ended; nothing is committed to a Kafka consumer group.
- Each micro-batch is one task per Kafka partition reading exactly the records in [start, end), in
  offset order. A range the broker announced but does not deliver in time is an error, never a short
  read.
- The end of a partition is not taken from the broker's high watermark as is: the local broker (tansu)
  reports the last record batch's base offset + 1 instead of the last offset + 1, and trusting it drops
  the tail of every micro-batch. `true_end_offsets` reads the last batch to find the real end.

Options (the same names as Spark's `kafka` format, so `read_stream` passes one dict to either):
`kafka.bootstrap.servers`, `subscribe` (one topic), `startingOffsets` (`earliest` | `latest`, for a
query without a checkpoint), `maxOffsetsPerTrigger` (records per micro-batch, over all partitions), and
this source's own `fetchTimeoutMs` (how long a task waits for the broker without progress).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, kafka_consumer

if TYPE_CHECKING:
    # confluent-kafka is imported inside the methods that use it (see KafkaStreamReader).
    import pyarrow as pa
    from confluent_kafka import Consumer
    from pyspark.sql import DataFrame, SparkSession

SOURCE_NAME = "finegrain_kafka"
BUILTIN_PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"
COLUMNS = ["key", "value", "topic", "partition", "offset", "timestamp"]
SCHEMA = StructType(
    [
        StructField("key", BinaryType()),
        StructField("value", BinaryType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
    ]
)
_ARROW_BATCH_ROWS = 10_000


log = logging.getLogger(__name__)
# librdkafka's codes of a broker that cannot be reached (as opposed to one that refuses what we ask).
_UNREACHABLE = frozenset({-195, -187, -185})  # _TRANSPORT, _ALL_BROKERS_DOWN, _TIMED_OUT


class KafkaSourceError(RuntimeError):
    """The broker cannot give what the source needs (no topic, lost data, an announced range missing)."""


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSourceOptions:
    bootstrap_servers: str
    topic: str
    starting_offsets: str = "earliest"
    max_records_per_batch: int | None = None
    fetch_timeout_s: float = 30.0

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> KafkaSourceOptions:
        """From the DataFrame reader's options (names compared case-insensitively, as Spark does)."""
        lower = {key.lower(): value for key, value in options.items()}
        servers = lower.get("kafka.bootstrap.servers", "")
        topic = lower.get("subscribe", "")
        if not servers or not topic:
            raise ValueError(f"{SOURCE_NAME}: options kafka.bootstrap.servers and subscribe are required")
        if "," in topic:
            raise ValueError(f"{SOURCE_NAME}: subscribe takes one topic, got {topic!r}")
        starting = lower.get("startingoffsets", "earliest").strip().lower()
        if starting not in ("earliest", "latest"):
            raise ValueError(f"{SOURCE_NAME}: startingOffsets must be earliest or latest, got {starting!r}")
        max_records = lower.get("maxoffsetspertrigger")
        if max_records is not None and int(max_records) < 1:
            raise ValueError(f"{SOURCE_NAME}: maxOffsetsPerTrigger must be >= 1, got {max_records}")
        return cls(
            bootstrap_servers=servers,
            topic=topic,
            starting_offsets=starting,
            max_records_per_batch=int(max_records) if max_records is not None else None,
            fetch_timeout_s=int(lower.get("fetchtimeoutms", "30000")) / 1000,
        )

    def consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            # Required by the client, never joined: partitions are assigned, offsets never committed.
            "group.id": f"{SOURCE_NAME}.{self.topic}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A position the broker no longer has is an error to report, not a silent jump.
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "log_level": 3,
        }


# --- offsets (pure) ------------------------------------------------------------------------------


def to_offset(positions: Mapping[int, int]) -> dict[str, int]:
    """The checkpointed form: JSON keys are strings, so the partition is one."""
    return {str(partition): int(position) for partition, position in sorted(positions.items())}


def from_offset(offset: Mapping[str, Any]) -> dict[int, int]:
    return {int(partition): int(position) for partition, position in offset.items()}


def resume_positions(
    start: Mapping[int, int], ranges: Mapping[int, tuple[int, int]], topic: str
) -> dict[int, int]:
    """Where each partition's next batch starts: the checkpointed position, the earliest offset for a
    partition added since, and an error when the topic no longer has that position (the broker lost
    its data, e.g. tansu's in-memory storage restarted, or retention deleted it): the query must not
    skip records silently, nor wait forever for offsets that will never come back."""
    positions: dict[int, int] = {}
    for partition, (low, end) in ranges.items():
        position = start.get(partition, low)
        if position > end:
            raise KafkaSourceError(
                f"{topic}[{partition}]: the checkpoint is at offset {position} but the topic ends at {end}"
                " (recreated or its broker lost data); delete the checkpoint to start over"
            )
        if position < low:
            raise KafkaSourceError(
                f"{topic}[{partition}]: the checkpoint is at offset {position} but the topic starts at {low}"
                " (records were deleted before they were read)"
            )
        positions[partition] = position
    missing = sorted(set(start) - set(ranges))
    if missing:
        raise KafkaSourceError(f"{topic}: partitions {missing} of the checkpoint are gone from the topic")
    return positions


def limit_end_offsets(start: Mapping[int, int], end: Mapping[int, int], max_rows: int) -> dict[int, int]:
    """At most `max_rows` records in total, shared across partitions in proportion to their backlog
    (as Spark's Kafka source shares maxOffsetsPerTrigger); the rounding remainder goes to the largest
    fractions, so the batch is exactly `max_rows` when the backlog is larger and always makes progress."""
    backlog = {p: max(0, end[p] - start[p]) for p in end}
    total = sum(backlog.values())
    if total <= max_rows:
        return dict(end)
    shares = {p: max_rows * b / total for p, b in backlog.items()}
    taken = {p: int(share) for p, share in shares.items()}
    remainder = max_rows - sum(taken.values())
    for p in sorted(backlog, key=lambda q: (taken[q] - shares[q], q))[:remainder]:
        taken[p] += 1
    return {p: start[p] + min(taken[p], backlog[p]) for p in end}


def cap_offsets(end: Mapping[int, int], start: Mapping[int, int], cap: Mapping[int, int]) -> dict[int, int]:
    """`end` no further than `cap` (availableNow's target); a partition the cap does not know (added
    after it was taken) stays where it starts."""
    return {p: max(start[p], min(e, cap.get(p, start[p]))) for p, e in end.items()}


# --- the broker ----------------------------------------------------------------------------------


def true_end_offsets(
    consumer: Consumer, topic: str, watermarks: Mapping[int, tuple[int, int]], timeout_s: float = 10.0
) -> dict[int, int]:
    """The real end (last offset + 1) of each partition, given its reported (low, high) watermarks.

    tansu reports the high watermark as the last record batch's base offset + 1, which is short of the
    end by the batch's length minus one (a source trusting it read 9,760 of 10,000 events). Fetching
    from offset high - 1 returns that last batch whole (on Kafka, the batch holding the last record):
    the last offset it holds + 1 is the end. On a broker that reports the right watermark the two
    agree, at the cost of one fetch. Uses and then clears `consumer`'s assignment."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    ends = {p: high for p, (low, high) in watermarks.items()}
    pending = {p for p, (low, high) in watermarks.items() if high > low}
    if not pending:
        return ends
    consumer.assign([TopicPartition(topic, p, watermarks[p][1] - 1) for p in sorted(pending)])
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        # Wait for a record of every partition; once each has one, its batch is already local, so a
        # short quiet poll drains the rest (and an EOF, when the broker sends one, ends it sooner).
        while pending:
            wait = 0.05 if seen >= pending else deadline - time.monotonic()
            if wait <= 0:
                break
            message = consumer.poll(wait)
            if message is None:
                if seen >= pending:
                    break
                continue
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if partition in seen:
                        pending.discard(partition)
                    continue
                if error.code() in _UNREACHABLE:  # the broker went away meanwhile: a retry's matter
                    raise KafkaException(error)
                raise KafkaSourceError(f"{topic}[{partition}]: {error.str()}")
            offset = message.offset()
            if partition is None or offset is None:
                continue
            seen.add(partition)
            ends[partition] = max(ends[partition], offset + 1)
    finally:
        consumer.unassign()
    unseen = sorted(p for p in pending if p not in seen)
    if unseen:
        raise KafkaSourceError(
            f"{topic}: partitions {unseen} announce records (high watermarks "
            f"{[watermarks[p][1] for p in unseen]}) but none came within {timeout_s:.0f} s"
        )
    return ends


def topic_partitions(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise KafkaSourceError(f"Kafka topic {topic!r} does not exist")
    return sorted(metadata.partitions)


def read_range(options: KafkaSourceOptions, partition: int, start: int, end: int) -> Iterator[pa.RecordBatch]:
    """The records of `partition` in [start, end), in offset order, as Arrow batches of SCHEMA."""
    import pyarrow as pa
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(SCHEMA, timezone="UTC")
    topic = options.topic
    consumer = Consumer(options.consumer_config())
    columns: tuple[list[Any], ...] = ([], [], [], [])  # key, value, offset, timestamp (µs)

    def batch() -> pa.RecordBatch:
        keys, values, offsets, stamps = columns
        rows = len(offsets)
        arrays = [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array([topic] * rows, pa.string()),
            pa.array([partition] * rows, pa.int32()),
            pa.array(offsets, pa.int64()),
            pa.array(stamps, pa.timestamp("us", tz="UTC")),
        ]
        for column in columns:
            column.clear()
        return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)

    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        position = start
        last_progress = time.monotonic()
        while position < end:
            # Asking for exactly what is left lets the call return as soon as the range is complete.
            messages = consumer.consume(num_messages=min(end - position, _ARROW_BATCH_ROWS), timeout=1.0)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue  # tansu's early EOF (its watermark is short): the range goes on
                    raise KafkaSourceError(f"{topic}[{partition}] at offset {position}: {error.str()}")
                offset = message.offset()
                if offset is None or offset < position:
                    continue  # the head of a batch that starts before our position
                if offset >= end:
                    position = end
                    break
                kind, stamp_ms = message.timestamp()
                columns[0].append(message.key())
                columns[1].append(message.value())
                columns[2].append(offset)
                columns[3].append(None if kind == TIMESTAMP_NOT_AVAILABLE else stamp_ms * 1000)
                position = offset + 1
                last_progress = time.monotonic()
            if len(columns[2]) >= _ARROW_BATCH_ROWS:
                yield batch()
            if position < end and time.monotonic() - last_progress > options.fetch_timeout_s:
                raise KafkaSourceError(
                    f"{topic}[{partition}]: offsets [{start}, {end}) were announced but only "
                    f"[{start}, {position}) arrived; nothing more for {options.fetch_timeout_s:.0f} s"
                )
        if columns[2]:
            yield batch()
    finally:
        consumer.close()


# --- the Spark data source -----------------------------------------------------------------------


class KafkaPartitionRange(InputPartition):
    """One task: the records of one Kafka partition in [start, end)."""

    def __init__(self, partition: int, start: int, end: int) -> None:
        super().__init__((partition, start, end))
        self.partition = partition
        self.start = start
        self.end = end


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Plans micro-batches on the driver (offsets, limits) and reads them in the executors' tasks.

    Spark pickles the reader into its Python workers, so it holds only options and plain data: the
    driver-side consumer is made on first use and left out of the pickle, and confluent-kafka is
    imported inside the methods (a module-level import broke unpickling in the executors here)."""

    def __init__(self, options: KafkaSourceOptions) -> None:
        self.options = options
        self._consumer: Consumer | None = None
        # partition -> (reported high watermark, true end): an unchanged watermark means no new batch,
        # so the true end found for it still holds and costs no fetch.
        self._ends: dict[int, tuple[int, int]] = {}
        self._target: dict[int, int] | None = None
        self._latest: dict[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_consumer"] = None
        return state

    def _ranges(self) -> dict[int, tuple[int, int]]:
        """partition -> (earliest offset, true end offset)."""
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(self.options.consumer_config())
        consumer, topic = self._consumer, self.options.topic
        watermarks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0, cached=False)
            for p in topic_partitions(consumer, topic)
        }
        stale = {p: w for p, w in watermarks.items() if self._ends.get(p, (None, 0))[0] != w[1]}
        for p, end in true_end_offsets(consumer, topic, stale).items():
            self._ends[p] = (stale[p][1], end)
        self._latest = {p: self._ends[p][1] for p in watermarks}
        return {p: (low, self._ends[p][1]) for p, (low, _) in watermarks.items()}

    def initialOffset(self) -> dict[str, int]:
        ranges = self._ranges()
        pick = 0 if self.options.starting_offsets == "earliest" else 1
        return to_offset({p: r[pick] for p, r in ranges.items()})

    def getDefaultReadLimit(self) -> ReadLimit:
        limit = self.options.max_records_per_batch
        return ReadMaxRows(limit) if limit is not None else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        # Trigger.AvailableNow reads what exists now, in as many batches as the limit needs, then stops.
        self._target = {p: end for p, (_, end) in self._ranges().items()}

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, int]:
        from confluent_kafka import KafkaException

        try:
            ranges = self._ranges()
        except KafkaException as exc:
            # The broker unreachable (an outage, a restart): nothing new this trigger, and the query
            # waits for it instead of failing; the consumer reconnects by itself. A topic that is gone
            # or a checkpoint it cannot serve still fails the query (KafkaSourceError, below).
            log.warning("Kafka broker unreachable (%s); no new records until it is back", exc)
            return to_offset(from_offset(start))
        begin = resume_positions(from_offset(start), ranges, self.options.topic)
        end = {p: r[1] for p, r in ranges.items()}
        if self._target is not None:
            end = cap_offsets(end, begin, self._target)
        if isinstance(limit, ReadMaxRows):
            end = limit_end_offsets(begin, end, limit.max_rows)
        return to_offset(end)

    def reportLatestOffset(self) -> dict[str, int] | None:
        # The ends found by the last planning call: no extra broker round trip per trigger.
        return to_offset(self._latest) if self._latest is not None else None

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> list[KafkaPartitionRange]:
        begin, finish = from_offset(start), from_offset(end)
        return [
            KafkaPartitionRange(p, begin.get(p, 0), stop)
            for p, stop in sorted(finish.items())
            if stop > begin.get(p, 0)
        ]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, KafkaPartitionRange)
        return read_range(self.options, partition.partition, partition.start, partition.end)

    def commit(self, end: dict[str, Any]) -> None:
        """Nothing to do: the offsets are Spark's checkpoint, not a consumer group's."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class KafkaDataSource(DataSource):
    """`spark.readStream.format("finegrain_kafka")`: one Kafka topic as a stream of SCHEMA rows."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        return SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(KafkaSourceOptions.parse(self.options))


# --- choosing the source -------------------------------------------------------------------------


def builtin_kafka_available(spark: SparkSession) -> bool:
    """Whether Spark's own Kafka source is on the JVM's classpath (False on a Connect session too)."""
    return jvm_has_class(spark, BUILTIN_PROVIDER)


def jvm_has_class(spark: SparkSession, name: str) -> bool:
    try:
        # Spark's class loader: it also sees the jars added by spark.jars / spark.jars.packages.
        jvm = spark._jvm
        if jvm is None:
            return False
        jvm.org.apache.spark.util.Utils.classForName(name, False, False)
    except Exception:  # a missing class (Py4JJavaError), or no JVM gateway at all
        return False
    return True


def read_stream(
    spark: SparkSession,
    settings: Settings,
    topic: str,
    *,
    starting_offsets: str = "earliest",
    max_records_per_batch: int | None = None,
    builtin: bool | None = None,
) -> DataFrame:
    """The streaming DataFrame of `topic` with COLUMNS, from Spark's built-in Kafka source when its
    classes are on the classpath (or `builtin` says so) and from this module's Python source otherwise.

    A missing topic is created (`ensure_topics`, 2 partitions like the API's), so the sidecar can start
    before the first event; the Python source itself, used directly, reports a missing topic as an
    error naming it."""
    ensure_topics(settings, [topic])
    options = {
        "kafka.bootstrap.servers": settings.kafka_bootstrap_servers,
        "subscribe": topic,
        "startingOffsets": starting_offsets,
    }
    if max_records_per_batch is not None:
        options["maxOffsetsPerTrigger"] = str(max_records_per_batch)
    if builtin if builtin is not None else builtin_kafka_available(spark):
        source = "kafka"
    else:
        spark.dataSource.register(KafkaDataSource)
        source = SOURCE_NAME
    return spark.readStream.format(source).options(**options).load().select(*COLUMNS)


def topic_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The true end offset (last offset + 1) of each partition of a topic."""
    from confluent_kafka import TopicPartition

    consumer = kafka_consumer(settings, group_id=f"{settings.kafka_topic_prefix}.stream-status")
    try:
        partitions = topic_partitions(consumer, topic)
        watermarks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                      for p in partitions}
        return true_end_offsets(consumer, topic, watermarks)
    finally:
        consumer.close()
