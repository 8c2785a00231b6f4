"""The keys a worker has verified, cached so that MongoDB is not read per request.

A request's key id is looked up in a bounded in-memory cache (`cache_size` keys, least recently used
dropped first) of `ApiKey` records (salt, digest, scopes, rate; never a secret); the secret is then
checked against the record's digest (`ApiKey.matches`, constant time). A record is re-read from
MongoDB `api_keys` once it is older than `ttl_s`; a key id MongoDB does not know is cached as unknown
the same way, so a stream of made-up keys costs one read per id per TTL.

Revocations reach every worker within about a second: `finegrain keys revoke` bumps the ZooKeeper
znode `ZkPaths.keys` and each worker's DataWatch then marks the revoked key as unknown and every other
cached record as stale (re-read on its next use). If ZooKeeper cannot be reached the TTL is the
bound: a revoked key stops working within `ttl_s`.

Each worker reads every active key when it starts (so the first requests wait for nothing) and writes
them to `snapshot` (`var/serving/api_keys.json`: the records only, salted digests of secrets that
cannot be recovered from them); a worker that starts while MongoDB is unreachable loads that file
instead, as stale records, the way it serves the best sellers saved on disk when Redis is down.

If MongoDB cannot be reached, a cached record keeps serving after its TTL (stale, counted in
`finegrain_auth_cache_total{result="stale"}`) and MongoDB is retried every `retry_s`; a key id never
seen before cannot be verified and is refused with 503. The request path's MongoDB client has short
timeouts so that costs at most `timeout_ms`, once per `retry_s`. Revocation notices still apply
while MongoDB is down: the announced key is refused at once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pymongo
from kazoo.client import KazooClient
from pymongo.errors import PyMongoError

from finegrain.apikeys import ApiKey, ApiKeyError, KeyStore, Scope, parse_token
from finegrain.settings import Settings
from finegrain.storage.clients import MongoDocument, zookeeper_client
from finegrain.storage.contract import ZkPaths
from serving import metrics

log = logging.getLogger(__name__)


class KeyRejected(Exception):
    """The token is malformed, unknown, revoked or does not match: a 401. `reason` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeysUnavailable(Exception):
    """The key cannot be verified now (MongoDB unreachable and the key not cached): a 503."""


@dataclass
class _Entry:
    key: ApiKey | None  # None: MongoDB has no such key id (or it was announced revoked)
    fresh_until: float


