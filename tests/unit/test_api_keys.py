"""API keys without a store: the token format, the stored hash (pinned: changing it invalidates every
key already handed out), scopes, and the per-key token bucket."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from finegrain.apikeys import (
    KEY_ID_ALPHABET,
    ApiKey,
    ApiKeyError,
    Scope,
    bearer_headers,
    hash_secret,
    new_token,
    parse_scopes,
    parse_token,
)
from finegrain.settings import Settings
from serving.auth.limits import RateLimiter, retry_after

# HMAC-SHA256(key=salt, message=secret) of a fixed salt and secret.
GOLDEN_DIGEST = "f99fa037ad6aa762c1f88729ed9bda57d55a4ceeabbd75de675fd44df65d7f10"


def test_the_stored_hash_is_a_salted_hmac_sha256_of_the_secret() -> None:
    salt, secret = bytes(range(16)), "A" * 43
    assert hash_secret(salt, secret).hex() == GOLDEN_DIGEST
    assert hash_secret(salt, secret) == hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    assert hash_secret(bytes(16), secret) != hash_secret(salt, secret)  # the salt matters


def test_a_new_token_parses_back_to_its_id_and_secret_and_matches_only_itself() -> None:
    key_id, secret, token = new_token()
    assert token == f"fg_{key_id}_{secret}" and len(key_id) == 12 and set(key_id) <= set(KEY_ID_ALPHABET)
    assert parse_token(token) == (key_id, secret)
    salt = bytes(16)
    key = ApiKey(key_id, "t", frozenset({Scope.RECOMMEND}), salt, hash_secret(salt, secret), None,
                 datetime.now(UTC))
    assert key.matches(secret)
    other = new_token()[1]
    assert not key.matches(other) and not key.matches(secret[:-1])
    assert len({new_token()[2] for _ in range(200)}) == 200


@pytest.mark.parametrize("bad", ["", "fg_", "Bearer x", "fg_ABCDEFGHIJKL_" + "a" * 43,
                                 "fg_abcdefghijk_" + "a" * 43, "fg_abcdefghijkl_" + "a" * 42,
                                 "fg_abcdefghijkl_" + "a" * 44, "fg_abcdefghijkl_" + "a" * 42 + "!",
                                 "x" * 10_000])
def test_malformed_tokens_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ApiKeyError) as caught:
        parse_token(bad)
    message = str(caught.value)
    assert message.startswith("not a Finegrain API key")
    assert "a" * 42 not in message and "x" * 100 not in message


def test_scopes_are_checked_and_named() -> None:
    assert parse_scopes(["recommend", " Events "]) == {Scope.RECOMMEND, Scope.EVENTS}
    with pytest.raises(ApiKeyError, match="unknown scope 'read'"):
        parse_scopes(["read"])
    with pytest.raises(ApiKeyError, match="at least one scope"):
        parse_scopes([])


def test_the_document_layout_keeps_no_secret() -> None:
    key_id, secret, _ = new_token()
    salt = bytes(range(16))
    key = ApiKey(key_id, "shop", frozenset({Scope.ADMIN, Scope.EVENTS}), salt, hash_secret(salt, secret), 5.0,
                 datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    document = key.to_document()
    assert sorted(document) == ["_id", "created_at", "digest", "name", "rate_per_s", "revoked_at", "salt",
                                "scopes"]
    assert document["scopes"] == ["admin", "events"] and secret not in repr(document)
    assert ApiKey.from_document(document) == key
    shown = key.to_json()
    assert "salt" not in shown and "digest" not in shown and shown["prefix"] == f"fg_{key_id}_..."


def test_the_cli_sends_the_configured_key_as_a_bearer_token() -> None:
    assert bearer_headers(Settings(api_key=None)) == {}
    settings = Settings(api_key="fg_abcdefghijkl_" + "a" * 43)  # type: ignore[arg-type]
    assert bearer_headers(settings) == {"Authorization": "Bearer fg_abcdefghijkl_" + "a" * 43}
    assert "a" * 43 not in repr(settings) and settings.environment()["FINEGRAIN_API_KEY"].endswith("a" * 43)


def test_a_token_bucket_passes_a_burst_then_the_rate_and_says_how_long_to_wait() -> None:
    limiter = RateLimiter(10.0, burst_s=0.5)  # 10 per second, bursts of 5
    waits = [limiter.take("k", now=100.0) for _ in range(7)]
    assert waits[:5] == [0.0] * 5 and waits[5] == pytest.approx(0.1) and waits[6] == pytest.approx(0.1)
    assert limiter.take("k", now=100.11) == 0.0  # a token came back after a tenth of a second
    assert limiter.take("k", now=100.11) > 0
    assert limiter.take("other", now=100.11) == 0.0  # keys do not share a bucket
    assert limiter.take("k", rate_per_s=1.0, now=200.0) == 0.0  # a key's own rate: a burst of 1 (0.5 s x 1)
    assert limiter.take("k", rate_per_s=1.0, now=200.0) == pytest.approx(1.0)
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"


def test_the_limiter_keeps_a_bounded_number_of_buckets() -> None:
    limiter = RateLimiter(1.0, burst_s=1.0, max_keys=3)
    for key in "abcd":
        limiter.take(key, now=0.0)
    assert limiter.take("a", now=0.0) == 0.0  # "a" was dropped first: a full bucket again
    assert limiter.take("d", now=0.0) > 0
