"""The local stack: real Redis, ZooKeeper, MongoDB-protocol and Kafka-protocol servers on 127.0.0.1."""

from __future__ import annotations

from finegrain.errors import StackError
from finegrain.settings import Settings
from finegrain.stack.base import LocalService, ServiceStatus
from finegrain.stack.kafka import KafkaService
from finegrain.stack.mongo import MongoService
from finegrain.stack.redis_server import RedisService
from finegrain.stack.zookeeper import ZooKeeperService

SERVICE_TYPES: tuple[type[LocalService], ...] = (RedisService, ZooKeeperService, MongoService, KafkaService)
SERVICE_NAMES = tuple(service.name for service in SERVICE_TYPES)


def services(settings: Settings, names: list[str] | None = None) -> list[LocalService]:
    """The stack's services in start order, optionally only those named."""
    unknown = sorted(set(names or ()) - set(SERVICE_NAMES))
    if unknown:
        raise StackError(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}")
    return [cls(settings) for cls in SERVICE_TYPES if not names or cls.name in names]


__all__ = ["SERVICE_NAMES", "LocalService", "ServiceStatus", "StackError", "services"]
