"""The integration tier runs against the real local stack, started (or reused) by the project's own
`finegrain.stack` code. Each test session gets its own namespaces in the shared servers (a Mongo
database, a Redis database, a ZooKeeper root and a Kafka topic prefix) so runs don't see each other."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from pyspark.sql import SparkSession

from finegrain.data.layout import EVENTS_FILE
from finegrain.data.retail import load_online_retail
from finegrain.settings import Settings, get_settings
from finegrain.spark import spark_session
from finegrain.stack import ServiceStatus, services, spark_cluster
from finegrain.storage.clients import redis_client
from finegrain.storage.namespace import drop_namespace

# Redis databases the test sessions may claim, one each, so runs side by side don't flush each other.
REDIS_TEST_DBS = range(3, 16)
CLAIM_KEY = "finegrain:test-session"


@pytest.fixture(scope="session")
def stack() -> list[ServiceStatus]:
    """Every server of the local stack, healthy (started here if it was not running)."""
    return [service.up() for service in services(get_settings())]


@pytest.fixture(scope="session")
def settings(stack: list[ServiceStatus]) -> Iterator[Settings]:
    with own_namespace(get_settings()) as test_settings:
        yield test_settings


@contextmanager
def own_namespace(base: Settings) -> Iterator[Settings]:
    """`base` with namespaces of its own in the shared servers (a Redis database, a Mongo database, a
    ZooKeeper root, a Kafka topic prefix), emptied and dropped on exit."""
    run = uuid.uuid4().hex[:8]
    host, port = base.redis_address()
    redis_db = _claim_redis_db(host, port, run)
    test_settings = base.model_copy(
        update={
            "mongo_database": f"finegrain_test_{run}",
            "redis_url": f"redis://{host}:{port}/{redis_db}",
            "zookeeper_root": f"/finegrain_test_{run}",
            "kafka_topic_prefix": f"fgtest_{run}",
        }
    )
    try:
        yield test_settings
    finally:
        redis_client(test_settings).flushdb()
        drop_namespace(test_settings)

def _claim_redis_db(host: str, port: int, run: str) -> int:
    """An empty Redis database no other test session holds; the claim expires if a session dies."""
    for db in REDIS_TEST_DBS:
        client = redis.Redis(host=host, port=port, db=db)
        if client.set(CLAIM_KEY, run, nx=True, ex=3 * 3600):
            client.flushdb()  # leftovers of a session that died before its clean-up
            client.set(CLAIM_KEY, run, ex=3 * 3600)
            return db
    raise RuntimeError(f"every Redis test database {REDIS_TEST_DBS} is claimed by another test session")


@pytest.fixture(scope="session")
def retail_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real data set loaded once per test session; returns the folder of events/catalog Parquet."""
    out = tmp_path_factory.mktemp("retail")
    load_online_retail(get_settings().source_csv, out)
    return out


@pytest.fixture(scope="session")
def events_path(retail_data: Path) -> Path:
    """The real data set's canonical events."""
    return retail_data / EVENTS_FILE


@pytest.fixture(scope="session")
def client(settings: Settings) -> redis.Redis:
    """A Redis client on the test session's own database."""
    return redis_client(settings)


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    """One local Spark session for the whole test session (each start costs about 10 s)."""
    session = spark_session(settings, app_name="finegrain-tests")
    yield session
    session.stop()
    # py4j logs from __del__ at interpreter exit, after pytest closed the streams: an error, not news.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def spark_master(stack: list[ServiceStatus]) -> Iterator[str]:
    """The master URL of a Spark standalone cluster on 127.0.0.1 (a master and a worker of the installed
    pyspark, `finegrain.stack.spark_cluster`), started here unless the stack already runs it. What was
    started here is stopped when the module ends, a failed test or start-up included: no JVM outlives
    the tests (the worker takes its executors down with it)."""
    cluster = spark_cluster(get_settings())
    started = []
    try:
        for service in cluster:
            if service.running_pid() is None:
                started.append(service)
            service.up()
        yield get_settings().spark_cluster_url
    finally:
        for service in reversed(started):
            service.down()
