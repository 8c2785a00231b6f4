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

from finegrain.settings import Settings, get_settings
from serving import metrics
from serving.api.errors import install_error_handlers
from serving.api.events import EventsResource
from serving.api.health import HealthResource, MetricsResource, ReadyResource
from serving.api.recommendations import RecommendationsResource, SimilarItemsResource
from serving.api.rules import RuleResource, RulesResource
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
    """The request path's client: a short timeout and no retries, so a dead Redis costs one timeout
    and the request degrades instead of stalling (the loading client keeps its patient defaults)."""
    timeout = config.redis_timeout_ms / 1000.0
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), health_check_interval=0)


class Services:
    """What one worker runs: the served state, the recommender and the ingest of events."""

    def __init__(self, settings: Settings, config: ServingConfig) -> None:
        self.settings = settings
        self.config = config
        self.runtime = Runtime(settings, config)
        self.redis = request_redis(settings, config)
        self.events = EventIngest.from_settings(settings)
        self.rules = build_rules(settings, config, self.runtime, self.redis)
        self.recommender = Recommender(config, self.redis, {"rules": self.rules})

    def start(self) -> None:
        self.runtime.start()
        self.rules.start()

    def close(self) -> None:
        self.recommender.close()
        self.events.close()
        self.rules.close()
        self.runtime.stop()


def build_rules(settings: Settings, config: ServingConfig, runtime: Runtime, client: redis.Redis
                ) -> RuleService:
    return RuleService(settings, config, runtime, client)


def add_rule_routes(app: falcon.App[falcon.Request, falcon.Response], store: RuleStore, engine: RuleEngine
                    ) -> None:
    """The rules API; a function of its own so a test can serve it over a store and engine alone."""
    rule = RuleResource(store, engine)
    app.add_route("/v1/rules", RulesResource(store))
    app.add_route("/v1/rules/{name}", rule)
    app.add_route("/v1/rules/{name}/preview", rule, suffix="preview")


class FinegrainApp(falcon.App):  # type: ignore[type-arg]  # WSGI request/response defaults
    """A Falcon app that carries its worker's services (for the worker-exit hook and tests)."""

    services: Services


def create_app(settings: Settings | None = None, config: ServingConfig | None = None, *,
               services: Services | None = None, start: bool = True) -> FinegrainApp:
    settings = settings or get_settings()
    config = config or ServingConfig.load(settings.serving_config)
    services = services or Services(settings, config)
    if start:
        services.start()
    app = FinegrainApp(middleware=[MetricsMiddleware()])
    app.req_options.strip_url_path_trailing_slash = True
    install_error_handlers(app)
    app.add_route("/v1/recommendations", RecommendationsResource(services.runtime, services.recommender))
    app.add_route("/v1/items/{item_id}/similar", SimilarItemsResource(services.runtime))
    app.add_route("/v1/events", EventsResource(services.events))
    add_rule_routes(app, services.rules.store, services.rules.engine)
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(services.runtime))
    app.add_route("/metrics", MetricsResource())
    app.add_route("/openapi.json", OpenApiResource())
    app.services = services
    return app
