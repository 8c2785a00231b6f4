"""Clients of the four stores, built from settings with timeouts that fail fast instead of hanging."""

from __future__ import annotations

from typing import Any

import pymongo
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kazoo.client import KazooClient
from pymongo.database import Database

from finegrain.settings import Settings

MongoDocument = dict[str, Any]


def redis_client(settings: Settings) -> redis.Redis:
    """Binary-safe Redis client (values are protobuf bytes, so no response decoding)."""
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=30
    )


def mongo_client(settings: Settings) -> pymongo.MongoClient[MongoDocument]:
    return pymongo.MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=2000)


def mongo_database(
    settings: Settings, client: pymongo.MongoClient[MongoDocument] | None = None
) -> Database[MongoDocument]:
    return (client or mongo_client(settings))[settings.mongo_database]


def zookeeper_client(settings: Settings, *, start: bool = True) -> KazooClient:
    client = KazooClient(hosts=settings.zookeeper_hosts, timeout=5.0)
    if start:
        client.start(timeout=5.0)
    return client


def _kafka_common(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 3}


def kafka_producer(settings: Settings, **overrides: Any) -> Producer:
    # acks=all and idempotence: an accepted event must not be lost or duplicated by a retry.
    config = {**_kafka_common(settings), "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    return Producer({**config, **overrides})


def kafka_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    config = {
        **_kafka_common(settings),
        "group.id": group_id,
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    return Consumer({**config, **overrides})


def kafka_admin(settings: Settings) -> AdminClient:
    return AdminClient(_kafka_common(settings))


def ensure_topics(
    settings: Settings, topics: list[str], partitions: int = 2, timeout_s: float = 10.0
) -> None:
    """Create the topics that do not exist yet (an existing topic is left as it is)."""
    admin = kafka_admin(settings)  # keep a reference: the futures fail if the client is collected
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
    )
    for future in futures.values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
