"""The Falcon application: routes, error shape, metrics middleware, and the per-worker services.

Every route is added here, so this module is the API's one route table (`serving.openapi` documents
it); the resources live in `serving.api`, the services they call elsewhere in `serving`.

`create_app` builds everything a worker serves with; gunicorn calls it once per worker (after the
fork, see serving/wsgi.py), so every client (Redis, Kafka, ZooKeeper, Mongo) belongs to one process.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import falcon
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from finegrain.apikeys import Scope
from finegrain.settings import Settings, get_settings
from serving import metrics
from serving.api.auth import AuthMiddleware
from serving.api.errors import install_error_handlers
from serving.api.events import EventsResource
from serving.api.health import HealthResource, MetricsResource, ReadyResource
from serving.api.recommendations import RecommendationsResource, SimilarItemsResource
from serving.api.rules import RuleResource, RulesResource
from serving.auth.keys import VerifiedKeys
from serving.auth.limits import RateLimiter
from serving.config import ServingConfig
from serving.events.ingest import EventIngest
from serving.openapi import OpenApiResource
from serving.recommend import Recommender
from serving.rules.engine import RuleEngine
from serving.rules.service import RuleService
from serving.rules.store import RuleStore
from serving.swap import Runtime

log = logging.getLogger(__name__)


class MetricsMiddleware:
    """Requests and latency per route template (not per raw path: ids would explode the series)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        elapsed = time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        metrics.REQUESTS.labels(route, str(resp.status_code)).inc()
        metrics.REQUEST_LATENCY.labels(route).observe(elapsed)


def request_redis(settings: Settings, config: ServingConfig) -> redis.Redis:
    """The request path's client: a short timeout and no retry of a timeout, so a dead Redis costs one
    timeout and the request degrades instead of stalling (the loading client keeps its patient
    defaults). A broken connection is retried once, at once, on a new one: after Redis restarts, every
    pooled connection is dead, and without it each would degrade one more answer when next used (seen
    seconds after Redis was back, in the fault test); with Redis down the retry is one more refused
    connect, well under a millisecond."""
    timeout = config.redis_timeout_ms / 1000.0
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                                health_check_interval=0)


def auth_middleware(settings: Settings, config: ServingConfig, keys: VerifiedKeys | None = None
                    ) -> AuthMiddleware:
    """The authentication of every route (also for a test serving a few resources alone). With
    FINEGRAIN_API_AUTH=false: none, and a warning in the log."""
    if not settings.api_auth:
        log.warning("API AUTHENTICATION IS OFF (FINEGRAIN_API_AUTH=false): anyone who can reach %s can "
                    "read recommendations, post events and change rules", settings.api_bind)
        return AuthMiddleware(None, None, metrics_listener=settings.metrics_address())
    auth = config.auth
    keys = keys or VerifiedKeys(settings, ttl_s=auth.cache_ttl_s, cache_size=auth.cache_size)
    limiter = RateLimiter(auth.rate_per_s, burst_s=auth.burst_s, max_keys=auth.cache_size)
    return AuthMiddleware(keys, limiter, metrics_listener=settings.metrics_address())


class Services:
    """What one worker runs: the served state, the recommender, the ingest of events, the keys."""

    def __init__(self, settings: Settings, config: ServingConfig) -> None:
        self.settings = settings
        self.config = config
        self.keys = VerifiedKeys(settings, ttl_s=config.auth.cache_ttl_s, cache_size=config.auth.cache_size,
                                 snapshot=settings.var_dir / "serving" / "api_keys.json")
        self.runtime = Runtime(settings, config)
        self.redis = request_redis(settings, config)
        self.events = EventIngest.from_settings(settings)
        self.rules = build_rules(settings, config, self.runtime, self.redis)
        self.recommender = Recommender(config, self.redis, {"rules": self.rules})

    def start(self) -> None:
        if self.settings.api_auth:
            self.keys.start()
        self.runtime.start()
        self.rules.start()

    def close(self) -> None:
        self.recommender.close()
        self.events.close()
        self.rules.close()
        self.keys.close()
        self.runtime.stop()


def build_rules(settings: Settings, config: ServingConfig, runtime: Runtime, client: redis.Redis
                ) -> RuleService:
    return RuleService(settings, config, runtime, client)


def add_rule_routes(app: falcon.App[falcon.Request, falcon.Response], store: RuleStore, engine: RuleEngine,
                    config: ServingConfig | None = None) -> None:
    """The rules API; a function of its own so a test can serve it over a store and engine alone."""
    rule = RuleResource(store, engine, config=config)
    app.add_route("/v1/rules", RulesResource(store))
    app.add_route("/v1/rules/{name}", rule)
    app.add_route("/v1/rules/{name}/preview", rule, suffix="preview")


class FinegrainApp(falcon.App):  # type: ignore[type-arg]  # WSGI request/response defaults
    """A Falcon app that carries its worker's services (for the worker-exit hook and tests)."""

    services: Services


def api_app(settings: Settings, config: ServingConfig, keys: VerifiedKeys | None = None) -> FinegrainApp:
    """An app with no routes yet but everything every route goes through: the metrics, the
    authentication, the error shape. `create_app` mounts every route on it; a test or benchmark that
    serves a few resources alone mounts just those."""
    # Metrics first: a refused request is still counted, with its 401/403/429.
    app = FinegrainApp(middleware=[MetricsMiddleware(), auth_middleware(settings, config, keys)])
    app.req_options.strip_url_path_trailing_slash = True
    install_error_handlers(app)
    return app


def create_app(settings: Settings | None = None, config: ServingConfig | None = None, *,
               services: Services | None = None, start: bool = True) -> FinegrainApp:
    settings = settings or get_settings()
    config = config or ServingConfig.load(settings.serving_config)
    services = services or Services(settings, config)
    if start:
        services.start()
    app = api_app(settings, config, services.keys)
    app.add_route("/v1/recommendations", RecommendationsResource(services.runtime, services.recommender))
    app.add_route("/v1/items/{item_id}/similar", SimilarItemsResource(services.runtime))
    app.add_route("/v1/events", EventsResource(services.events))
    add_rule_routes(app, services.rules.store, services.rules.engine, config)
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(services.runtime))
    app.add_route("/metrics", MetricsResource(Scope(settings.api_metrics_scope)))
    app.add_route("/openapi.json", OpenApiResource(settings.api_metrics_scope, scenes=list(config.scenes)))
    app.services = services
    return app
