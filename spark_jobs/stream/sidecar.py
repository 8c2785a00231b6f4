"""The streaming sidecar: a Spark Structured Streaming query from the events topic to real-time
profiles in Redis and the event archive, running beside the API.

    python -m spark_jobs.stream.sidecar        (what `finegrain stream start` runs in the background)

The query reads the events topic (`spark_jobs.stream.kafka_source.read_stream`: Spark's own Kafka
source when its jars are on the classpath, the project's Python source otherwise), every
`trigger_ms` one micro-batch of at most `max_records_per_batch` records, and hands each to
`spark_jobs.stream.batch.BatchProcessor` in `foreachBatch`. The offsets live in Spark's checkpoint
(`<var dir>/stream/checkpoint`): a restarted sidecar resumes where the last committed batch ended,
and replays a batch that was running when it died, which the processor makes harmless.

After every batch the sidecar rewrites `<var dir>/stream/status.json` (state, batches, events,
dead letters, the offsets processed per partition, the last batch's figures; totals carry over from
run to run) for `finegrain stream status`. SIGTERM or SIGINT stops the query between batches.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pymongo.errors
import redis
import typer

from finegrain.events.archive import EventArchive
from finegrain.features.realtime import RealtimeConfig
from finegrain.settings import Settings, get_settings
from finegrain.storage.contract import KafkaTopics
from spark_jobs.stream import metrics
from spark_jobs.stream.batch import BatchOutcome, BatchProcessor, Record
from spark_jobs.stream.kafka_source import topic_end_offsets

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.streaming.listener import StreamingQueryProgress

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
LAG_INTERVAL_S = 5.0
SLOW_TRIGGER_MS = 1000
CHECKPOINT_FOLDER = "checkpoint"


@dataclass(frozen=True)
class SidecarConfig:
    """How the sidecar's query runs."""

    trigger_ms: int = 250
    """Processing-time trigger: how often a micro-batch starts (the floor of freshness)."""
    max_records_per_batch: int = 50_000
    """Most records one micro-batch reads, so a backlog is worked off in bounded steps."""
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    """The real-time profile's bounds and time constants."""


# A store unreachable mid-batch: the batch is processed again after a pause growing to this.
STORE_ERRORS = (redis.ConnectionError, redis.TimeoutError, pymongo.errors.ConnectionFailure)
STORE_RETRY_MAX_S = 5.0


def status_path(settings: Settings) -> Path:
    return settings.stream_dir / STATUS_FILE


def checkpoint_path(settings: Settings) -> Path:
    return settings.stream_dir / CHECKPOINT_FOLDER


def read_status(settings: Settings) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return None
    return status


