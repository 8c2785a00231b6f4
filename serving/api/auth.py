"""Authentication, scopes and rate limits of every route, in one Falcon middleware.

Each resource says what each of its methods needs in a class attribute `auth` (HTTP method -> a
`Scope`, `ANY_KEY` for any valid key, or `OPEN` for no key at all); a responder a resource does not
declare needs `admin` (fail closed), and tests/unit/test_api_auth.py checks every mounted responder
is declared and matches the OpenAPI document. A request to a route that needs a key:

    no `Authorization: Bearer <key>`        401 missing_key   WWW-Authenticate: Bearer realm="finegrain"
    malformed, unknown, revoked, mismatch   401 invalid_key   ... error="invalid_token"
    over the key's rate                     429 rate_limited  Retry-After: <seconds>
    a valid key without the route's scope   403 insufficient_scope  ... error="insufficient_scope"
    the key cannot be verified now          503 unavailable   Retry-After (MongoDB down, key not cached)

The rate is checked before the scope, so probing routes with a key costs its budget too. With
FINEGRAIN_API_AUTH=false there are no keys and no rate limits (`serving.app` logs a warning).
A request that arrived on the FINEGRAIN_API_METRICS_BIND listener may only read /metrics (without a
key), /healthz and /readyz; everything else there is a 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import falcon

from finegrain.apikeys import ApiKey, Scope
from serving import metrics
from serving.api.errors import ApiError, unavailable
from serving.auth.keys import KeyRejected, KeysUnavailable, VerifiedKeys
from serving.auth.limits import RateLimiter, retry_after

ANY_KEY: Final = "any"
OPEN: Final = None
Requirement = Scope | Literal["any"] | None
Access = Mapping[str, Requirement]

REALM = 'Bearer realm="finegrain"'
METRICS_LISTENER_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})


def requirement(resource: Any, method: str) -> Requirement:
    """What `method` on `resource` needs; a responder nobody declared needs admin."""
    declared: Access = getattr(resource, "auth", None) or {}
    if method in declared:
        return declared[method]
    return Scope.ADMIN


def responder_methods(resource: Any) -> frozenset[str]:
    """The HTTP methods `resource` answers (`on_get`, `on_get_preview`, ... -> GET)."""
    return _methods_of(type(resource))


_METHODS: dict[type, frozenset[str]] = {}


def _methods_of(kind: type) -> frozenset[str]:  # per class: dir() is too slow to run per request
    methods = _METHODS.get(kind)
    if methods is None:
        methods = _METHODS[kind] = frozenset(name[3:].split("_", 1)[0].upper() for name in dir(kind)
                                             if name.startswith("on_") and callable(getattr(kind, name)))
    return methods


def _unauthorized(code: str, message: str, *, invalid: bool) -> ApiError:
    challenge = f'{REALM}, error="invalid_token"' if invalid else REALM
    return ApiError(401, code, message, "Authorization", headers={"WWW-Authenticate": challenge})


class AuthMiddleware:
    """`keys` None: authentication off (every route open, no rate limits)."""

    def __init__(self, keys: VerifiedKeys | None, limiter: RateLimiter | None, *,
                 metrics_listener: tuple[str, int] | None = None) -> None:
        self.keys = keys
        self.limiter = limiter
        self.metrics_listener = metrics_listener

    def _on_metrics_listener(self, req: falcon.Request) -> bool:
        if self.metrics_listener is None:
            return False
        _, port = self.metrics_listener
        return str(req.env.get("SERVER_PORT")) == str(port)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._on_metrics_listener(req) and req.path.rstrip("/") not in METRICS_LISTENER_ROUTES:
            raise ApiError(404, "not_found", "this listener serves only /metrics, /healthz and /readyz")

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is None:
            return  # no route: Falcon answers 404
        method = req.method.upper()
        if method not in responder_methods(resource):
            return  # no such responder: Falcon answers 405 (OPTIONS: its Allow header), nothing is read
        needed = requirement(resource, method)
        if needed is OPEN or self.keys is None:
            return
        if self._on_metrics_listener(req):  # only /metrics gets this far there
            return
        key = self._authenticate(req)
        self._limit(key)
        if needed != ANY_KEY and needed not in key.scopes:
            metrics.AUTH.labels("forbidden").inc()
            raise ApiError(403, "insufficient_scope",
                           f"API key {key.key_id} ({key.name}) lacks the scope {needed!s} this route "
                           f"needs; it has {', '.join(sorted(key.scopes))}", "Authorization",
                           headers={"WWW-Authenticate":
                                    f'{REALM}, error="insufficient_scope", scope="{needed}"'})
        metrics.AUTH.labels("ok").inc()
        req.context.api_key = key

    def _authenticate(self, req: falcon.Request) -> ApiKey:
        assert self.keys is not None
        header = req.get_header("Authorization")
        if not header:
            metrics.AUTH.labels("missing").inc()
            raise _unauthorized("missing_key", "this route needs an API key: send Authorization: Bearer "
                                "<key> (create one with `finegrain keys create`)", invalid=False)
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.AUTH.labels("malformed").inc()
            raise _unauthorized("invalid_key", "the Authorization header must be `Bearer <key>`",
                                invalid=True)
        try:
            return self.keys.verify(token.strip())
        except KeyRejected as exc:
            metrics.AUTH.labels(exc.reason).inc()
            raise _unauthorized("invalid_key", exc.message, invalid=True) from None
        except KeysUnavailable as exc:
            metrics.AUTH.labels("unavailable").inc()
            raise unavailable(str(exc), retry_after_s=int(self.keys.retry_s)) from None

    def _limit(self, key: ApiKey) -> None:
        if self.limiter is None:
            return
        wait = self.limiter.take(key.key_id, key.rate_per_s)
        if wait > 0:
            metrics.AUTH.labels("rate_limited").inc()
            rate = key.rate_per_s or self.limiter.default_rate_per_s
            raise ApiError(429, "rate_limited", f"API key {key.key_id} is over its {rate:g} requests per "
                           f"second (per worker); retry after {retry_after(wait)} s", "Authorization",
                           headers={"Retry-After": retry_after(wait)})
