"""Protobuf values through each real store, with the names of the storage contract."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from finegrain.codecs import decode, encode
from finegrain.schemas import BehaviorEvent, ItemFeatures, ModelManifest, UserProfile
from finegrain.settings import Settings
from finegrain.storage.catalog import publish_catalog
from finegrain.storage.clients import (
    ensure_topics,
    kafka_consumer,
    kafka_producer,
    mongo_database,
    redis_client,
    zookeeper_client,
)
from finegrain.storage.contract import Dataset, KafkaTopics, MongoCollections, RedisKeys, ZkPaths
from finegrain.storage.versions import MongoVersions
from tests.unit.examples import examples

pytestmark = pytest.mark.integration


def test_redis_keeps_protobuf_bytes(settings: Settings) -> None:
    profile = examples()["UserProfile"]
    client = redis_client(settings)
    key = RedisKeys.user_profile("20101209T000000", "13085")
    client.set(key, encode(profile))
    assert decode(UserProfile, client.get(key)) == profile  # type: ignore[arg-type]


def test_mongo_versions_switch_and_keep_one_for_rollback(settings: Settings) -> None:
    # A database of its own: the features job's tests keep versions of the same dataset.
    own = settings.model_copy(update={"mongo_database": f"{settings.mongo_database}_versions"})
    database = mongo_database(own)
    versions = MongoVersions(database)
    for n, version in enumerate(["v1", "v2", "v3"], start=1):
        assert (
            versions.write(Dataset.FEATURES, version, ({"_id": str(i), "n": n} for i in range(12_000)))
            == 12_000
        )
        versions.switch(Dataset.FEATURES, version)
    assert versions.current(Dataset.FEATURES) == "v3"
    assert versions.prune(Dataset.FEATURES) == ["v1"]
    assert versions.versions(Dataset.FEATURES) == ["v2", "v3"]
    with pytest.raises(ValueError, match="is current"):
        versions.write(Dataset.FEATURES, "v3", [{"_id": "x"}])
    with pytest.raises(ValueError, match="never written"):
        versions.switch(Dataset.FEATURES, "v9")
    assert versions.current(Dataset.FEATURES) == "v3"
    database.client.drop_database(own.mongo_database)


def test_catalog_publish_writes_a_new_version_and_switches(settings: Settings) -> None:
    catalog = pd.DataFrame(
        {
            "item_id": ["85048", "79323P"],
            "description": ["15CM CHRISTMAS GLASS BALL 20 LIGHTS", "PINK CHERRY LIGHTS"],
            "price": [6.95, 6.75],
            "first_seen": pd.to_datetime(["2009-12-01 07:45", "2009-12-01 07:45"]),
            "last_seen": pd.to_datetime(["2010-12-09 12:00", "2010-11-30 10:00"]),
            "lines": [100, 50],
        }
    )
    first = publish_catalog(settings, catalog, version="c1")
    second = publish_catalog(settings, catalog.head(1), version="c2")
    assert (first.items, first.previous, second.previous) == (2, None, "c1")
    db = mongo_database(settings)
    assert db[MongoCollections.POINTERS].find_one({"_id": "catalog"})["version"] == "c2"  # type: ignore[index]
    doc = db[MongoCollections.versioned(Dataset.CATALOG, "c1")].find_one({"_id": "79323P"})
    assert doc is not None and doc["description"] == "PINK CHERRY LIGHTS"
    item = decode(ItemFeatures, doc["pb"])
    assert item.price == pytest.approx(6.75) and item.last_seen_ms == 1291111200000


def test_zookeeper_watch_sees_a_published_manifest(settings: Settings) -> None:
    manifest = examples()["ModelManifest"]
    assert isinstance(manifest, ModelManifest)
    client = zookeeper_client(settings)
    path = ZkPaths(settings.zookeeper_root).model(manifest.name)
    seen: list[bytes] = []
    arrived = threading.Event()
    client.ensure_path(path)

    @client.DataWatch(path)  # type: ignore[untyped-decorator]
    def on_change(data: bytes | None, _stat: object) -> None:
        if data:
            seen.append(data)
            arrived.set()

    started = time.perf_counter()
    client.set(path, encode(manifest))
    assert arrived.wait(5.0), "the DataWatch never fired"
    assert time.perf_counter() - started < 1.0
    assert decode(ModelManifest, seen[-1]) == manifest
    client.delete(settings.zookeeper_root, recursive=True)
    client.stop()


def test_kafka_round_trip_of_events_in_a_consumer_group(settings: Settings) -> None:
    # A topic of its own: other modules (the events API) produce to the session's events topic.
    settings = settings.model_copy(update={"kafka_topic_prefix": f"{settings.kafka_topic_prefix}_stores"})
    topic = KafkaTopics(settings.kafka_topic_prefix).events
    ensure_topics(settings, [topic])
    ensure_topics(settings, [topic])  # a second call leaves the existing topic alone
    base = examples()["BehaviorEvent"]
    assert isinstance(base, BehaviorEvent)
    sent = []
    producer = kafka_producer(settings)
    for n in range(200):
        event = BehaviorEvent()
        event.CopyFrom(base)
        event.event_id = f"e{n}"
        event.user_id = f"u{n % 7}"
        sent.append(event)
        producer.produce(topic, key=event.user_id.encode(), value=encode(event))
    assert producer.flush(10) == 0
    consumer = kafka_consumer(settings, group_id=f"{settings.kafka_topic_prefix}.test")
    consumer.subscribe([topic])
    received: list[BehaviorEvent] = []
    deadline = time.monotonic() + 20
    while len(received) < len(sent) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            received.append(decode(BehaviorEvent, message.value()))
    consumer.close()
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in sent)
    # One user's events share a key, hence a partition, hence their order.
    by_user = [e.event_id for e in received if e.user_id == "u3"]
    assert by_user == [e.event_id for e in sent if e.user_id == "u3"]
