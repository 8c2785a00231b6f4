"""API keys for the integration tests: real keys created in the test's own MongoDB database through
`finegrain.apikeys.KeyStore` (the API under test verifies them the way it verifies any client's)."""

from __future__ import annotations

from finegrain.apikeys import KeyStore, Scope
from finegrain.settings import Settings

# High enough that no test but the rate-limit ones ever meets it (a key's rate is per worker).
UNLIMITED = 100_000.0


def api_key(settings: Settings, *scopes: Scope | str, name: str = "tests", rate_per_s: float = UNLIMITED
            ) -> str:
    """A new key of `scopes` (every scope if none given); returns the token a client sends."""
    with KeyStore(settings) as store:
        _, token, _ = store.create(name, [str(s) for s in scopes] or list(Scope), rate_per_s=rate_per_s)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
