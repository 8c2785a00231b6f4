"""A namespace's state in the shared servers, dropped as a whole: what a test, a benchmark or an
evaluation run in its own namespace leaves behind (its Redis database is flushed by its owner, since
Redis databases are numbered and claimed, not created)."""

from __future__ import annotations

from finegrain.settings import Settings
from finegrain.storage.clients import mongo_client, zookeeper_client


def drop_namespace(settings: Settings) -> None:
    """Delete the ZooKeeper root (published versions, workers, notices) and drop the Mongo database
    (registry, rules, keys, datasets) that `settings` name. Nothing there is an error."""
    zk = zookeeper_client(settings)
    try:
        zk.delete(settings.zookeeper_root, recursive=True)
    finally:
        zk.stop()
    client = mongo_client(settings)
    try:
        client.drop_database(settings.mongo_database)
    finally:
        client.close()
