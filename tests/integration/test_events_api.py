"""POST /v1/events against the real local broker (tansu, Kafka protocol): accepted batches are read back
from the events topic field by field, refused batches leave the events topic untouched and reach the
dead-letter topic, and a broker that is down gives a quick 503, never an "accepted"."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import falcon
import falcon.testing
import pytest
from prometheus_client import REGISTRY

from finegrain.codecs import decode
from finegrain.events.schema import MAX_BODY_BYTES, MAX_EVENTS
from finegrain.schemas import BehaviorEvent, DeadLetter, EventBatch, EventContext, EventType
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics
from finegrain.storage.contract import KafkaTopics
from serving.api.events import EventsResource
from serving.app import api_app
from serving.config import ServingConfig
from serving.events.ingest import EventIngest
from serving.events.parsing import SOURCE
from serving.events.producer import EventProducer
from tests.integration.api_keys import api_key, bearer
from tests.integration.kafka_reader import TopicReader

pytestmark = pytest.mark.integration

DEC_1_2010_MS = 1291191960000
PROTOBUF = "application/x-protobuf"


@pytest.fixture(scope="module")
def topics(settings: Settings) -> KafkaTopics:
    names = KafkaTopics(settings.kafka_topic_prefix)
    ensure_topics(settings, [names.events, names.events_dead_letter])
    return names


@pytest.fixture(scope="module")
def events_topic(settings: Settings, topics: KafkaTopics) -> Iterator[TopicReader]:
    reader = TopicReader(settings, topics.events)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def dead_letters(settings: Settings, topics: KafkaTopics) -> Iterator[TopicReader]:
    reader = TopicReader(settings, topics.events_dead_letter)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def token(settings: Settings) -> str:
    return api_key(settings, "events", name="events-api-tests")


def _client(ingest: EventIngest, settings: Settings, token: str) -> falcon.testing.TestClient:
    """The events resource behind the API's own middleware: with auth on, as served."""
    app = api_app(settings, ServingConfig())
    app.add_route("/v1/events", EventsResource(ingest))
    return falcon.testing.TestClient(app, headers=bearer(token))


@pytest.fixture(scope="module")
def ingest(settings: Settings, topics: KafkaTopics) -> Iterator[EventIngest]:
    service = EventIngest.from_settings(settings, delivery_timeout_s=5.0)
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(ingest: EventIngest, settings: Settings, token: str) -> falcon.testing.TestClient:
    return _client(ingest, settings, token)


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("finegrain_events_total", {"outcome": outcome}) or 0.0


