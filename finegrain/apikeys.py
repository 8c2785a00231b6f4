"""API keys: the token a client sends, how its secret is kept, the scopes, and the key store.

A key is `fg_<key id>_<secret>`: the key id is 12 random base32 characters (60 bits; public, the
MongoDB `_id`, shown by `finegrain keys list`), the secret 32 random bytes in URL-safe base64 (43
characters, 256 bits). The secret is never stored: MongoDB `api_keys` holds a random 16-byte salt
per key and `HMAC-SHA256(key=salt, message=secret)`, and a request's secret is checked by computing
the same HMAC and comparing with `hmac.compare_digest` (constant time). A slow password hash
(scrypt, argon2) buys nothing here: it protects guessable secrets, and a 256-bit random one cannot
be guessed; it would only cost milliseconds on every cache miss of a serving worker. The salt keeps
two keys' digests unrelated and rules out precomputed tables. The key is shown once, at creation.

Scopes: `recommend` (GET recommendations and similar items), `events` (POST events), `admin` (rules,
and every route that changes what is served); a key holds one or more, none implies another.
Revoking a key marks it (`revoked_at`), then bumps the ZooKeeper change counter `ZkPaths.keys`,
which every serving worker watches to re-read the keys it has cached (`serving.auth`).

The storage layout is in docs/storage.md (`api_keys`, `/finegrain/keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload

import pymongo
from pymongo.collection import Collection

from finegrain.errors import FinegrainError
from finegrain.settings import Settings
from finegrain.storage.clients import MongoDocument, mongo_client, zookeeper_client
from finegrain.storage.contract import MongoCollections, ZkPaths
from finegrain.storage.notices import announce

log = logging.getLogger(__name__)

TOKEN_PREFIX = "fg"
KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32, lower case: no character needs quoting
KEY_ID_CHARS = 12
SECRET_BYTES = 32
SALT_BYTES = 16
MAX_TOKEN_CHARS = 128  # longer Authorization values are refused before any parsing
MAX_RATE_PER_S = 1_000_000.0
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([{KEY_ID_ALPHABET}]{{{KEY_ID_CHARS}}})_([A-Za-z0-9_-]{{43}})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Scope(StrEnum):
    RECOMMEND = "recommend"
    EVENTS = "events"
    ADMIN = "admin"


class ApiKeyError(FinegrainError, ValueError):
    """A bad key name, scope or rate, an unknown key id, or a token that is not a Finegrain key."""


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value.strip().lower()))
        except ValueError:
            raise ApiKeyError(f"unknown scope {value!r}: use {', '.join(Scope)}") from None
    if not scopes:
        raise ApiKeyError(f"a key needs at least one scope: {', '.join(Scope)}")
    return frozenset(scopes)


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def parse_token(token: str) -> tuple[str, str]:
    """(key id, secret) of a well-formed key; ApiKeyError otherwise (without echoing the token)."""
    match = _TOKEN.match(token) if len(token) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise ApiKeyError(f"not a Finegrain API key (expected {TOKEN_PREFIX}_<12 characters>_<43 "
                          "characters>)")
    return match.group(1), match.group(2)


def new_token() -> tuple[str, str, str]:
    """(key id, secret, the token a client sends)."""
    key_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_CHARS))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, secret, f"{TOKEN_PREFIX}_{key_id}_{secret}"


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret)."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    salt: bytes
    digest: bytes
    rate_per_s: float | None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(hash_secret(self.salt, secret), self.digest)

    def allows(self, scope: Scope) -> bool:
        return not self.revoked and scope in self.scopes

    def to_document(self) -> MongoDocument:
        return {"_id": self.key_id, "name": self.name, "scopes": sorted(self.scopes), "salt": self.salt,
                "digest": self.digest, "rate_per_s": self.rate_per_s, "created_at": self.created_at,
                "revoked_at": self.revoked_at}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ApiKey:
        return cls(str(document["_id"]), str(document["name"]),
                   frozenset(Scope(s) for s in document["scopes"]), bytes(document["salt"]),
                   bytes(document["digest"]),
                   None if document.get("rate_per_s") is None else float(document["rate_per_s"]),
                   _utc(document["created_at"]), _utc(document.get("revoked_at")))

    def to_json(self) -> dict[str, Any]:
        """What `finegrain keys list` shows: everything but the salt and digest."""
        return {"key_id": self.key_id, "prefix": f"{TOKEN_PREFIX}_{self.key_id}_...", "name": self.name,
                "scopes": sorted(self.scopes), "rate_per_s": self.rate_per_s,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # pymongo gives naive UTC


@dataclass(frozen=True)
class Revoked:
    key: ApiKey
    announced: bool  # False: ZooKeeper was unreachable, workers notice within their cache TTL


class KeyStore:
    """The `api_keys` collection, for the command line (create, list, revoke) and the workers (get)."""

    def __init__(self, settings: Settings, client: pymongo.MongoClient[MongoDocument] | None = None) -> None:
        self.settings = settings
        self._own_client = client is None
        self.client = client or mongo_client(settings)

    @property
    def collection(self) -> Collection[MongoDocument]:
        return self.client[self.settings.mongo_database][MongoCollections.API_KEYS]

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, name: str, scopes: Iterable[str], *, rate_per_s: float | None = None,
               replace: bool = False) -> tuple[ApiKey, str, list[Revoked]]:
        """A new key (and its token, to show once); `replace` first revokes the active keys of `name`."""
        if not _NAME.match(name):
            raise ApiKeyError(f"bad key name {name!r}: 1 to 64 of letters, digits, '_', '.', '@', '-'")
        allowed = parse_scopes(scopes)
        if rate_per_s is not None and not 0 < rate_per_s <= MAX_RATE_PER_S:
            raise ApiKeyError(f"bad rate {rate_per_s:g}: requests per second above 0, at most "
                              f"{MAX_RATE_PER_S:g}")
        revoked = [self.revoke(key.key_id) for key in self.list() if key.name == name] if replace else []
        key_id, secret, token = new_token()
        salt = secrets.token_bytes(SALT_BYTES)
        key = ApiKey(key_id, name, allowed, salt, hash_secret(salt, secret), rate_per_s,
                     datetime.now(UTC).replace(microsecond=0))
        self.collection.insert_one(key.to_document())
        return key, token, revoked

    def get(self, key_id: str) -> ApiKey | None:
        document = self.collection.find_one({"_id": key_id})
        return None if document is None else ApiKey.from_document(document)

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query: MongoDocument = {} if include_revoked else {"revoked_at": None}
        keys = [ApiKey.from_document(d) for d in self.collection.find(query)]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    def revoke(self, key_id: str) -> Revoked:
        """Mark the key revoked (kept, for the record) and tell the workers; revoking twice is a no-op."""
        now = datetime.now(UTC).replace(microsecond=0)
        self.collection.update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}})
        key = self.get(key_id)
        if key is None:
            raise ApiKeyError(f"no API key with id {key_id!r} (`finegrain keys list` shows them)")
        return Revoked(key, self._announce(key_id))

    def _announce(self, key_id: str) -> bool:
        try:
            zk = zookeeper_client(self.settings)
        except Exception as exc:  # kazoo raises its own timeout types and socket errors
            log.warning("keys: ZooKeeper unreachable, workers notice the revocation of %s within their "
                        "cache TTL: %s", key_id, exc)
            return False
        try:
            return announce(zk, ZkPaths(self.settings.zookeeper_root).keys(), op="revoke", key_id=key_id)
        finally:
            zk.stop()
            zk.close()


def bearer_headers(settings: Settings) -> dict[str, str]:
    """The header the command line's API clients send: FINEGRAIN_API_KEY as a Bearer token (none if unset)."""
    if settings.api_key is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
