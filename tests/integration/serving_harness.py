"""The API under gunicorn against the real local stack, for the serving integration tests.

`ServingDeployment` gives the API its own namespaces (a dedicated redis-server it may stop, its own
ZooKeeper root and Mongo database), fills them with the offline jobs' datasets and a small XGBoost
ranker published through the registry, and runs the API with `serving.process.ApiServer`, with
authentication on: `token` is a key of every scope, also the settings' FINEGRAIN_API_KEY (what the
CLI's API clients send)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import redis

from finegrain.settings import Settings
from finegrain.storage.clients import mongo_client
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from models.training_set import build_cutoff
from models.xgboost_ranker import RankerConfig, train_ranker
from serving.process import ApiServer
from spark_jobs import JOBS
from spark_jobs.runner import load_job, run_jobs
from tests.integration.api_keys import bearer

AS_OF = date(2010, 12, 10)
TRAIN_CUTOFF = date(2010, 10, 11)
RANKER = "ranker_xgboost"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class DedicatedRedis:
    """A redis-server of the serving tests' own, so a test can stop it without hurting others."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), 10, "the dedicated redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class ServingDeployment:
    settings: Settings
    redis_server: DedicatedRedis
    server: ApiServer
    token: str

    @property
    def base_url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def build_datasets(settings: Settings, events: Path, spark: Any) -> None:
    run_jobs([load_job(name) for name in JOBS], AS_OF, events, settings=settings, spark=spark)


def register_ranker(settings: Settings, events: Path, *, rounds: int = 40, max_users: int = 300) -> str:
    """A small real XGBoost ranker, registered; returns its version (not published)."""
    import pandas as pd

    rows = build_cutoff(pd.read_parquet(events), TRAIN_CUTOFF, max_users=max_users)
    ranker, _ = train_ranker(rows, RankerConfig(rounds=rounds, nthread=1))
    artifact = ranker.artifact({})
    manifest = ModelRegistry(settings).register(
        RANKER, artifact.model, features=artifact.feature_names, metrics={"ndcg@20": 0.35},
        params={"gate_metric": "ndcg@20", "evaluation": "serving-tests"}, framework="xgboost")
    return manifest.version


def publish(settings: Settings, name: str, version: str) -> None:
    with ModelPublisher(settings) as publisher:
        result = publisher.publish(name, version, force=True)
    assert result.published, result


def drop_namespace(settings: Settings) -> None:
    client = mongo_client(settings)
    client.drop_database(settings.mongo_database)
    client.close()
