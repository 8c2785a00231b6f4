"""The smoke test of a running API after a publication: every worker serves what is published, and a
real request is answered with it. `finegrain api smoke` runs it; it is the nightly DAG's last task.

1. What must be served: each model the serving configuration needs (`serving.swap.required_models`)
   at the version its znode holds, and each served dataset at its current version (the Redis
   pointers the workers follow). `expect` (model -> version, the versions the caller just published)
   must be what the znodes hold: otherwise another publication overtook them, or they never landed.
2. Workers swap in the background, so wait (up to `timeout_s`) until every worker registered in
   ZooKeeper (`finegrain api status`) reports exactly those versions and none refused them, and the
   API's `/readyz` answers ready.
3. Ask `GET /v1/recommendations` for a known user in one scene per ranker, with the key of
   FINEGRAIN_API_KEY (scope `recommend`) as any client would: the answer must be ranked (not the cold
   start), not degraded, by that scene's ranker, and name the published versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from finegrain.apikeys import bearer_headers
from finegrain.errors import FinegrainError
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.workers import worker_states
from models.publishing import ModelPublisher
from serving.config import ServingConfig
from serving.scenes import RANKER_MODELS
from serving.state import dataset_versions
from serving.swap import required_models

POLL_S = 0.5
# A degraded answer is asked again this many times before it fails the test: a channel over its time
# budget on a busy machine (a nightly run's last minutes) is a slow moment, not a broken deployment;
# a degradation that lasts (a store down, a model missing) stays one on every attempt.
DEGRADED_ATTEMPTS = 5
DEGRADED_PAUSE_S = 1.0


class SmokeTestError(FinegrainError):
    """The API does not serve what is published, or does not answer as it should."""


@dataclass
class SmokeReport:
    url: str
    models: dict[str, str]  # what is published (and served)
    datasets: dict[str, str]
    workers: int
    user: str
    answers: list[dict[str, Any]] = field(default_factory=list)  # one per scene asked
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "models": self.models, "datasets": self.datasets, "workers": self.workers,
                "user": self.user, "answers": self.answers, "waited_s": round(self.waited_s, 2)}


def published_models(settings: Settings, names: list[str]) -> dict[str, str]:
    """The version each znode holds; a model with nothing published is an error (the API cannot be
    ready without it)."""
    with ModelPublisher(settings) as publisher:
        found = {name: publisher.published(name)[0] for name in names}
    missing = [name for name, manifest in found.items() if manifest is None]
    if missing:
        raise SmokeTestError(f"nothing is published for {', '.join(missing)}: publish a version first "
                             "(`finegrain models publish NAME VERSION`)")
    return {name: manifest.version for name, manifest in found.items() if manifest is not None}


def smoke_test(settings: Settings, user: str, *, expect: Mapping[str, str] | None = None,
               config: ServingConfig | None = None, timeout_s: float = 120.0,
               say: Callable[[str], object] = print) -> SmokeReport:
    config = config or ServingConfig.load(settings.serving_config)
    url = f"http://{settings.api_bind}"
    models = published_models(settings, required_models(config))
    for name, version in (expect or {}).items():
        if models.get(name) != version:
            raise SmokeTestError(f"{name}: {version} was published but ZooKeeper holds "
                                 f"{models.get(name, 'nothing')} (overtaken by another publication, or not "
                                 "served by this configuration)")
    datasets = dataset_versions(redis_client(settings))
    report = SmokeReport(url, models, datasets, 0, user)
    say(f"waiting for every API worker to serve {_describe(models)} and datasets {_describe(datasets)}")
    started = time.monotonic()
    report.workers = _wait_for_workers(settings, url, models, datasets, started + timeout_s)
    report.waited_s = time.monotonic() - started
    say(f"{report.workers} workers serve them ({report.waited_s:.1f} s); asking for recommendations")
    scenes = {scene.ranker: name for name, scene in config.scenes.items() if scene.ranker != "none"}
    with httpx.Client(base_url=url, timeout=10.0, headers=bearer_headers(settings)) as client:
        for ranker, scene in sorted(scenes.items()):
            report.answers.append(ask_scene(client, user, scene, RANKER_MODELS[ranker], models,
                                                   datasets, say))
    return report


def _wait_for_workers(settings: Settings, url: str, models: Mapping[str, str], datasets: Mapping[str, str],
                      deadline: float) -> int:
    problem = "no answer yet"
    with ModelPublisher(settings) as publisher, httpx.Client(base_url=url, timeout=5.0) as client:
        while True:
            problem = _serving_problem(client, worker_states(settings, publisher.zk), models, datasets)
            if not problem:
                return len(worker_states(settings, publisher.zk))
            if time.monotonic() > deadline:
                raise SmokeTestError(f"the API at {url} does not serve what is published: {problem}")
            time.sleep(POLL_S)


def _serving_problem(client: httpx.Client, workers: list[dict[str, Any]], models: Mapping[str, str],
                     datasets: Mapping[str, str]) -> str:
    """Why the API does not serve `models` and `datasets` yet ("" when it does)."""
    try:
        ready = client.get("/readyz")
    except httpx.HTTPError as exc:
        return f"it does not answer ({exc}); start it with `finegrain api start`"
    if ready.status_code != 200:
        return f"/readyz answers {ready.status_code}: missing {ready.json().get('missing')}"
    if not workers:
        return "no worker is registered in ZooKeeper"
    for worker in workers:
        label = worker.get("worker", "?")
        for name, version in models.items():
            if name in worker.get("errors", {}):
                return f"worker {label} refused {name}: {worker['errors'][name]}"
            served = worker.get("models", {}).get(name)
            if served != version:
                return f"worker {label} serves {name} {served or 'nothing'}, not {version}"
        for dataset, version in datasets.items():
            served = worker.get("datasets", {}).get(dataset)
            if served != version:
                return f"worker {label} serves dataset {dataset} {served or 'nothing'}, not {version}"
    return ""


class DegradedAnswer(SmokeTestError):
    """The API answered, degraded."""


def ask_scene(client: httpx.Client, user: str, scene: str, ranker: str, models: Mapping[str, str],
                     datasets: Mapping[str, str], say: Callable[[str], object]) -> dict[str, Any]:
    for attempt in range(1, DEGRADED_ATTEMPTS + 1):
        try:
            return {**_ask(client, user, scene, ranker, models, datasets), "attempts": attempt}
        except DegradedAnswer as exc:
            if attempt == DEGRADED_ATTEMPTS:
                raise SmokeTestError(f"{exc} on each of {DEGRADED_ATTEMPTS} attempts") from None
            say(f"{exc}; asking again ({attempt} of {DEGRADED_ATTEMPTS})")
            time.sleep(DEGRADED_PAUSE_S)
    raise AssertionError("unreachable")


def _ask(client: httpx.Client, user: str, scene: str, ranker: str, models: Mapping[str, str],
         datasets: Mapping[str, str]) -> dict[str, Any]:
    try:
        response = client.get("/v1/recommendations", params={"user_id": user, "scene": scene, "n": 10})
    except httpx.HTTPError as exc:
        raise SmokeTestError(f"GET /v1/recommendations failed: {exc}") from None
    if response.status_code in (401, 403):
        raise SmokeTestError(f"GET /v1/recommendations answered {response.status_code}: FINEGRAIN_API_KEY "
                             "must be a key with the recommend scope (`finegrain keys create`): "
                             f"{response.text[:200]}")
    if response.status_code != 200:
        raise SmokeTestError(f"GET /v1/recommendations?user_id={user}&scene={scene} answered "
                             f"{response.status_code}: {response.text[:300]}")
    body = response.json()
    where = f"user {user} in scene {scene}"
    if body.get("degraded"):
        raise DegradedAnswer(f"{where}: a degraded answer ({'; '.join(body.get('degraded_reasons', []))})")
    if body.get("cold_start"):
        raise SmokeTestError(f"{where}: a cold-start answer (is {user} in the features dataset?)")
    if body.get("ranker") != ranker or not body.get("items"):
        raise SmokeTestError(f"{where}: ranked by {body.get('ranker')} with {len(body.get('items', []))} "
                             f"items, expected items ranked by {ranker}")
    versions = body.get("versions", {})
    wrong = {name: versions.get(name) for name, version in {**models, **datasets}.items()
             if versions.get(name) != version}
    if wrong:
        raise SmokeTestError(f"{where}: answered with versions {wrong}, not the published ones")
    return {"scene": scene, "ranker": ranker, "items": len(body["items"]),
            "candidates": body.get("candidates"), "top": [item["item_id"] for item in body["items"][:3]]}


def _describe(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
