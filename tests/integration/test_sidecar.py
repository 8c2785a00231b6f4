"""The streaming sidecar against the real stack: events posted through the API reach the real-time
profile within the freshness budget; killed with SIGKILL mid-stream and restarted, it loses no event
and counts none twice, in Redis and in the archive; bad records land in the dead-letter topic with
their reasons while the query goes on; a replayed day reaches the archive, and the nightly ingest of
that archive adds none of its purchases twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import falcon.testing
import httpx
import pandas as pd
import pytest
import redis
from pydantic import SecretStr

from finegrain.apikeys import bearer_headers
from finegrain.codecs import decode, encode
from finegrain.data.ingest import ARCHIVE, ingest
from finegrain.data.replay import Replayer, replay_events, summarise
from finegrain.data.retail import read_events
from finegrain.events.archive import EventArchive
from finegrain.schemas import BehaviorEvent, DeadLetter, EventType, RealtimeProfile
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, kafka_producer
from finegrain.storage.contract import KafkaTopics, RedisKeys
from serving.api.events import EventsResource
from serving.app import FinegrainApp, api_app
from serving.config import ServingConfig
from serving.events.ingest import EventIngest
from spark_jobs.stream.process import SidecarProcess
from spark_jobs.stream.sidecar import SidecarConfig
from tests.integration.api_keys import api_key, bearer
from tests.integration.kafka_reader import TopicReader

pytestmark = pytest.mark.integration

FRESHNESS_BUDGET_S = 2.0  # the must; the target (p95 <= 1 s) is measured by bench/


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def stream_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's stores, with a var dir (checkpoint, status, archive) of this module's own and a
    topic prefix of its own, so the records it counts are only its own."""
    folder = tmp_path_factory.mktemp("stream")
    own = settings.model_copy(update={"var_dir": folder, "stream_metrics_bind": "127.0.0.1:0",
                                      "kafka_topic_prefix": settings.kafka_topic_prefix + "s"})
    topics = KafkaTopics(own.kafka_topic_prefix)
    ensure_topics(own, [topics.events, topics.events_dead_letter])
    return own


@pytest.fixture(scope="module")
def sidecar(stream_settings: Settings) -> Iterator[SidecarProcess]:
    process = SidecarProcess(stream_settings, SidecarConfig(trigger_ms=100, max_records_per_batch=500))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def events_key(stream_settings: Settings) -> str:
    return api_key(stream_settings, "events", name="sidecar-tests")


def events_app(settings: Settings, ingest: EventIngest) -> FinegrainApp:
    """The events resource behind the API's own middleware (auth on)."""
    app = api_app(settings, ServingConfig())
    app.add_route("/v1/events", EventsResource(ingest))
    return app


