"""Rules in MongoDB, with an in-memory copy per worker kept fresh through ZooKeeper.

MongoDB `rules` holds `{_id: name, definition: <the validated rule>, updated_at, version}`; `version`
counts the PUTs of that name. MongoDB is never read on the request path: each worker reads the whole
collection into memory at start-up and again whenever the znode `{root}/rules` changes (every PUT and
DELETE bumps its change counter after writing MongoDB; each worker has a kazoo DataWatch on it). The
worker that served a PUT or DELETE updates its own copy at once, so an operator reads their own write.

If ZooKeeper cannot be reached the store falls back to re-reading MongoDB every `poll_seconds` (on
access, off the hot path only once per period); if MongoDB cannot be reached it keeps the last copy it
had and says so (`degraded`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymongo
from kazoo.client import KazooClient
from prometheus_client import Gauge
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from finegrain.settings import Settings
from finegrain.storage.clients import MongoDocument, mongo_client, zookeeper_client
from finegrain.storage.contract import MongoCollections, ZkPaths
from finegrain.storage.notices import announce
from serving.rules.definition import Rule, RuleError, check_rule_name
from serving.rules.engine import NamedRule

log = logging.getLogger(__name__)

RULES_LOADED = Gauge("finegrain_rules_loaded", "Rules in this worker's in-memory copy")
RULES_RELOADS = Gauge("finegrain_rules_reloaded_timestamp_seconds",
                      "When this worker last reloaded the rules from MongoDB")


@dataclass(frozen=True)
class StoredRule:
    name: str
    rule: Rule
    version: int
    updated_at: datetime

    def named(self) -> NamedRule:
        return NamedRule(self.name, self.rule)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "updated_at": self.updated_at.isoformat(),
                "definition": self.rule.model_dump(mode="json")}

    @classmethod
    def from_document(cls, document: MongoDocument) -> StoredRule:
        updated = document.get("updated_at") or datetime.fromtimestamp(0, UTC)
        if updated.tzinfo is None:  # pymongo gives naive datetimes in UTC unless tz_aware
            updated = updated.replace(tzinfo=UTC)
        return cls(str(document["_id"]), Rule.model_validate(document["definition"]),
                   int(document.get("version", 1)), updated)


class RuleNotFound(LookupError):
    pass


class RuleStore:
    """The rules of one worker. Clients are created on first use in each process (gunicorn forks)."""

    def __init__(self, settings: Settings, *, watch: bool = True, poll_seconds: float = 30.0) -> None:
        self.settings = settings
        self.watch = watch
        self.poll_seconds = poll_seconds
        self.path = ZkPaths(settings.zookeeper_root).rules()
        self._lock = threading.RLock()
        self._pid = -1
        self._mongo: pymongo.MongoClient[MongoDocument] | None = None
        self._zk: KazooClient | None = None
        self._rules: dict[str, StoredRule] = {}
        self._loaded_at = 0.0
        self.degraded = False
        self.reloads = 0
        self._polling = False
        self._writes = 0  # local PUTs and DELETEs, so a reload that raced one is not installed
        # A fork while the watch thread holds the lock (a reload in progress) would leave the child's
        # copy locked for ever: the child starts with a fresh lock (its copy reloads anyway).
        owner = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _fresh_lock(owner))

    # -- reads (memory only) --

    def all(self) -> list[StoredRule]:
        self._ensure_started()
        return sorted(self._rules.values(), key=lambda r: r.name)

    def get(self, name: str) -> StoredRule | None:
        """This worker's copy of the rule: what its requests evaluate."""
        self._ensure_started()
        return self._rules.get(name)

    def active(self, scene: str | None = None) -> list[NamedRule]:
        """Enabled rules serving `scene` (every enabled rule if scene is None), by name."""
        self._ensure_started()
        return [NamedRule(r.name, r.rule) for r in sorted(self._rules.values(), key=lambda r: r.name)
                if r.rule.serves(scene)]

    # -- reads (MongoDB, for the admin API) --

    def current(self, name: str) -> StoredRule | None:
        """The rule as MongoDB holds it now. A GET right after a PUT or DELETE that another worker
        served must not answer from this worker's copy, which follows a moment later (the ZooKeeper
        notice). With MongoDB unreachable, this worker's copy, and `degraded` is set."""
        found = self._read({"_id": name})
        return self.get(name) if found is None else found.get(name)

    def current_all(self) -> list[StoredRule]:
        """Every rule as MongoDB holds it now (this worker's copy, degraded, with MongoDB unreachable)."""
        found = self._read({})
        return self.all() if found is None else sorted(found.values(), key=lambda r: r.name)

    def _read(self, query: dict[str, Any]) -> dict[str, StoredRule] | None:
        """The valid stored rules matching `query` by name; None when MongoDB cannot be read."""
        self._ensure_started()
        try:
            documents = list(self._collection().find(query))
        except PyMongoError as exc:
            log.warning("rules: cannot read MongoDB, answering from the %d rules in memory: %s",
                        len(self._rules), exc)
            self.degraded = True
            return None
        return _valid(documents)

    # -- writes --

    def put(self, name: str, rule: Rule) -> StoredRule:
        check_rule_name(name)
        self._ensure_started()
        document = self._collection().find_one_and_update(
            {"_id": name},
            {"$set": {"definition": rule.model_dump(mode="json"), "updated_at": datetime.now(UTC)},
             "$inc": {"version": 1}},
            upsert=True, return_document=pymongo.ReturnDocument.AFTER)
        if document is None:  # an upsert returning the document after it cannot miss it
            raise RuntimeError(f"MongoDB returned no document for the upsert of rule {name}")
        stored = StoredRule.from_document(document)
        with self._lock:
            self._writes += 1
            self._rules = {**self._rules, name: stored}
            RULES_LOADED.set(len(self._rules))
        self._announce("put", name)
        return stored

    def delete(self, name: str) -> None:
        self._ensure_started()
        if self._collection().delete_one({"_id": name}).deleted_count == 0:
            raise RuleNotFound(name)
        with self._lock:
            self._writes += 1
            self._rules = {k: v for k, v in self._rules.items() if k != name}
            RULES_LOADED.set(len(self._rules))
        self._announce("delete", name)

    # -- loading --

    def reload(self) -> int:
        """Read every rule from MongoDB into memory; returns how many. Keeps the old copy on failure."""
        for _ in range(5):
            writes = self._writes
            try:
                documents = list(self._collection().find({}))
            except PyMongoError as exc:
                log.warning("rules: cannot read MongoDB, keeping the %d rules in memory: %s",
                            len(self._rules), exc)
                self.degraded = True
                self._loaded_at = time.monotonic()  # retry after poll_seconds, not on every request
                return len(self._rules)
            rules = _valid(documents)
            with self._lock:
                # A PUT or DELETE by this worker while we read may be missing from what we read:
                # installing it would undo the operator's write here until the next notice. Read again.
                if writes != self._writes:
                    continue
                self._rules = rules
                self._loaded_at = time.monotonic()
                self.reloads += 1
                self.degraded = False
                break
        RULES_LOADED.set(len(rules))
        RULES_RELOADS.set(time.time())
        return len(rules)

    def close(self) -> None:
        with self._lock:
            zk, mongo, same_process = self._zk, self._mongo, self._pid == os.getpid()
            self._zk = self._mongo = None
            self._pid = -1
        if zk is not None and same_process:
            zk.stop()
            zk.close()
        if mongo is not None and same_process:
            mongo.close()

    def _collection(self) -> Collection[MongoDocument]:
        if self._mongo is None:
            self._mongo = mongo_client(self.settings)
        return self._mongo[self.settings.mongo_database][MongoCollections.RULES]

    def start(self) -> None:
        """Load the rules and start the watch in this process. Call it when a worker boots (after the
        fork): otherwise the first request does it, and waits for MongoDB and ZooKeeper."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            stale = time.monotonic() - self._loaded_at > self.poll_seconds
            if self._zk is None and not self._polling and stale:
                # Without a watch, re-read in the background: a request never waits for MongoDB.
                self._polling = True
                threading.Thread(target=self._poll_once, name="rules-poll", daemon=True).start()
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A copy inherited through fork holds the parent's sockets and threads: start afresh.
            self._mongo, self._zk, self._rules, self._polling = None, None, {}, False
            self.reload()
            if self.watch:
                self._start_watch()
            self._pid = os.getpid()

    def _poll_once(self) -> None:
        try:
            self.reload()
        finally:
            self._polling = False

    def _start_watch(self) -> None:
        try:
            zk = zookeeper_client(self.settings)
            zk.ensure_path(self.path)
        except Exception as exc:  # kazoo raises its own timeout types and socket errors
            log.warning("rules: ZooKeeper unreachable, polling MongoDB every %.0f s instead: %s",
                        self.poll_seconds, exc)
            return
        self._zk = zk

        # Fires once at registration too: that reload closes the gap since the first one.
        def changed(data: bytes | None, stat: Any) -> bool | None:
            if self._zk is not zk:  # closed, or replaced after a fork: stop watching
                return False
            log.info("rules: change announced (%s), reloading", (data or b"").decode(errors="replace"))
            self.reload()
            return None

        zk.DataWatch(self.path, changed)

    def _announce(self, op: str, name: str) -> None:
        zk = self._zk
        if zk is None:
            log.warning("rules: ZooKeeper unavailable, other workers see %s %s within %.0f s", op, name,
                        self.poll_seconds)
            return
        announce(zk, self.path, op=op, rule=name)


def _valid(documents: list[MongoDocument]) -> dict[str, StoredRule]:
    """Stored rules by name, skipping (and logging) any written by an older code version and no
    longer valid, so one bad document does not hide the rest."""
    rules = {}
    for document in documents:
        try:
            stored = StoredRule.from_document(document)
        except (RuleError, ValueError, KeyError) as exc:
            log.error("rules: skipping stored rule %r: %s", document.get("_id"), exc)
            continue
        rules[stored.name] = stored
    return rules


def _fresh_lock(owner: weakref.ref[RuleStore]) -> None:
    store = owner()
    if store is not None:
        store._lock = threading.RLock()
