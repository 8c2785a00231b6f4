"""A Spark standalone cluster on 127.0.0.1: one master and one worker from the installed pyspark.

Optional in the stack (`finegrain stack up --spark`): the jobs run `local[*]` unless they are pointed at
a master (`FINEGRAIN_SPARK_MASTER`, spark-submit's `--master`), and this is the smallest real cluster to
point them at: the same `spark-class` daemons a production cluster runs, each a plain `java` process
whose PID we hold (spark-class execs java), bound to loopback with ports of their own.

The worker's environment is cleaned of `PYTHONPATH` and `PYSPARK_*`: its executors inherit it, and an
application must run its own Python and its own code (`finegrain.spark` ships the project with every
session on a cluster), not whichever checkout happened to start the worker.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from finegrain.errors import StackError
from finegrain.stack.base import LocalService

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# The daemons only schedule (executors are separate JVMs sized by the application): a small heap.
DAEMON_MEMORY = "512m"
# Every port is chosen, none is probed for: a taken port fails the start instead of moving elsewhere.
# The master's REST submission server (port 6066) is not used (jobs are submitted in client mode).
MASTER_OPTS = "-Dspark.master.rest.enabled=false -Dspark.port.maxRetries=0"
WORKER_OPTS = "-Dspark.port.maxRetries=0 -Dspark.worker.cleanup.enabled=true"
# What a worker must not pass on to the executors it starts (see the module docstring).
WORKER_ENV_DROPPED = ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYSPARK_SUBMIT_ARGS")
_VERSION = re.compile(r'class="version[^"]*">\s*([^<\s]+)\s*<')


def spark_home() -> Path:
    """The installed pyspark's folder, which holds `bin/spark-class` and the jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class _SparkDaemon(LocalService):
    start_timeout_s: ClassVar[float] = 60.0  # a JVM start on two busy cores
    deploy_class: ClassVar[str]
    daemon_opts_variable: ClassVar[str]
    daemon_opts: ClassVar[str]

    @property
    @abstractmethod
    def ui_port(self) -> int: ...

    @property
    def ui_url(self) -> str:
        return f"http://{self.address[0]}:{self.ui_port}"

    def check_installed(self) -> None:
        if shutil.which("java") is None:
            raise StackError(f"{self.name}: `java` not found; install a JRE (`apt-get install "
                             "default-jre-headless`)")
        if not (spark_home() / "bin" / "spark-class").exists():
            raise StackError(f"{self.name}: {spark_home() / 'bin' / 'spark-class'} not found; the installed "
                             "pyspark is incomplete (run bin/setup)")

    def _launch_daemon(self, arguments: list[str], env: dict[str, str] | None = None) -> None:
        host = self.address[0]
        self._spawn(
            [str(spark_home() / "bin" / "spark-class"), self.deploy_class, *arguments],
            env={
                "SPARK_HOME": str(spark_home()),
                # Every socket the daemon (and, for the worker, each executor) opens binds to this address.
                "SPARK_LOCAL_IP": host,
                "SPARK_PUBLIC_DNS": host,
                "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
                self.daemon_opts_variable: self.daemon_opts,
                **(env or {}),
            },
            drop=WORKER_ENV_DROPPED,
        )

    def _json(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=2.0) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def _version(self) -> str:
        with urllib.request.urlopen(f"{self.ui_url}/", timeout=2.0) as response:
            page = response.read().decode(errors="replace")
        found = _VERSION.search(page)
        if found is None:
            raise StackError(f"{self.name}: its web UI at {self.ui_url} shows no Spark version")
        return found.group(1)


class SparkMasterService(_SparkDaemon):
    name = "spark-master"
    setting_name = "FINEGRAIN_SPARK_CLUSTER_MASTER"
    cmdline_marker = MASTER_CLASS
    deploy_class = MASTER_CLASS
    daemon_opts_variable = "SPARK_MASTER_OPTS"
    daemon_opts = MASTER_OPTS

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.spark_cluster_address()

    @property
    def ui_port(self) -> int:
        return self.settings.spark_cluster_master_ui_port

    def launch(self) -> None:
        host, port = self.address
        self._launch_daemon(["--host", host, "--port", str(port), "--webui-port", str(self.ui_port)])

    def probe(self) -> str:
        state = self._json()
        if state.get("status") != "ALIVE":
            raise StackError(f"spark-master: status {state.get('status')!r}, not ALIVE")
        return self._version()


class SparkWorkerService(_SparkDaemon):
    """Healthy once the master lists it as an ALIVE worker: until then no application gets executors."""

    name = "spark-worker"
    setting_name = "FINEGRAIN_SPARK_CLUSTER_WORKER_UI_PORT"
    cmdline_marker = WORKER_CLASS
    deploy_class = WORKER_CLASS
    daemon_opts_variable = "SPARK_WORKER_OPTS"
    daemon_opts = WORKER_OPTS

    @property
    def address(self) -> tuple[str, int]:
        # The worker's RPC port is picked at start; its web UI is the port we choose and check.
        return self.settings.spark_cluster_address()[0], self.ui_port

    @property
    def ui_port(self) -> int:
        return self.settings.spark_cluster_worker_ui_port

    def launch(self) -> None:
        host = self.address[0]
        work = self.dir / "work"
        scratch = self.dir / "tmp"
        # One folder per application (its executors' logs and fetched files): those of the worker's
        # previous run go, or every test run would leave its applications behind.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        scratch.mkdir(parents=True, exist_ok=True)
        self._launch_daemon([
            "--host", host, "--webui-port", str(self.ui_port),
            "--cores", str(self.settings.spark_cluster_worker_cores),
            "--memory", self.settings.spark_cluster_worker_memory,
            "--work-dir", str(work),
            self.settings.spark_cluster_url,
        ], env={"SPARK_LOCAL_DIRS": str(scratch)})  # executors' shuffle and spill files, not in /tmp

    def probe(self) -> str:
        me = self._json()
        master = SparkMasterService(self.settings)
        alive = [w["id"] for w in master._json().get("workers", []) if w.get("state") == "ALIVE"]
        if me.get("id") not in alive:
            raise StackError(f"spark-worker: not registered with the master at "
                             f"{self.settings.spark_cluster_url}")
        return self._version()
