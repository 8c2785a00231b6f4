"""Hot swap: each worker keeps its `DataSnapshot` and `ModelSet` current by watching ZooKeeper.

- Dataset znodes (`/finegrain/datasets/{dataset}`) change when a batch job switches a pointer: the
  worker reloads the snapshot from the Redis pointers (what requests read) in the background.
- Model znodes (`/finegrain/models/{name}`) hold the published manifest: the worker fetches the
  artifact from the registry, which checks its sha256, builds and warms the model up, then swaps the
  reference. A version that fails any step is reported (`errors`, metrics, the worker's znode) and
  the old one keeps serving.
- Each worker registers an ephemeral znode (`/finegrain/workers/{host}-{pid}`) saying which versions
  it serves, so `finegrain models status` shows a rollout's progress and a dead worker disappears.

Loads run one at a time on a loader thread (never in kazoo's event thread, which must stay free to
deliver watches), and a swap is one reference assignment, so a request sees either the old or the new
version, never half of each. Without ZooKeeper the worker still starts, from the Redis pointers and
the registry's published flags, and keeps retrying the connection.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.handlers.threading import KazooTimeoutError

from finegrain.codecs import decode, encode
from finegrain.schemas import ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import ZkPaths
from finegrain.storage.lists import RankedList
from finegrain.storage.workers import worker_states as worker_states
from models.registry import ModelRegistry, RegistryError
from serving import metrics
from serving.config import ServingConfig
from serving.ranking.loading import ModelLoadError, ModelServerUnavailable, load_model
from serving.scenes import RANKER_MODELS
from serving.state import (
    SERVED_DATASETS,
    DataSnapshot,
    LoadedModel,
    ModelSet,
    SnapshotError,
    dataset_versions,
    load_fallback,
    load_snapshot,
    save_fallback,
)

log = logging.getLogger(__name__)

ZK_RETRY_SECONDS = 5.0
LOAD_RETRY_SECONDS = 10.0


def required_models(config: ServingConfig) -> list[str]:
    """The registry names this configuration serves: the scenes' rankers and the enabled channels' models
    (the embedding channel's)."""
    names = {RANKER_MODELS[scene.ranker] for scene in config.scenes.values() if scene.ranker != "none"}
    names |= {name for c in config.channels if c.enabled for name in c.required_models()}
    return sorted(names)


class Runtime:
    """One worker's served state and the machinery that keeps it current."""

    def __init__(self, settings: Settings, config: ServingConfig, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.config = config
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.paths = ZkPaths(settings.zookeeper_root)
        self.model_names = required_models(config)
        self.fallback_path = settings.var_dir / "serving" / "fallback_popular.json"
        self.data: DataSnapshot | None = None
        self.models = ModelSet()
        self.fallback: RankedList = load_fallback(self.fallback_path)
        self.errors: dict[str, str] = {}
        self._wanted: dict[str, str] = {}  # per model: the version last published (the one to serve)
        self.started_at = time.time()
        self._redis: redis.Redis | None = None
        self._registry: ModelRegistry | None = None
        self._zk: KazooClient | None = None
        self._tasks: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        self._loader = threading.Thread(target=self._load_loop, name="finegrain-loader", daemon=True)
        self._listeners: list[Callable[[], None]] = []

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, *, wait_s: float = 60.0) -> None:
        """Load what is current, then watch for changes; returns once the first loads are done (or
        `wait_s` passed), so a worker is ready when gunicorn hands it requests."""
        self._loader.start()
        self._tasks.put(("data", None))
        if not self._connect_zookeeper():
            for name in self.model_names:
                self._tasks.put(("registry", name))
            threading.Thread(target=self._retry_zookeeper, name="finegrain-zk-retry", daemon=True).start()
        done = threading.Event()
        self._tasks.put(("call", done.set))
        done.wait(wait_s)

    def stop(self) -> None:
        self._stopping.set()
        self._tasks.put(("stop", None))
        if self._zk is not None:
            try:
                self._zk.stop()
                self._zk.close()
            except KazooException:
                pass

    def on_swap(self, listener: Callable[[], None]) -> None:
        """Called (on the loader thread) after every successful swap."""
        self._listeners.append(listener)

    def reload_data(self) -> None:
        self._tasks.put(("data", None))

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until every queued load has run (tests, warm-up)."""
        done = threading.Event()
        self._tasks.put(("call", done.set))
        return done.wait(timeout_s)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings)
        return self._redis

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = ModelRegistry(self.settings)
        return self._registry

    @property
    def zookeeper_connected(self) -> bool:
        return self._zk is not None and self._zk.state == KazooState.CONNECTED

    def status(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "pid": os.getpid(), "master_pid": os.getppid(),
                "started_at": self.started_at,
                "datasets": dict(self.data.versions) if self.data else {}, "models": self.models.versions(),
                "errors": dict(self.errors), "zookeeper": self.zookeeper_connected}

    # -- ZooKeeper --------------------------------------------------------------------------------

    def _connect_zookeeper(self) -> bool:
        client = KazooClient(hosts=self.settings.zookeeper_hosts, timeout=5.0)
        try:
            client.start(timeout=3.0)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            client.close()
            self.errors["zookeeper"] = f"unreachable ({type(exc).__name__}); serving without hot swap"
            metrics.ZOOKEEPER_CONNECTED.set(0)
            return False
        self._zk = client
        self._zookeeper_state(KazooState.CONNECTED)
        client.add_listener(self._on_state)
        for dataset in SERVED_DATASETS:
            client.DataWatch(self.paths.dataset(dataset), self._on_dataset)
        for name in self.model_names:
            client.DataWatch(self.paths.model(name), self._model_watcher(name))
        self._tasks.put(("register", None))
        return True

    def _retry_zookeeper(self) -> None:
        while not self._stopping.wait(ZK_RETRY_SECONDS):
            if self._connect_zookeeper():
                return

    def _on_state(self, state: str) -> None:
        # Called on kazoo's thread. An expired session loses the ephemeral worker node; kazoo keeps
        # reconnecting and re-arms the watches itself, so a version published meanwhile is loaded then.
        self._zookeeper_state(state)
        if state == KazooState.CONNECTED:
            self._tasks.put(("register", None))

    def _zookeeper_state(self, state: str) -> None:
        """Without ZooKeeper the loaded versions keep serving, so answers are not degraded; but the
        worker cannot hear of a new version (model, dataset, rule, key revocation) until it is back:
        /readyz (`zookeeper`, `errors`) and `finegrain_zookeeper_connected` say so."""
        if state == KazooState.CONNECTED:
            self.errors.pop("zookeeper", None)
            metrics.ZOOKEEPER_CONNECTED.set(1)
            return
        self.errors["zookeeper"] = (f"connection {str(state).lower()}: serving the loaded versions; new "
                                    "versions, rules and key revocations arrive once it is back")
        metrics.ZOOKEEPER_CONNECTED.set(0)

    def _on_dataset(self, data: bytes | None, stat: Any) -> None:
        if data:
            self._tasks.put(("data", None))

    def _model_watcher(self, name: str) -> Callable[[bytes | None, Any], None]:
        def watch(data: bytes | None, stat: Any) -> None:
            if data:
                self._tasks.put(("model", (name, data)))
        return watch

    def _register(self) -> None:
        if self._zk is None:
            return
        path = self.paths.worker(self.worker_id)
        payload = json.dumps(self.status(), sort_keys=True).encode()
        try:
            try:
                self._zk.create(path, payload, ephemeral=True, makepath=True)
            except NodeExistsError:
                self._zk.set(path, payload)
        except (KazooException, KazooTimeoutError) as exc:
            log.warning("could not register worker %s: %s", self.worker_id, exc)

    # -- loading ----------------------------------------------------------------------------------

    def _load_loop(self) -> None:
        while True:
            kind, payload = self._tasks.get()
            if kind == "stop":
                return
            try:
                if kind == "data":
                    self._load_data()
                elif kind == "model":
                    name, data = payload
                    manifest = decode(ModelManifest, data)
                    self._wanted[name] = manifest.version
                    self._load_model(name, manifest)
                elif kind == "retry":
                    name, data = payload
                    manifest = decode(ModelManifest, data)
                    if self._wanted.get(name) == manifest.version:  # not overtaken by a publication
                        self._load_model(name, manifest)
                elif kind == "registry":
                    self._load_published(payload)
                elif kind == "register":
                    self._register()
                elif kind == "call":
                    payload()
            except Exception:  # the loader must survive anything; the old state keeps serving
                log.exception("loader task %s failed", kind)

    def _swapped(self) -> None:
        self._register()
        for listener in self._listeners:
            listener()

    def _load_data(self) -> None:
        try:
            versions = dataset_versions(self.redis)
            if self.data is not None and dict(self.data.versions) == versions:
                return
            snapshot = load_snapshot(self.redis, versions)
        except (SnapshotError, redis.RedisError, ValueError) as exc:
            self.errors["datasets"] = f"{type(exc).__name__}: {exc}"
            metrics.SWAPS.labels("datasets", "failed").inc()
            log.warning("dataset snapshot not loaded: %s", exc)
            return
        old = self.data
        self.data = snapshot
        self.errors.pop("datasets", None)
        metrics.SWAPS.labels("datasets", "ok").inc()
        for dataset, version in snapshot.versions.items():
            if old is not None and old.versions.get(dataset) != version:
                metrics.MODEL_INFO.labels("dataset", dataset, old.versions[dataset]).set(0)
            metrics.MODEL_INFO.labels("dataset", dataset, version).set(1)
        try:
            save_fallback(snapshot, self.fallback_path)
            self.fallback = load_fallback(self.fallback_path)
        except OSError as exc:
            log.warning("could not save the fallback list: %s", exc)
        log.info("serving datasets %s (loaded in %.2f s)", snapshot.versions, snapshot.load_seconds)
        self._swapped()

    def _load_model(self, name: str, manifest: ModelManifest) -> None:
        current = self.models.models.get(name)
        if current is not None and current.version == manifest.version:
            return
        started = time.perf_counter()
        try:
            data = self.registry.fetch_artifact(manifest)  # checks the sha256
            model = load_model(manifest, data, tf_serving_url=self.config.tf_serving_url,
                               tf_serving_wait_s=self.config.tf_serving_wait_s,
                               work_dir=_work_dir(self.settings))
        except Exception as exc:  # the old version keeps serving whatever went wrong
            if isinstance(exc, (RegistryError, ModelLoadError)):  # a bad version: refused for good
                self.errors[name] = f"version {manifest.version} refused: {exc}"
            elif isinstance(exc, ModelServerUnavailable):  # TF Serving down: try again in a while
                self.errors[name] = (f"version {manifest.version} not loaded: {exc}; retrying every "
                                     f"{LOAD_RETRY_SECONDS:g} s")
                self._retry_later(name, manifest)
            else:  # the registry (MongoDB) unreachable: try again in a while
                self.errors[name] = (f"version {manifest.version} not loaded: registry unreachable "
                                     f"({type(exc).__name__}); retrying every {LOAD_RETRY_SECONDS:g} s")
                self._retry_later(name, manifest)
            metrics.SWAPS.labels(name, "failed").inc()
            log.error("model %s %s not swapped in: %s", name, manifest.version, exc)
            self._register()
            return
        loaded = LoadedModel(manifest, model, time.perf_counter() - started)
        self.models = self.models.with_model(name, loaded)
        self.errors.pop(name, None)
        metrics.SWAPS.labels(name, "ok").inc()
        if current is not None:
            metrics.MODEL_INFO.labels("model", name, current.version).set(0)
        metrics.MODEL_INFO.labels("model", name, manifest.version).set(1)
        log.info("serving model %s %s", name, manifest.version)
        self._swapped()

    def _retry_later(self, name: str, manifest: ModelManifest) -> None:
        if self._stopping.is_set():
            return
        retry = threading.Timer(LOAD_RETRY_SECONDS, self._tasks.put, [("retry", (name, encode(manifest)))])
        retry.daemon = True
        retry.start()

    def _load_published(self, name: str) -> None:
        """Without ZooKeeper: the version the registry says is published."""
        try:
            published = [entry for entry in self.registry.list(name) if entry.published]
        except Exception as exc:  # Mongo down too: nothing to load, the request path degrades
            self.errors[name] = f"registry unreachable: {type(exc).__name__}"
            return
        if published:
            self._wanted[name] = published[-1].manifest.version
            self._load_model(name, published[-1].manifest)


def _work_dir(settings: Settings) -> Path:
    folder = settings.var_dir / "serving" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