@pytest.fixture(scope="module")
def api(stream_settings: Settings, events_key: str) -> Iterator[falcon.testing.TestClient]:
    ingest = EventIngest.from_settings(stream_settings, delivery_timeout_s=5.0)
    yield falcon.testing.TestClient(events_app(stream_settings, ingest), headers=bearer(events_key))
    ingest.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_api(stream_settings: Settings) -> Iterator[str]:
    """The events resource behind a real HTTP server on loopback (what `finegrain replay` posts to)."""
    ingest = EventIngest.from_settings(stream_settings, delivery_timeout_s=5.0)
    server = make_server("127.0.0.1", 0, events_app(stream_settings, ingest), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    ingest.close()


def profile(client: redis.Redis, user_id: str) -> RealtimeProfile | None:
    value = client.get(RedisKeys.realtime_profile(user_id))
    return None if value is None else decode(RealtimeProfile, bytes(value))  # type: ignore[arg-type]


def test_a_posted_event_reaches_the_profile_within_the_budget(
        sidecar: SidecarProcess, api: falcon.testing.TestClient, client: redis.Redis) -> None:
    user = f"fresh-{uuid.uuid4().hex[:6]}"
    delays = []
    for n, (item, kind) in enumerate([("85048", "view"), ("21171", "click"), ("85048", "add_to_cart")]):
        result = api.simulate_post("/v1/events", json={"events": [
            {"user_id": user, "item_id": item, "type": kind, "context": {"session_id": "s-1"}}]})
        assert result.status_code == 202, result.text
        posted = time.monotonic()
        wait_for(lambda n=n: (p := profile(client, user)) is not None and len(p.recent) == n + 1,
                 FRESHNESS_BUDGET_S + 30 * (n == 0), f"event {n} in {user}'s profile")
        delays.append(time.monotonic() - posted)
    # The first one may wait for the query's Python workers to start; the next ones must be fresh.
    assert max(delays[1:]) < FRESHNESS_BUDGET_S, delays
    latest = profile(client, user)
    assert latest is not None
    assert [(r.item_id, r.type) for r in latest.recent] == [
        ("85048", EventType.ADD_TO_CART), ("21171", EventType.CLICK), ("85048", EventType.VIEW)]
    assert dict(latest.counts_by_type) == {EventType.VIEW: 1, EventType.CLICK: 1, EventType.ADD_TO_CART: 1}
    assert latest.session_id == "s-1" and list(latest.session_items) == ["85048", "21171"]
    assert client.ttl(RedisKeys.realtime_profile(user)) > 0


def test_bad_records_become_dead_letters_and_the_stream_goes_on(
        sidecar: SidecarProcess, stream_settings: Settings, client: redis.Redis) -> None:
    topics = KafkaTopics(stream_settings.kafka_topic_prefix)
    dead = TopicReader(stream_settings, topics.events_dead_letter)
    now = int(time.time() * 1000)
    good_user = f"after-{uuid.uuid4().hex[:6]}"

    def event(**changes: object) -> bytes:
        fields: dict[str, object] = {"event_id": uuid.uuid4().hex, "user_id": "u-bad", "item_id": "85048",
                                     "type": EventType.VIEW, "quantity": 1, "timestamp_ms": now}
        fields.update(changes)
        return encode(BehaviorEvent(**fields))  # type: ignore[arg-type]

    bad = [b"\xff\xfe not protobuf", event(user_id=""), event(type=9), event(timestamp_ms=now + 86_400_000),
           event(timestamp_ms=12_345)]
    producer = kafka_producer(stream_settings)
    for value in [*bad, event(user_id=good_user)]:
        producer.produce(topics.events, value=value, key=b"k")
    producer.flush(10)
    letters = [decode(DeadLetter, m.value()) for m in dead.read_new(len(bad), timeout_s=30)]
    dead.close()
    assert sorted(letter.payload for letter in letters) == sorted(bad)
    reasons = {letter.payload: (letter.field, letter.reason) for letter in letters}
    assert reasons[bad[0]][0] == "value" and "undecodable" in reasons[bad[0]][1]
    assert reasons[bad[1]][0] == "user_id"
    assert reasons[bad[2]][0] == "type"
    assert reasons[bad[3]][0] == "timestamp_ms" and "future" in reasons[bad[3]][1]
    assert reasons[bad[4]][0] == "timestamp_ms" and "2000-01-01" in reasons[bad[4]][1]
    assert all(letter.source.startswith(topics.events + "[") for letter in letters)
    wait_for(lambda: profile(client, good_user) is not None, 10, "the good event after the bad ones")
    assert profile(client, "u-bad") is None


def test_a_killed_sidecar_loses_nothing_and_counts_nothing_twice(
        sidecar: SidecarProcess, stream_settings: Settings, client: redis.Redis) -> None:
    topics = KafkaTopics(stream_settings.kafka_topic_prefix)
    users = [f"kill-{uuid.uuid4().hex[:6]}-{n}" for n in range(40)]
    now = int(time.time() * 1000)
    produced: dict[str, BehaviorEvent] = {}
    producer = kafka_producer(stream_settings)
    # 6,000 events over 40 users, all inside the profile's 30-minute window: each user's counts must
    # come out at exactly their number of events, and the archive must hold each event once.
    for n in range(6000):
        user = users[n % len(users)]
        event = BehaviorEvent(event_id=f"kill-{n}", user_id=user, item_id=f"item-{n % 97}",
                              type=(EventType.VIEW, EventType.CLICK)[n % 2],  # type: ignore[arg-type]
                              quantity=1, timestamp_ms=now - 600_000 + n * 50)
        produced[event.event_id] = event
        producer.produce(topics.events, value=encode(event), key=user.encode())
        if n % 1000 == 999:
            producer.flush(10)
    producer.flush(10)

    def accepted() -> int:
        return int(sidecar.status().get("accepted") or 0)

    before = accepted()
    wait_for(lambda: accepted() > before + 500, 60, "the sidecar to be mid-stream")
    sidecar.kill()
    assert accepted() - before < len(produced), "the kill came too late to be mid-stream"
    sidecar.start()
    wait_for(lambda: all(v == 0 for v in (sidecar.status().get("lag") or {"?": 1}).values()), 120,
             "the restarted sidecar to catch up with the topic")

    archived = EventArchive.at(stream_settings.event_archive_location).read().to_pandas()
    ours = archived[archived["event_id"].str.startswith("kill-")]
    assert len(ours) == len(produced) and set(ours["event_id"]) == set(produced)
    expected = Counter(event.user_id for event in produced.values())
    for user in users:
        stored = profile(client, user)
        assert stored is not None
        assert sum(stored.counts_by_type.values()) == expected[user], user


def test_a_replayed_day_reaches_the_archive_and_the_profiles(
        sidecar: SidecarProcess, stream_settings: Settings, http_api: str, retail_data: Path, events_key: str,
        client: redis.Redis, tmp_path: Path) -> None:
    day = date(2010, 12, 1)
    planned = replay_events(read_events(retail_data), day, date(2010, 12, 2))
    # The key as `finegrain replay` sends it: FINEGRAIN_API_KEY as a Bearer token.
    client_settings = stream_settings.model_copy(update={"api_key": SecretStr(events_key)})
    replayer = Replayer(http_api, speed=0, headers=bearer_headers(client_settings))
    summary = replayer.post(planned, summarise(planned, day, date(2010, 12, 2)))
    replayer.close()
    assert summary.posted == len(planned) and summary.purchases > 1000 and summary.synthetic > 0
    wait_for(lambda: all(v == 0 for v in (sidecar.status().get("lag") or {"?": 1}).values()), 120,
             "the sidecar to fold the replayed day")
    archived = EventArchive.at(stream_settings.event_archive_location).read().to_pandas()
    replayed = archived[archived["event_id"].isin({e["event_id"] for e in planned})]
    assert len(replayed) == len(planned)
    assert set(replayed["timestamp"].dt.date.astype(str)) == {"2010-12-01"}
    assert (replayed["event_type"] == "purchase").sum() == summary.purchases
    last = planned[-1]
    stored = profile(client, last["user_id"])
    assert stored is not None and stored.recent[0].item_id == last["item_id"]
    assert stored.updated_ms == max(e["timestamp"] for e in planned if e["user_id"] == last["user_id"])

    # The nightly ingest of the next day over what the sidecar archived and the raw file: the replayed
    # purchases carry the CSV lines' ids, so they are dropped against them; the synthetic views and
    # clicks stay in the archive; the other tests' events of today wait for a later date.
    out = tmp_path / "ingested"
    report = ingest(date(2010, 12, 2), out, sources=[stream_settings.source_csv],
                    archive=EventArchive.at(stream_settings.event_archive_location))
    sources = {source.kind: source for source in report.sources}
    assert sources[ARCHIVE].duplicates == summary.purchases and sources[ARCHIVE].added == 0
    assert sources[ARCHIVE].other_types == summary.synthetic
    assert sources[ARCHIVE].later == len(archived) - len(replayed)
    csv_lines = read_events(retail_data)
    before = csv_lines[csv_lines["timestamp"] < pd.Timestamp("2010-12-02", tz="UTC")].reset_index(drop=True)
    assert read_events(out).equals(before)


def test_status_and_metrics_report_offsets_lag_and_events(sidecar: SidecarProcess) -> None:
    state = sidecar.status()
    assert state["running"] and state["state"] == "running"
    assert set(state["lag"]) == set(state["end_offsets"])
    assert Path(state["checkpoint"]).is_dir()
    text = httpx.get(state["metrics"], timeout=5).text
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['finegrain_stream_events_total{outcome="accepted"}'] > 0  # since the last start
    assert 'finegrain_stream_batch_seconds_count' in samples
    assert samples["finegrain_stream_freshness_seconds_count"] > 0
    wait_for(lambda: "finegrain_stream_lag_records{" in httpx.get(state["metrics"], timeout=5).text, 15,
             "the lag gauge")
