"""Finegrain's API and sidecar images, as docker/build made them, run with podman on the host network
against the local stack: the API container answers recommendations from the models published in the
registry, and events posted to it reach a real-time profile in Redis through the sidecar container.

Each container gets the test session's namespaces through FINEGRAIN_* variables only, as a deployment
would, and ports of this tier's own (18610-18629)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis

from finegrain.codecs import decode
from finegrain.schemas import EventType, RealtimeProfile
from finegrain.settings import PROJECT_ROOT, Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import RedisKeys
from tests.integration.api_keys import api_key, bearer
from tests.integration.serving_harness import (
    AS_OF,
    RANKER,
    build_datasets,
    drop_namespace,
    publish,
    register_ranker,
)

pytestmark = pytest.mark.containers

API_PORT, API_METRICS_PORT, SIDECAR_METRICS_PORT = 18610, 18611, 18620
# Paths of the host (the test's var dir, the data file): a container has its own (the image's).
HOST_ONLY = {"FINEGRAIN_VAR_DIR", "FINEGRAIN_SOURCE_CSV", "FINEGRAIN_AIRFLOW_HOME", "FINEGRAIN_EVENT_ARCHIVE",
             "FINEGRAIN_SERVING_CONFIG", "FINEGRAIN_TF_SERVING_MODEL_DIR", "FINEGRAIN_API_KEY"}


def podman(*arguments: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(PROJECT_ROOT / "docker" / "containers.conf")}
    return subprocess.run(["podman", *arguments], env=env, capture_output=True, text=True, check=check,
                          timeout=timeout)


def image(name: str) -> str:
    tag = os.environ.get("IMAGE_TAG")
    if not tag:
        pytest.fail("IMAGE_TAG is not set: run the tier with bin/test-containers (it builds the images "
                    "with docker/build and passes their tag)")
    reference = f"localhost/finegrain-{name}:{tag}"
    if podman("image", "exists", reference, check=False).returncode != 0:
        pytest.fail(f"{reference} does not exist: build it with `IMAGE_TAG={tag} docker/build {name}`")
    return reference


@dataclass
class Container:
    name: str

    @classmethod
    def run(cls, reference: str, settings: Settings, **extra: str) -> Container:
        name = f"fgtest-{reference.split('/')[-1].split(':')[0]}-{uuid.uuid4().hex[:6]}"
        environment = {k: v for k, v in settings.environment().items()
                       if k.startswith("FINEGRAIN_") and k not in HOST_ONLY}
        environment.update(extra)
        options = [f"--env={key}={value}" for key, value in sorted(environment.items())]
        podman("run", "--detach", "--network=host", f"--name={name}", *options, reference)
        return cls(name)

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def logs(self) -> str:
        result = podman("logs", "--tail", "60", self.name, check=False)
        return result.stdout + result.stderr

    def healthy(self) -> bool:
        """The image's own HEALTHCHECK, run now (no systemd here to run it on its interval)."""
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def remove(self) -> None:
        podman("rm", "--force", "--time", "20", self.name, check=False)


def wait_for(condition: Any, timeout_s: float, what: str, container: Container) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not container.running():
            raise AssertionError(f"{container.name} exited while waiting for {what}:\n{container.logs()}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{container.logs()}")


@dataclass
class Deployment:
    settings: Settings
    token: str
    user: str
    item: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{API_PORT}"


