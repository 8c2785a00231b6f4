"""An API worker is the serving layer and what lies below it: importing `serving.wsgi` (which builds the
application against the real stack, as gunicorn does in each worker) loads no Spark job module and no
PySpark, so a worker neither pays for them in memory nor depends on them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from finegrain.settings import Settings

pytestmark = pytest.mark.integration

PROBE = """
import os, sys
import serving.wsgi
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("spark_jobs", "pyspark", "cli"))
print("LOADED", loaded, flush=True)
os._exit(1 if loaded else 0)  # the worker's watcher threads would keep a plain exit waiting
"""


def test_an_api_worker_imports_no_spark_job_and_no_pyspark(settings: Settings) -> None:
    env = {**os.environ, "FINEGRAIN_REDIS_URL": settings.redis_url,
           "FINEGRAIN_MONGO_DATABASE": settings.mongo_database,
           "FINEGRAIN_ZOOKEEPER_ROOT": settings.zookeeper_root,
           "FINEGRAIN_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "LOADED []" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode == 0
