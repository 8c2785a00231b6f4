"""The storage contract: every Redis key, Mongo collection, ZooKeeper path and Kafka topic, in one place.

`docs/storage.md` describes each with its value's schema, writer and readers; the tests pin both the
names built here and the bytes of the values (tests/unit/test_storage_contract.py). Change a name or a
schema here only together with that page and those tests.

Batch outputs live under a version (`YYYYMMDDTHHMMSS` of the build, plus an optional suffix) and are
served through a pointer that is switched atomically once the whole version is written.
"""

from __future__ import annotations

import re
from enum import StrEnum

REDIS_PREFIX = "fg"
_VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")


class Dataset(StrEnum):
    """Versioned batch outputs; each has one pointer in Redis and in Mongo."""

    CATALOG = "catalog"
    FEATURES = "features"
    INDEX = "index"
    SIMILARITY = "similarity"
    POPULARITY = "popularity"


def check_version(version: str) -> str:
    if not _VERSION_PATTERN.match(version):
        raise ValueError(f"bad version {version!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return version


class RedisKeys:
    """Redis key builders. Values are protobuf bytes unless said otherwise."""

    @staticmethod
    def pointer(dataset: Dataset) -> str:
        """String: the version of `dataset` that serving reads."""
        return f"{REDIS_PREFIX}:ptr:{dataset}"

    @staticmethod
    def versioned_prefix(dataset: Dataset, version: str) -> str:
        """Every key of one version starts with this; deleting a version is deleting this prefix."""
        return f"{REDIS_PREFIX}:{dataset}:{check_version(version)}:"

    @classmethod
    def user_profile(cls, version: str, user_id: str) -> str:
        """UserProfile."""
        return f"{cls.versioned_prefix(Dataset.FEATURES, version)}user:{user_id}"

    @classmethod
    def item_feature_block(cls, version: str, block: int) -> str:
        """ItemFeatureMatrix of one block of items."""
        return f"{cls.versioned_prefix(Dataset.FEATURES, version)}items:{block}"

    @classmethod
    def item_feature_block_count(cls, version: str) -> str:
        """UTF-8 integer n: the version's item features are blocks 0..n-1; written last, before the switch."""
        return f"{cls.versioned_prefix(Dataset.FEATURES, version)}item_blocks"

    @classmethod
    def index_postings(cls, version: str, field: str, value: str) -> str:
        """ScoredItemList: items having `value` for `field` (term, category, price_band)."""
        return f"{cls.versioned_prefix(Dataset.INDEX, version)}{field}:{value}"

    @classmethod
    def index_directory(cls, version: str, field: str) -> str:
        """ScoredItemList of the values `field` has in this version (in `item_ids`) with the length of
        each one's postings (in `scores`), largest first: lets serving and rules validate a value."""
        return f"{cls.versioned_prefix(Dataset.INDEX, version)}directory:{field}"

    @classmethod
    def similar_items(cls, version: str, algorithm: str, item_id: str) -> str:
        """ScoredItemList: the nearest neighbours of `item_id` by `algorithm` (cosine, swing)."""
        return f"{cls.versioned_prefix(Dataset.SIMILARITY, version)}{algorithm}:{item_id}"

    @classmethod
    def popular_items(cls, version: str, scope: str, value: str) -> str:
        """ScoredItemList: best sellers for a scope (global/all, country/<name>, category/<name>)."""
        return f"{cls.versioned_prefix(Dataset.POPULARITY, version)}{scope}:{value}"

    @staticmethod
    def realtime_profile(user_id: str) -> str:
        """RealtimeProfile written by the streaming sidecar, with a TTL."""
        return f"{REDIS_PREFIX}:rt:user:{user_id}"

    @staticmethod
    def rule_atom(index_version: str, atom_digest: str) -> str:
        """ScoredItemList: one cached atomic sub-query of rule-based recall, with a TTL."""
        return f"{REDIS_PREFIX}:rule:{check_version(index_version)}:{atom_digest}"


class MongoCollections:
    """MongoDB collection names (all in the database of FINEGRAIN_MONGO_DATABASE)."""

    POINTERS = "pointers"  # {_id: dataset, version, previous, switched_at}
    RULES = "rules"  # {_id: rule name, definition, updated_at}
    MODELS = "models"  # {_id: "<name>:<version>", name, version, manifest: ModelManifest bytes, ...}
    ARTIFACTS = "artifacts"  # GridFS bucket of model artifacts
    API_KEYS = "api_keys"  # {_id: key id, name, scopes, salt, digest, rate_per_s, created_at, revoked_at}

    @staticmethod
    def versioned(dataset: Dataset, version: str) -> str:
        """One collection per version of a batch output, e.g. `catalog__20101209T000000`."""
        return f"{dataset}__{check_version(version)}"


class ZkPaths:
    """ZooKeeper paths, relative to FINEGRAIN_ZOOKEEPER_ROOT (default /finegrain)."""

    def __init__(self, root: str = "/finegrain") -> None:
        self.root = root.rstrip("/") or "/finegrain"

    def model(self, name: str) -> str:
        """ModelManifest bytes of the published version of model `name`."""
        return f"{self.root}/models/{name}"

    def dataset(self, dataset: Dataset) -> str:
        """UTF-8 version string of the current version of a batch output, watched by serving."""
        return f"{self.root}/datasets/{dataset}"

    def rules(self) -> str:
        """A change counter of the rule-based recall rules (MongoDB `rules`), bumped on every PUT and
        DELETE; every serving worker watches it and reloads its in-memory copy of the rules."""
        return f"{self.root}/rules"

    def keys(self) -> str:
        """A change counter of the API keys (MongoDB `api_keys`), bumped on every revocation; every
        serving worker watches it and re-reads the keys it has cached."""
        return f"{self.root}/keys"

    def worker(self, worker_id: str) -> str:
        """Ephemeral: the versions one serving worker has loaded."""
        return f"{self.root}/workers/{worker_id}"


class KafkaTopics:
    """Kafka topic names, prefixed with FINEGRAIN_KAFKA_TOPIC_PREFIX."""

    def __init__(self, prefix: str = "finegrain") -> None:
        self.prefix = prefix

    @property
    def events(self) -> str:
        """BehaviorEvent bytes, keyed by user id (so a user's events stay in order)."""
        return f"{self.prefix}.events"

    @property
    def events_dead_letter(self) -> str:
        """DeadLetter bytes: events that failed validation, kept whole with the reason."""
        return f"{self.prefix}.events.dlq"