class Sidecar:
    """The query and what it reports; `run` blocks until `stop` (or a signal) ends it."""

    def __init__(self, settings: Settings, config: SidecarConfig | None = None) -> None:
        self.settings = settings
        self.config = config or SidecarConfig()
        self.stopping = threading.Event()
        self.status: dict[str, Any] = {
            "state": "starting", "pid": os.getpid(), "started_at": _now(), "topic":
            KafkaTopics(settings.kafka_topic_prefix).events, "archive": settings.event_archive_location,
            "checkpoint": str(checkpoint_path(settings)), "batches": 0, "records": 0, "accepted": 0,
            "dead_letters": 0, "repeated": 0, "offsets": {}, "last_batch": None}
        # Totals and offsets go on from the previous run's (a batch it reported but did not commit is
        # replayed and counted again here; the profiles and the archive are not affected by that).
        previous = read_status(settings) or {}
        for name in ("batches", "records", "accepted", "dead_letters", "repeated", "offsets"):
            if isinstance(previous.get(name), type(self.status[name])):
                self.status[name] = previous[name]

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        from pyspark.sql import functions as F

        from finegrain.spark import spark_session
        from spark_jobs.stream.kafka_source import read_stream

        settings = self.settings
        host = settings.stream_metrics_bind.rpartition(":")[0] or "127.0.0.1"
        self.status["metrics"] = f"http://{host}:{metrics.serve(settings)}/metrics"
        self._write_status()
        spark = spark_session(settings, app_name="finegrain-sidecar", shuffle_partitions=2,
                              long_running=True)
        processor = BatchProcessor(settings, EventArchive.at(settings.event_archive_location),
                                   self.config.realtime)
        frame = read_stream(spark, settings, KafkaTopics(settings.kafka_topic_prefix).events,
                            max_records_per_batch=self.config.max_records_per_batch)

        def each_batch(batch: DataFrame, batch_id: int) -> None:
            table = batch.select("partition", "offset", "value",
                                 F.unix_millis("timestamp").alias("broker_ms")).toArrow()
            c = table.to_pydict()
            records = sorted((Record(int(p), int(o), bytes(v), int(ms or 0)) for p, o, v, ms in
                              zip(c["partition"], c["offset"], c["value"], c["broker_ms"], strict=True)),
                             key=lambda r: (r.partition, r.offset))
            self._record(self._process_until_stored(processor, batch_id, records))

        query = (frame.writeStream.queryName("finegrain_sidecar").foreachBatch(each_batch)
                 .option("checkpointLocation", str(checkpoint_path(settings)))
                 .trigger(processingTime=f"{self.config.trigger_ms} milliseconds").start())
        self.status["state"] = "running"
        self._write_status()
        log.info("sidecar running: topic %s, checkpoint %s", self.status["topic"], self.status["checkpoint"])
        threading.Thread(target=self._watch_lag, name="lag", daemon=True).start()
        try:
            reported = -1
            while query.isActive and not self.stopping.is_set():
                query.awaitTermination(1)
                reported = self._report_slow_triggers(query.recentProgress, reported)
            failure = query.exception()
            if failure is not None:
                raise RuntimeError(f"the sidecar's query failed: {failure}")
        finally:
            query.stop()
            processor.close()
            self.status["state"] = "stopped"
            self._write_status()

    def _process_until_stored(self, processor: BatchProcessor, batch_id: int, records: list[Record]
                              ) -> BatchOutcome:
        """The batch processed, however long Redis or MongoDB are away: the query waits (lag grows,
        nothing is read past the batch) instead of failing and stopping the sidecar, which a Redis or
        MongoDB restart did (tests/integration/test_faults.py). Processing a batch again is safe, as
        Spark's own replay is: the archive file is replaced, the profiles skip offsets already folded."""
        wait_s = 0.5
        while True:
            try:
                return processor.process(batch_id, records)
            except STORE_ERRORS as exc:
                if self.stopping.is_set():
                    raise
                log.warning("batch %d: a store is unreachable (%s: %s); processing it again in %.1f s",
                            batch_id, type(exc).__name__, str(exc).splitlines()[0][:200], wait_s)
                self.stopping.wait(wait_s)
                wait_s = min(wait_s * 2, STORE_RETRY_MAX_S)

    def _report_slow_triggers(self, progress: Sequence[StreamingQueryProgress], reported: int) -> int:
        """Log the phases of every trigger slower than `SLOW_TRIGGER_MS` (Spark's own durations: the
        source's offsets, planning, the batch, the checkpoint writes); returns the last batch seen."""
        for entry in progress:
            batch = int(entry.batchId)
            if batch <= reported:
                continue
            reported = batch
            durations = dict(entry.durationMs or {})
            if durations.get("triggerExecution", 0) > SLOW_TRIGGER_MS:
                log.warning("slow trigger, batch %d: %s", batch, json.dumps(durations, sort_keys=True))
        return reported

    def _watch_lag(self) -> None:
        """Every few seconds, the lag behind the topic's true end per partition, for the metrics."""
        while not self.stopping.wait(LAG_INTERVAL_S):
            try:
                ends = topic_end_offsets(self.settings, self.status["topic"])
            except Exception as exc:  # the broker may be away for a while: the metric just goes stale
                log.warning("lag unknown: %s", exc)
                continue
            done = self.status["offsets"]
            for partition, end in ends.items():
                metrics.LAG.labels(str(partition)).set(max(end - done.get(str(partition), 0), 0))

    def _record(self, outcome: BatchOutcome) -> None:
        metrics.BATCHES.inc()
        metrics.BATCH_SECONDS.observe(outcome.seconds)
        for name, count in (("accepted", outcome.accepted), ("dead_letter", outcome.dead_letters),
                            ("repeated", outcome.repeated)):
            if count:
                metrics.EVENTS.labels(name).inc(count)
        if outcome.newest_broker_ms:
            metrics.FRESHNESS.observe(max(time.time() - outcome.newest_broker_ms / 1000, 0.0))
        if outcome.newest_event_ms:
            metrics.NEWEST_EVENT.set(outcome.newest_event_ms / 1000)
        status = self.status
        status["batches"] += 1
        for name in ("records", "accepted", "dead_letters", "repeated"):
            status[name] += getattr(outcome, name)
        offsets = status["offsets"]
        for partition, end in outcome.end_offsets.items():
            offsets[str(partition)] = max(offsets.get(str(partition), 0), end)
        status["last_batch"] = {**asdict(outcome), "seconds": round(outcome.seconds, 4), "at": _now()}
        self._write_status()
        if outcome.records:
            log.info("batch %d: %d records, %d accepted, %d dead letters, %d users, %.3f s", outcome.batch_id,
                     outcome.records, outcome.accepted, outcome.dead_letters, outcome.users, outcome.seconds)

    def _write_status(self) -> None:
        path = status_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.status["updated_at"] = _now()
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump(self.status, handle, sort_keys=True)
        os.replace(handle.name, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def main(
    trigger_ms: Annotated[int, typer.Option(min=10, help="How often a micro-batch starts.")] = (
        SidecarConfig.trigger_ms),
    max_records_per_batch: Annotated[int, typer.Option(min=1, help="Most records one micro-batch reads.")] = (
        SidecarConfig.max_records_per_batch),
) -> None:
    """Run the streaming sidecar in the foreground until SIGTERM / SIGINT."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    sidecar = Sidecar(get_settings(), SidecarConfig(trigger_ms=trigger_ms,
                                                    max_records_per_batch=max_records_per_batch))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sidecar.stop())
    started = time.monotonic()
    sidecar.run()
    log.info("sidecar stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    typer.run(main)
