"""The local stack: real Redis, ZooKeeper, MongoDB-protocol and Kafka-protocol servers on 127.0.0.1, and,
when asked for, a Spark standalone cluster (a master and a worker) to run the batch jobs on."""

from __future__ import annotations

from finegrain.errors import StackError
from finegrain.settings import Settings
from finegrain.stack.base import LocalService, ServiceStatus
from finegrain.stack.kafka import KafkaService
from finegrain.stack.mongo import MongoService
from finegrain.stack.redis_server import RedisService
from finegrain.stack.spark_cluster import SparkMasterService, SparkWorkerService
from finegrain.stack.zookeeper import ZooKeeperService

SERVICE_TYPES: tuple[type[LocalService], ...] = (RedisService, ZooKeeperService, MongoService, KafkaService)
SERVICE_NAMES = tuple(service.name for service in SERVICE_TYPES)
# Optional (`--spark`, or named): the jobs run `local[*]` unless pointed at a master, and two more JVMs
# (about 300 MB) are not worth starting for every test session and demo. Master first, then worker.
SPARK_SERVICE_TYPES: tuple[type[LocalService], ...] = (SparkMasterService, SparkWorkerService)
SPARK_SERVICE_NAMES = tuple(service.name for service in SPARK_SERVICE_TYPES)


def services(settings: Settings, names: list[str] | None = None, spark: bool = False) -> list[LocalService]:
    """The stack's services in start order: those named, else the default ones (plus the Spark cluster
    when `spark`)."""
    known = SERVICE_TYPES + SPARK_SERVICE_TYPES
    unknown = sorted(set(names or ()) - {cls.name for cls in known})
    if unknown:
        raise StackError(f"unknown service {', '.join(unknown)}; choose from "
                         f"{', '.join(cls.name for cls in known)}")
    optional = SPARK_SERVICE_TYPES if spark else ()
    if names:
        return [cls(settings) for cls in known if cls.name in names or cls in optional]
    return [cls(settings) for cls in SERVICE_TYPES + optional]


def spark_cluster(settings: Settings) -> list[LocalService]:
    """The local Spark standalone cluster: its master, then its worker."""
    return [cls(settings) for cls in SPARK_SERVICE_TYPES]


__all__ = [
    "SERVICE_NAMES",
    "SPARK_SERVICE_NAMES",
    "LocalService",
    "ServiceStatus",
    "StackError",
    "services",
    "spark_cluster",
]