class VerifiedKeys:
    """One worker's cache of verified keys. Clients are made on first use in each process (gunicorn
    forks after importing the app)."""

    def __init__(self, settings: Settings, *, ttl_s: float = 10.0, cache_size: int = 10_000,
                 retry_s: float = 5.0, timeout_ms: int = 500, watch: bool = True,
                 snapshot: Path | None = None) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.ttl_s = ttl_s
        self.cache_size = cache_size
        self.retry_s = retry_s
        self.timeout_ms = timeout_ms
        self.watch = watch
        self.path = ZkPaths(settings.zookeeper_root).keys()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = -1
        self._store: KeyStore | None = None
        self._zk: KazooClient | None = None
        self._mongo_down_until = 0.0
        self.notices = 0
        owner = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _fresh_lock(owner))

    # -- the request path --

    def verify(self, token: str) -> ApiKey:
        """The key of `token`; KeyRejected (401) or KeysUnavailable (503) otherwise."""
        try:
            key_id, secret = parse_token(token)
        except ApiKeyError as exc:
            raise KeyRejected("malformed", str(exc)) from None
        key = self._record(key_id)
        if key is None:
            raise KeyRejected("unknown", f"API key {key_id} is unknown or revoked")
        if key.revoked:
            raise KeyRejected("revoked", f"API key {key_id} was revoked at "
                              f"{key.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        if not key.matches(secret):
            raise KeyRejected("mismatch", f"API key {key_id}: the secret does not match")
        return key

    def _record(self, key_id: str) -> ApiKey | None:
        self._ensure_started()
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is not None:
                self._entries.move_to_end(key_id)
        if entry is not None and entry.fresh_until > now:
            metrics.AUTH_CACHE.labels("hit").inc()
            return entry.key
        if now < self._mongo_down_until:
            return self._stale(key_id, entry)
        try:
            key = self._store_client().get(key_id)
        except PyMongoError as exc:
            log.warning("keys: cannot read MongoDB (retrying in %.0f s): %s", self.retry_s, exc)
            self._mongo_down_until = time.monotonic() + self.retry_s
            return self._stale(key_id, entry)
        metrics.AUTH_CACHE.labels("miss").inc()
        with self._lock:
            self._entries[key_id] = _Entry(key, time.monotonic() + self.ttl_s)
            self._entries.move_to_end(key_id)
            while len(self._entries) > self.cache_size:
                self._entries.popitem(last=False)
        return key

    @staticmethod
    def _stale(key_id: str, entry: _Entry | None) -> ApiKey | None:
        if entry is None:
            metrics.AUTH_CACHE.labels("unavailable").inc()
            raise KeysUnavailable(f"cannot verify API key {key_id} now: MongoDB is unreachable; retry "
                                  "shortly")
        metrics.AUTH_CACHE.labels("stale").inc()
        return entry.key

    # -- notices --

    def _changed(self, data: bytes | None) -> None:
        """A revocation was announced: forget the named key, re-read every other one on its next use."""
        try:
            named = json.loads(data or b"{}").get("key_id")
        except (ValueError, AttributeError):
            named = None
        with self._lock:
            for key_id, entry in self._entries.items():
                entry.fresh_until = 0.0
                if key_id == named:
                    entry.key = None
            self.notices += 1
        self._mongo_down_until = 0.0

    # -- life cycle --

    def start(self) -> None:
        """Connect in this process (a worker calls it after the fork; else the first request does)."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A copy inherited through fork holds the parent's sockets and threads: start afresh.
            self._store, self._zk, self._entries = None, None, OrderedDict()
            self._pid = os.getpid()
        if self.watch:
            self._start_watch()
        self._preload()

    def _preload(self) -> None:
        """Every active key (the newest `cache_size`), from MongoDB, else from the last snapshot."""
        try:
            keys = self._store_client().list()[-self.cache_size:]
        except PyMongoError as exc:
            self._mongo_down_until = time.monotonic() + self.retry_s
            keys = _read_snapshot(self.snapshot) if self.snapshot else []
            log.warning("keys: MongoDB unreachable at start, %d keys from the snapshot %s serve until it "
                        "answers: %s", len(keys), self.snapshot, exc)
            fresh_until = 0.0  # stale: re-read as soon as MongoDB answers
        else:
            if self.snapshot is not None:
                _write_snapshot(self.snapshot, keys)
            fresh_until = time.monotonic() + self.ttl_s
        with self._lock:
            for key in keys:
                self._entries.setdefault(key.key_id, _Entry(key, fresh_until))

    def _store_client(self) -> KeyStore:
        if self._store is None:
            timeout = self.timeout_ms
            client: pymongo.MongoClient[MongoDocument] = pymongo.MongoClient(
                self.settings.mongo_uri, serverSelectionTimeoutMS=timeout, connectTimeoutMS=timeout,
                socketTimeoutMS=timeout * 2)
            self._store = KeyStore(self.settings, client)
        return self._store

    def _start_watch(self) -> None:
        try:
            zk = zookeeper_client(self.settings)
            zk.ensure_path(self.path)
        except Exception as exc:  # kazoo raises its own timeout types and socket errors
            log.warning("keys: ZooKeeper unreachable, revocations take effect within the %.0f s cache "
                        "TTL: %s", self.ttl_s, exc)
            return
        self._zk = zk

        def changed(data: bytes | None, stat: Any) -> bool | None:
            if self._zk is not zk:  # closed, or replaced after a fork: stop watching
                return False
            self._changed(data)
            return None

        zk.DataWatch(self.path, changed)

    def close(self) -> None:
        with self._lock:
            zk, store, same_process = self._zk, self._store, self._pid == os.getpid()
            self._zk = self._store = None
            self._pid = -1
        if zk is not None and same_process:
            zk.stop()
            zk.close()
        if store is not None and same_process:
            store.client.close()


def _write_snapshot(path: Path, keys: list[ApiKey]) -> None:
    records = [{"key_id": k.key_id, "name": k.name, "scopes": sorted(k.scopes), "salt": k.salt.hex(),
                "digest": k.digest.hex(), "rate_per_s": k.rate_per_s, "created_at": k.created_at.isoformat()}
               for k in keys]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump({"keys": records}, handle)
        os.chmod(handle.name, 0o600)
        Path(handle.name).replace(path)  # atomic: workers write it side by side
    except OSError as exc:
        log.warning("keys: cannot write the snapshot %s: %s", path, exc)


def _read_snapshot(path: Path) -> list[ApiKey]:
    try:
        records = json.loads(path.read_text())["keys"]
        return [ApiKey(r["key_id"], r["name"], frozenset(Scope(s) for s in r["scopes"]),
                       bytes.fromhex(r["salt"]), bytes.fromhex(r["digest"]), r["rate_per_s"],
                       datetime.fromisoformat(r["created_at"])) for r in records]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _fresh_lock(owner: weakref.ref[VerifiedKeys]) -> None:
    keys = owner()
    if keys is not None:
        keys._lock = threading.Lock()
