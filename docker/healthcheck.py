"""A container's health check (HEALTHCHECK of docker/*/Containerfile): exit 0 when the service answers.

    healthcheck.py api        the API's /healthz on FINEGRAIN_API_BIND (the worker process is up)
    healthcheck.py sidecar    the sidecar's /metrics on FINEGRAIN_STREAM_METRICS_BIND
    healthcheck.py airflow    the api-server's /api/v2/monitor/health on AIRFLOW__API__PORT (8080)
    healthcheck.py URL        any URL answering 2xx (the Spark master's and worker's web UIs)

The binds come from the project's settings, so the check follows a changed FINEGRAIN_* variable."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def url_of(target: str) -> str:
    if "://" in target:
        return target
    if target == "airflow":
        return f"http://127.0.0.1:{os.environ.get('AIRFLOW__API__PORT', '8080')}/api/v2/monitor/health"
    from finegrain.settings import get_settings

    settings = get_settings()
    if target == "api":
        _, port = settings.api_address()
        return f"http://127.0.0.1:{port}/healthz"
    if target == "sidecar":
        port = settings.stream_metrics_bind.rpartition(":")[2]
        return f"http://127.0.0.1:{port}/metrics"
    raise SystemExit(f"healthcheck: unknown target {target!r} (api, sidecar, airflow or a URL)")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: healthcheck.py api|sidecar|airflow|URL", file=sys.stderr)
        return 2
    url = url_of(sys.argv[1])
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