def test_a_json_batch_is_produced_keyed_by_user_in_order(
    client: falcon.testing.TestClient, ingest: EventIngest, events_topic: TopicReader
) -> None:
    assert ingest.producer._producer is None  # nothing connects before the first request (gunicorn forks)
    raw = [
        {"user_id": "13085", "item_id": "85048", "type": "view", "event_id": "a1"},
        {"user_id": "12347", "item_id": "21171", "type": "CLICK", "timestamp": DEC_1_2010_MS},
        {"user_id": "13085", "item_id": "85048", "type": "add_to_cart", "quantity": 12, "price": 6.95,
         "timestamp": "2010-12-01T09:26:00+01:00", "event_id": "a2",
         "context": {"scene": "product_detail", "session_id": "s-7", "country": "United Kingdom",
                     "device": "android", "request_id": "r-1", "extra": {"ab": "ranker-b"}}},
        {"user_id": "12347", "item_id": "22195", "type": "purchase", "quantity": 2, "price": 1.65},
        {"user_id": "13085", "item_id": "85048", "type": "Purchase", "quantity": 12, "price": 6.95,
         "event_id": "a3"},
    ]
    accepted_before = _count("accepted")
    started_ms = int(time.time() * 1000)
    result = client.simulate_post("/v1/events", json={"events": raw})
    finished_ms = int(time.time() * 1000)
    assert result.status_code == 202, result.text
    ids = result.json["event_ids"]
    assert result.json["accepted"] == 5 and len(ids) == 5
    assert [ids[0], ids[2], ids[4]] == ["a1", "a2", "a3"]
    assert uuid.UUID(ids[1]).version == 4 and uuid.UUID(ids[3]).version == 4
    assert _count("accepted") == accepted_before + 5
    messages = events_topic.read_new(5)
    received = {decode(BehaviorEvent, m.value()).event_id: (m, decode(BehaviorEvent, m.value()))
                for m in messages}
    expected = [
        BehaviorEvent(event_id="a1", user_id="13085", item_id="85048", type=EventType.VIEW, quantity=1),
        BehaviorEvent(event_id=ids[1], user_id="12347", item_id="21171", type=EventType.CLICK, quantity=1,
                      timestamp_ms=DEC_1_2010_MS),
        BehaviorEvent(event_id="a2", user_id="13085", item_id="85048", type=EventType.ADD_TO_CART,
                      quantity=12, price=6.95, timestamp_ms=DEC_1_2010_MS,
                      context=EventContext(scene="product_detail", session_id="s-7", country="United Kingdom",
                                           device="android", request_id="r-1", extra={"ab": "ranker-b"})),
        BehaviorEvent(event_id=ids[3], user_id="12347", item_id="22195", type=EventType.PURCHASE, quantity=2,
                      price=1.65),
        BehaviorEvent(event_id="a3", user_id="13085", item_id="85048", type=EventType.PURCHASE, quantity=12,
                      price=6.95),
    ]
    for want in expected:
        message, got = received[want.event_id]
        assert message.key() == want.user_id.encode()
        if not want.timestamp_ms:  # defaulted to the time of the request
            assert started_ms <= got.timestamp_ms <= finished_ms
            want.timestamp_ms = got.timestamp_ms
        assert got == want
    # A user's events share a key, hence a partition, hence their order.
    for user in ("13085", "12347"):
        mine = [m for m in messages if m.key() == user.encode()]
        assert len({m.partition() for m in mine}) == 1
        order = [decode(BehaviorEvent, m.value()).event_id for m in sorted(mine, key=lambda m: m.offset())]
        assert order == [e.event_id for e in expected if e.user_id == user]


def test_a_protobuf_batch_is_produced_as_sent(
    client: falcon.testing.TestClient, events_topic: TopicReader
) -> None:
    batch = EventBatch(events=[
        BehaviorEvent(event_id=f"p{n}", user_id=f"1234{n % 2}", item_id="84879", type=EventType.PURCHASE,
                      quantity=n + 1, price=1.69, timestamp_ms=DEC_1_2010_MS + n,
                      context=EventContext(scene="cart", extra={"n": str(n)}))
        for n in range(4)
    ])
    result = client.simulate_post("/v1/events", body=batch.SerializeToString(),
                                  content_type=f"{PROTOBUF}; proto=finegrain.v1.EventBatch")
    assert result.status_code == 202, result.text
    assert result.json == {"accepted": 4, "event_ids": ["p0", "p1", "p2", "p3"]}
    messages = events_topic.read_new(4)
    by_id = {decode(BehaviorEvent, m.value()).event_id: m for m in messages}
    for sent in batch.events:
        assert decode(BehaviorEvent, by_id[sent.event_id].value()) == sent
        assert by_id[sent.event_id].key() == sent.user_id.encode()


GOOD = {"user_id": "13085", "item_id": "85048", "type": "view"}


