"""The API's Prometheus metrics. Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR
(set by serving/gunicorn_conf.py before any worker starts) and /metrics aggregates them all."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Counter("finegrain_requests_total", "HTTP requests by route and status", ["route", "status"])
REQUEST_LATENCY = Histogram("finegrain_request_seconds", "HTTP request latency by route", ["route"],
                            buckets=LATENCY_BUCKETS)
STAGE_LATENCY = Histogram("finegrain_stage_seconds", "Recommendation latency per stage", ["stage"],
                          buckets=LATENCY_BUCKETS)
CHANNEL_LATENCY = Histogram("finegrain_channel_seconds", "Recall latency per channel", ["channel"],
                            buckets=LATENCY_BUCKETS)
CHANNEL_CANDIDATES = Histogram("finegrain_channel_candidates", "Candidates per channel per request",
                               ["channel"], buckets=(0, 1, 10, 50, 100, 200, 300, 500, 1000))
CANDIDATES = Histogram("finegrain_candidates", "Merged candidates per request (what the ranker scores)",
                       buckets=(0, 100, 250, 500, 750, 900, 1000, 1500, 2000))
CHANNEL_FAILURES = Counter("finegrain_channel_failures_total", "Channels dropped from a request",
                           ["channel", "reason"])
DEGRADED = Counter("finegrain_degraded_responses_total", "Responses served degraded", ["reason"])
COLD_START = Counter("finegrain_cold_start_total", "Recommendations for users the features do not know")
MODEL_INFO = Gauge("finegrain_model_info", "Model and dataset versions loaded by each worker (value 1)",
                   ["kind", "name", "version"], multiprocess_mode="liveall")
AUTH = Counter("finegrain_auth_total", "Requests by authentication outcome (open routes not counted)",
               ["outcome"])
AUTH_CACHE = Counter("finegrain_auth_cache_total", "Key lookups by the verified-key cache: hit, miss (read "
                     "from MongoDB), stale (MongoDB unreachable, the cached record served), unavailable",
                     ["result"])
ZOOKEEPER_CONNECTED = Gauge("finegrain_zookeeper_connected", "1 while the worker's ZooKeeper session is "
                            "connected; 0: it serves the versions it has but receives no new ones",
                            multiprocess_mode="liveall")
SWAPS = Counter("finegrain_swaps_total", "Hot swaps by target and outcome", ["target", "outcome"])


def render() -> tuple[bytes, str]:
    """The exposition of every worker when running multi-process, else of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
