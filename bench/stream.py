"""Streaming sidecar benchmark: sustained throughput Kafka -> Spark -> Redis profiles + archive, and
freshness from `POST /v1/events` returning to the profile in Redis reflecting the event.

1. Throughput: `--events` valid events (over `--users` users) are produced to a topic of the run's own,
   then the sidecar is started on that backlog; the rate is events over the time between 10% and 100%
   of them processed (steady state, without the Spark start), next to the rate including the start.
2. Freshness: events are posted to the events resource over HTTP at a steady `--rate` for `--seconds`
   (`--per-request` events a POST, 4 posting threads, a threaded server), each event for a user of
   its own; a poller reads the profiles every 5 ms and records when each first appears, counted from
   the moment its POST returned, after `--warmup` seconds at the rate that are not measured (the
   first micro-batches start Spark's Python workers). p50 / p95 / p99, and a histogram PNG.

Runs in a namespace of its own (Redis database `--redis-db`, flushed before and after; a fresh topic
prefix; a temporary var dir for the checkpoint and archive), so a running demo is not disturbed.
Targets (issue 10): >= 20,000 events/s; freshness p95 <= 1 s (must: < 2 s).

Usage: .venv/bin/python bench/stream.py [--events 200000] [--rate 200] [--seconds 30] [--json]
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Annotated, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import numpy as np
import typer

from finegrain.apikeys import MAX_RATE_PER_S, KeyStore
from finegrain.codecs import encode
from finegrain.console import console, print_json_line, summary_table
from finegrain.schemas import BehaviorEvent, EventType
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.storage.clients import ensure_topics, kafka_producer, redis_client
from finegrain.storage.contract import KafkaTopics, RedisKeys
from serving.api.events import EventsResource
from serving.app import api_app
from serving.config import ServingConfig
from serving.events.ingest import EventIngest
from spark_jobs.stream.process import SidecarProcess
from spark_jobs.stream.sidecar import SidecarConfig

DEFAULT_OUT = PROJECT_ROOT / "var" / "reports" / "stream"
POSTERS = 4  # threads posting the freshness run's events


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def bench_settings(redis_db: int, folder: Path) -> Settings:
    base = get_settings()
    host, port = base.redis_address()
    return base.model_copy(update={
        "redis_url": f"redis://{host}:{port}/{redis_db}", "var_dir": folder,
        "kafka_topic_prefix": f"fgbench_{uuid.uuid4().hex[:8]}", "stream_metrics_bind": "127.0.0.1:0",
        "mongo_database": base.mongo_database})


def wait_until(condition: Any, timeout_s: float, what: str, step_s: float = 0.05) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(step_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def throughput(settings: Settings, events: int, users: int) -> dict[str, Any]:
    topics = KafkaTopics(settings.kafka_topic_prefix)
    ensure_topics(settings, [topics.events, topics.events_dead_letter])
    producer = kafka_producer(settings, **{"linger.ms": 20, "batch.num.messages": 10000})
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for n in range(events):
        user = f"tp-{n % users}"
        event = BehaviorEvent(event_id=f"tp-{n}", user_id=user, item_id=f"item-{n % 3000}",
                              type=(EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART)[n % 3],
                              quantity=1, timestamp_ms=now - events + n)
        while True:
            try:
                producer.produce(topics.events, value=encode(event), key=user.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if n % 10000 == 0:
            producer.poll(0)
    producer.flush(60)
    produce_seconds = time.perf_counter() - started
    process = SidecarProcess(settings, SidecarConfig(trigger_ms=100, max_records_per_batch=50_000))
    start_wall = time.monotonic()
    process.start()

    def accepted() -> int:
        return int(process.status().get("accepted") or 0)

    t10 = wait_until(lambda: accepted() >= events // 10, 600, "10% processed", 0.02)
    done_at_10 = accepted()
    t100 = wait_until(lambda: accepted() >= events, 600, "every event processed", 0.02)
    status = process.status()
    process.stop()
    steady = (events - done_at_10) / max(t100 - t10, 1e-9)
    return {"events": events, "users": users, "produce_seconds": round(produce_seconds, 1),
            "events_per_second_steady": round(steady), "events_per_second_with_start":
            round(events / (t100 - start_wall)), "batches": status.get("batches"),
            "dead_letters": status.get("dead_letters")}


def freshness(settings: Settings, rate: float, seconds: float, per_request: int, warmup_s: float
              ) -> dict[str, Any]:
    topics = KafkaTopics(settings.kafka_topic_prefix)
    ensure_topics(settings, [topics.events, topics.events_dead_letter])
    process = SidecarProcess(settings, SidecarConfig(trigger_ms=100, max_records_per_batch=50_000))
    process.start()
    ingest = EventIngest.from_settings(settings, delivery_timeout_s=5.0)
    # The events resource behind the API's own middleware: authenticated posts, as clients make them.
    app = api_app(settings, ServingConfig())
    app.add_route("/v1/events", EventsResource(ingest))
    with KeyStore(settings) as store:
        key, token, _ = store.create("bench-stream", ["events"], rate_per_s=MAX_RATE_PER_S)
    headers = {"Authorization": f"Bearer {token}"}
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadedServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = redis_client(settings)
    pending: dict[str, float] = {}
    delays: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or pending:
            with lock:
                users = list(pending)
            if users:
                present = client.mget([RedisKeys.realtime_profile(u) for u in users])
                seen = time.monotonic()
                with lock:
                    for user, value in zip(users, present, strict=True):
                        if value is not None:
                            delays.append(seen - pending.pop(user))
            time.sleep(0.005)
            if stop.is_set() and time.monotonic() > stop_deadline:
                break

    stop_deadline = float("inf")
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    url = f"http://127.0.0.1:{server.server_port}/v1/events"
    with httpx.Client(timeout=10, headers=headers) as http:
        # Warm-up: the query's first batch starts Spark's Python workers.
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        http.post(url, json={"events": [{"user_id": warm, "item_id": "85048", "type": "view"}]})
        wait_until(lambda: client.exists(RedisKeys.realtime_profile(warm)), 120, "the warm-up event")

    def phase(length_s: float) -> float:
        """Post at the rate for `length_s` seconds; returns the rate achieved."""
        count = int(rate * length_s)
        begin = time.monotonic()

        def post(first: int) -> None:
            # Each poster sends every POSTERS-th request on schedule: a POST waits for the broker's
            # acknowledgement (about 10 ms here), so one synchronous client cannot keep the rate alone.
            with httpx.Client(timeout=10, headers=headers) as http:
                for n in range(first, count // per_request, POSTERS):
                    if (wait := begin + n * per_request / rate - time.monotonic()) > 0:
                        time.sleep(wait)
                    users = [f"fr-{uuid.uuid4().hex[:10]}" for _ in range(per_request)]
                    body = {"events": [{"user_id": u, "item_id": "85048", "type": "view"} for u in users]}
                    http.post(url, json=body).raise_for_status()
                    returned = time.monotonic()
                    with lock:
                        pending.update(dict.fromkeys(users, returned))

        posters = [threading.Thread(target=post, args=(first,)) for first in range(POSTERS)]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join()
        return count / (time.monotonic() - begin)

    # Warm-up at the rate: the query's first micro-batches start Spark's Python workers and take
    # seconds each; what is measured is the steady state after them.
    phase(warmup_s)
    wait_until(lambda: not pending, 60, "the warm-up events")
    with lock:
        delays.clear()
    achieved = phase(seconds)
    stop_deadline = time.monotonic() + 30
    stop.set()
    poller.join(40)
    server.shutdown()
    ingest.close()
    process.stop()
    with KeyStore(settings) as store:
        store.revoke(key.key_id)
    values = np.asarray(delays)
    lost = len(pending)
    return {"rate": rate, "events_per_request": per_request, "warmup_s": warmup_s,
            "achieved_rate": round(achieved, 1),
            "events": len(values) + lost, "not_seen": lost,
            "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 1),
            "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1),
            "max_ms": round(float(values.max()) * 1000, 1), "delays_s": values}


def plot(delays: np.ndarray, figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    axis.hist(delays * 1000, bins=60, color="#3b7dd8")
    for name, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
        axis.axvline(figures[name], color="black", linestyle=style,
                     label=f"{name[:3]} {figures[name]:.0f} ms")
    axis.set_xlabel("POST /v1/events returned -> profile in Redis (ms)")
    axis.set_ylabel("events")
    axis.set_title(f"Freshness at {figures['achieved_rate']:.0f} events/s ({figures['events']:,} events)")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(
    events: Annotated[int, typer.Option(help="Events produced for the throughput run.")] = 200_000,
    users: Annotated[int, typer.Option(help="Users they are spread over.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Events per second of the freshness run.")] = 200.0,
    seconds: Annotated[float, typer.Option(help="Length of the freshness run.")] = 30.0,
    per_request: Annotated[int, typer.Option(help="Events per POST of the freshness run.")] = 4,
    warmup: Annotated[float, typer.Option(
        help="Seconds posted at the rate before the freshness run is measured (the first micro-batches "
        "start Spark's workers).")] = 10.0,
    redis_db: Annotated[int, typer.Option(help="Redis database of the run (flushed before and after).")] = 2,
    out: Annotated[Path, typer.Option(help="Folder of the histogram PNG.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the figures as one JSON line.")] = False,
) -> None:
    """Measure the sidecar's throughput and freshness."""
    with tempfile.TemporaryDirectory(prefix="fg-stream-bench-") as folder:
        settings = bench_settings(redis_db, Path(folder))
        redis_client(settings).flushdb()
        try:
            console.print(f"throughput: producing {events:,} events, then the sidecar on the backlog ...")
            through = throughput(settings, events, users)
            redis_client(settings).flushdb()
            console.print(f"freshness: {rate:g} events/s for {seconds:g} s through HTTP ...")
            fresh_settings = settings.model_copy(update={
                "kafka_topic_prefix": settings.kafka_topic_prefix + "f", "var_dir": Path(folder) / "fresh"})
            fresh = freshness(fresh_settings, rate, seconds, per_request, warmup)
        finally:
            redis_client(settings).flushdb()
    delays = fresh.pop("delays_s")
    plot(delays, fresh, out / "freshness.png")
    rows = [(f"throughput {k}", v) for k, v in through.items()]
    rows += [(f"freshness {k}", v) for k, v in fresh.items()]
    console.print(summary_table("Streaming sidecar", rows, ["figure", "value"]))
    console.print(f"plot: {out / 'freshness.png'}")
    if as_json:
        print_json_line({"throughput": through, "freshness": fresh, "plot": str(out / "freshness.png")})


if __name__ == "__main__":
    typer.run(main)