def _json(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


FUTURE_MS = int(time.time() * 1000) + 3_600_000
BAD_INPUTS = [  # name, content type, body, field named by the 400, dead letters
    ("missing user_id", "application/json", _json(GOOD, _without("user_id")), "events[1].user_id", 1),
    ("bad type", "application/json", _json({**GOOD, "type": "like"}), "events[0].type", 1),
    ("quantity 0", "application/json", _json({**GOOD, "quantity": 0}), "events[0].quantity", 1),
    ("future timestamp", "application/json", _json({**GOOD, "timestamp": FUTURE_MS}),
     "events[0].timestamp", 1),
    ("unknown field", "application/json", _json(GOOD, {**_without("user_id"), "user": "1"}),
     "events[1].user", 1),
    ("501 events", "application/json", _json(*[GOOD] * (MAX_EVENTS + 1)), "events", 1),
    ("oversized body", "application/json", b" " * (MAX_BODY_BYTES + 1), "body", 1),
    ("malformed JSON", "application/json", b'{"events": [{"user_id": "1",', "body", 1),
    ("malformed protobuf", PROTOBUF, b"\x0a\xff\xff\xff\x0f", "body", 1),
    ("empty batch", "application/json", b'{"events": []}', "events", 1),
    ("protobuf without type", PROTOBUF,
     EventBatch(events=[BehaviorEvent(user_id="1", item_id="2")]).SerializeToString(), "events[0].type", 1),
]


@pytest.mark.parametrize(("content_type", "body", "field", "letters"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_a_400_or_413_naming_the_field_and_reaches_only_the_dead_letter_topic(
    client: falcon.testing.TestClient, events_topic: TopicReader, dead_letters: TopicReader,
    content_type: str, body: bytes, field: str, letters: int,
) -> None:
    events_before = events_topic.watermarks()
    result = client.simulate_post("/v1/events", body=body, content_type=content_type)
    oversized = field == "body" and len(body) > MAX_BODY_BYTES
    status = 413 if oversized else 400
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert (error["status"], error["field"]) == (status, field)
    if oversized:
        assert error["code"] == "body_too_large" and f"at most {MAX_BODY_BYTES:,} bytes" in error["message"]
    else:
        assert error["code"] in ("invalid_event", "invalid_body")
    [letter] = [decode(DeadLetter, m.value()) for m in dead_letters.read_new(letters)]
    assert (letter.field, letter.source) == (field, SOURCE)
    assert letter.reason and letter.received_ms > 0
    if oversized:
        assert letter.payload == b""  # refused on Content-Length, never read
    elif field.startswith("events[") and content_type == PROTOBUF:
        assert letter.payload == EventBatch.FromString(body).events[0].SerializeToString()
    elif field.startswith("events["):
        index = int(field[len("events["):].split("]")[0])
        assert json.loads(letter.payload) == json.loads(body)["events"][index]
    else:
        assert body.startswith(letter.payload) and letter.payload
    assert events_topic.watermarks() == events_before


def test_every_bad_event_of_a_batch_is_listed_and_dead_lettered(
    client: falcon.testing.TestClient, events_topic: TopicReader, dead_letters: TopicReader
) -> None:
    batch = [GOOD, {**GOOD, "quantity": 0}, GOOD, {**GOOD, "price": -1, "type": "buy"}]
    events_before, rejected_before = events_topic.watermarks(), _count("rejected")
    result = client.simulate_post("/v1/events", json={"events": batch})
    assert result.status_code == 400
    error = result.json["error"]
    assert error["field"] == "events[1].quantity"
    assert [(d["index"], d["field"]) for d in error["details"]] == [
        (1, "events[1].quantity"), (3, "events[3].type"), (3, "events[3].price")]
    assert "2 of 4 events are invalid" in error["message"]
    letters = [decode(DeadLetter, m.value()) for m in dead_letters.read_new(2)]
    assert sorted(json.loads(letter.payload)["quantity" if "quantity" in letter.field else "price"]
                  for letter in letters) == [-1, 0]
    assert events_topic.watermarks() == events_before
    assert _count("rejected") == rejected_before + 4


def test_only_a_key_with_the_events_scope_may_post_and_a_refusal_produces_nothing(
    client: falcon.testing.TestClient, settings: Settings, events_topic: TopicReader,
    dead_letters: TopicReader,
) -> None:
    reader_key = api_key(settings, "recommend", name="events-api-reader")
    before, letters_before = events_topic.watermarks(), dead_letters.watermarks()
    forbidden = client.simulate_post("/v1/events", json={"events": [GOOD]}, headers=bearer(reader_key))
    assert forbidden.status_code == 403 and forbidden.json["error"]["code"] == "insufficient_scope"
    assert 'scope="events"' in forbidden.headers["WWW-Authenticate"]
    anonymous = client.simulate_post("/v1/events", json={"events": [GOOD]}, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json["error"]["code"] == "missing_key"
    time.sleep(0.5)
    assert events_topic.watermarks() == before and dead_letters.watermarks() == letters_before


def test_another_content_type_is_a_415_in_json(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/events", body="user_id=1", content_type="text/plain")
    assert result.status_code == 415
    assert result.json["error"]["field"] == "Content-Type"
    assert "application/json" in result.json["error"]["message"]


def test_a_broker_that_is_down_gives_a_quick_503_and_nothing_is_accepted(settings: Settings, token: str
                                                                        ) -> None:
    down = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    accepted_before, failed_before = _count("accepted"), _count("failed")
    # Once through the topic check on first use, once with the topics assumed to exist (the produce path).
    for producer in (EventProducer(down, delivery_timeout_s=1.0),
                     EventProducer(down, delivery_timeout_s=1.0, create_topics=False)):
        client = _client(EventIngest(producer), settings, token)
        started = time.monotonic()
        result = client.simulate_post("/v1/events", json={"events": [GOOD, GOOD]})
        assert time.monotonic() - started < 4.0
        assert result.status_code == 503, result.text
        error = result.json["error"]
        assert error["code"] == "unavailable"
        assert "127.0.0.1:1" in error["message"] and "Traceback" not in result.text
        # Known to be down, the next batch is refused at once (a TCP probe), not after the delivery
        # bound: a sync worker is not held while the broker is away.
        started = time.monotonic()
        again = client.simulate_post("/v1/events", json={"events": [GOOD]})
        assert again.status_code == 503 and time.monotonic() - started < 1.0, again.text
        # A bad batch is still a 400: the dead letter is best effort and never turns it into a 5xx.
        assert client.simulate_post("/v1/events", json={"events": [{}]}).status_code == 400
        producer.close(timeout_s=0.1)
    assert _count("accepted") == accepted_before
    assert _count("failed") == failed_before + 6


def test_a_forked_worker_makes_its_own_producer(
    client: falcon.testing.TestClient, ingest: EventIngest, events_topic: TopicReader
) -> None:
    assert client.simulate_post("/v1/events", json={"events": [GOOD]}).status_code == 202
    events_topic.read_new(1)
    inherited = ingest.producer._producer
    assert inherited is not None
    pid = os.fork()
    if pid == 0:  # the child, like a gunicorn worker forked after the parent used the producer
        try:
            result = client.simulate_post("/v1/events", json={"events": [{**GOOD, "event_id": "forked"}]})
            fresh = ingest.producer._producer is not inherited
            os._exit(0 if result.status_code == 202 and fresh else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked worker hung producing its event")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    [message] = events_topic.read_new(1)
    assert decode(BehaviorEvent, message.value()).event_id == "forked"
    assert ingest.producer._producer is inherited  # the parent keeps its own


def test_close_flushes_and_a_later_request_reconnects(
    settings: Settings, topics: KafkaTopics, events_topic: TopicReader, token: str
) -> None:
    service = EventIngest.from_settings(settings, delivery_timeout_s=5.0)
    client = _client(service, settings, token)
    assert client.simulate_post("/v1/events", json={"events": [GOOD]}).status_code == 202
    service.close()
    assert service.producer._producer is None
    assert client.simulate_post("/v1/events", json={"events": [GOOD]}).status_code == 202
    service.close()
    assert len(events_topic.read_new(2)) == 2