@pytest.fixture(scope="module")
def deployment(settings: Settings, retail_data: Path, spark: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The test session's namespaces filled as the nightly pipeline would: the offline jobs' datasets
    and an XGBoost ranker registered and published (on the host, with the project's own code)."""
    own = settings.model_copy(update={
        "mongo_database": f"{settings.mongo_database}_containers",
        "zookeeper_root": f"{settings.zookeeper_root}/containers",
        "kafka_topic_prefix": f"{settings.kafka_topic_prefix}_containers",
        "var_dir": tmp_path_factory.mktemp("containers"),
        "api_bind": f"127.0.0.1:{API_PORT}", "api_metrics_bind": f"127.0.0.1:{API_METRICS_PORT}",
        "api_workers": 2, "stream_metrics_bind": f"127.0.0.1:{SIDECAR_METRICS_PORT}"})
    events_path = retail_data / "events.parquet"
    build_datasets(own, events_path, spark)
    publish(own, RANKER, register_ranker(own, events_path))
    events = pd.read_parquet(events_path, columns=["user_id", "item_id", "timestamp"])
    before = events[events["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")]
    user = str(before["user_id"].value_counts().index[0])
    item = str(before["item_id"].value_counts().index[0])
    try:
        yield Deployment(own, api_key(own, name="container-tests"), user, item)
    finally:
        drop_namespace(own)


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> Iterator[Container]:
    container = Container.run(image("api"), deployment.settings)
    try:
        wait_for(lambda: _status(f"{deployment.url}/readyz") == 200, 300, "the API's /readyz", container)
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def sidecar(deployment: Deployment) -> Iterator[Container]:
    container = Container.run(image("sidecar"), deployment.settings, FINEGRAIN_SPARK_MASTER="local[2]")
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{SIDECAR_METRICS_PORT}/metrics") == 200, 300,
                 "the sidecar's /metrics", container)
        yield container
    finally:
        container.remove()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return 0


def test_the_api_container_answers_from_the_published_models(api: Container, deployment: Deployment) -> None:
    response = httpx.get(f"{deployment.url}/v1/recommendations", params={"user_id": deployment.user, "n": 10},
                         headers=bearer(deployment.token), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ranker"] == RANKER and body["degraded"] is False and body["cold_start"] is False, body
    assert len(body["items"]) == 10 and all(item["channels"] for item in body["items"])
    # What the workers serve is what ZooKeeper publishes: the metrics listener (no key) says so.
    metrics = httpx.get(f"http://127.0.0.1:{API_METRICS_PORT}/metrics", timeout=10).text
    assert f'name="{RANKER}"' in metrics and "finegrain_model_info" in metrics
    assert httpx.get(f"{deployment.url}/v1/recommendations", params={"user_id": deployment.user},
                     timeout=10).status_code == 401  # authentication is on in the image
    assert api.healthy()
    assert podman("exec", api.name, "id", "-u").stdout.strip() == "10001"  # not root


def test_the_sidecar_container_folds_posted_events_into_a_profile(
        api: Container, sidecar: Container, deployment: Deployment) -> None:
    client: redis.Redis = redis_client(deployment.settings)
    user = f"container-{uuid.uuid4().hex[:6]}"
    events = [{"user_id": user, "item_id": deployment.item, "type": kind} for kind in ("view", "add_to_cart")]
    response = httpx.post(f"{deployment.url}/v1/events", json={"events": events},
                          headers=bearer(deployment.token), timeout=30)
    assert response.status_code == 202, response.text

    def folded() -> RealtimeProfile | None:
        value = client.get(RedisKeys.realtime_profile(user))
        profile = None if value is None else decode(RealtimeProfile, bytes(value))  # type: ignore[arg-type]
        return profile if profile is not None and len(profile.recent) == 2 else None

    # The first micro-batch starts Spark's Python workers inside the container: allow a minute or two.
    profile = wait_for(folded, 240, f"{user}'s profile in Redis", sidecar)
    # Newest first, as the profile keeps them.
    assert [(r.item_id, r.type) for r in profile.recent] == [(deployment.item, EventType.ADD_TO_CART),
                                                             (deployment.item, EventType.VIEW)]
    metrics = httpx.get(f"http://127.0.0.1:{SIDECAR_METRICS_PORT}/metrics", timeout=10).text
    assert 'finegrain_stream_events_total{outcome="accepted"}' in metrics
    assert sidecar.healthy()
