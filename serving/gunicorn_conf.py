"""gunicorn settings for the API; everything deployment-specific comes from FINEGRAIN_* settings.

- No preload: each worker imports the app after the fork, so Kafka, ZooKeeper and Mongo clients
  (which own threads and sockets) are never shared across processes.
- Prometheus multi-process mode: every worker writes its metrics to a shared folder, /metrics on
  any worker aggregates all of them; a dead worker's files are marked so live-only gauges drop it.
- FINEGRAIN_API_METRICS_BIND, when set, is a second listener that serves only /metrics (without a
  key), /healthz and /readyz (`serving.api.auth`), e.g. on a private interface for Prometheus.
- Request lines and headers keep gunicorn's limits (4,094 bytes per line, 100 headers of 8,190 bytes):
  a longer one is refused before it reaches the app.
- Sync workers by default (FINEGRAIN_API_THREADS=1): a recommendation is CPU-bound Python, so threads
  in one process only queue behind the GIL; gthread (more threads) suits slow clients and keep-alive.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from finegrain.settings import get_settings

_settings = get_settings()
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                          str(_settings.var_dir / "serving" / "prometheus")))

bind = [_settings.api_bind, *([_settings.api_metrics_bind] if _settings.api_metrics_bind else [])]
workers = _settings.api_workers
threads = _settings.api_threads
worker_class = "gthread" if threads > 1 else "sync"
timeout = 60
graceful_timeout = 10
keepalive = 5
preload_app = False
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "finegrain-api"


def on_starting(server: Any) -> None:
    # Metrics of a previous run would be summed into this one's.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    services = getattr(app, "services", None)
    if services is not None:
        services.close()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
