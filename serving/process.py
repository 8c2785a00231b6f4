"""Running the API under gunicorn as a child process: used by `finegrain api`, the demo, the load
benchmark and the integration tests, so all of them start it the same way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from finegrain.errors import FinegrainError
from finegrain.settings import PROJECT_ROOT, Settings

GUNICORN_CONF = PROJECT_ROOT / "serving" / "gunicorn_conf.py"


class ApiServer:
    """gunicorn serving `serving.wsgi:app` with `settings`; `start` returns once every worker is ready."""

    def __init__(self, settings: Settings, *, log_path: Path | None = None, metrics_dir: Path | None = None
                 ) -> None:
        self.settings = settings
        self.log_path = log_path or settings.var_dir / "serving" / "gunicorn.log"
        # gunicorn empties this folder at start: two servers must not share one.
        self.metrics_dir = metrics_dir or settings.var_dir / "serving" / "prometheus"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_bind}"

    def start(self, timeout_s: float = 180.0, *, ready: bool = True) -> None:
        """`ready=False` returns once every worker answers /healthz, for a deployment that cannot be
        ready (a test of what it answers without its dependencies)."""
        self._check_port_free()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.settings.environment()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        gunicorn = Path(sys.executable).parent / "gunicorn"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(gunicorn), "-c", str(GUNICORN_CONF), "serving.wsgi:app"], cwd=PROJECT_ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FinegrainError(f"gunicorn exited with {self.process.returncode}; its log: "
                                     f"{self.log_path}\n{self.log_tail()}")
            if self.ready_workers(path="/readyz" if ready else "/healthz") >= self.settings.api_workers:
                return
            time.sleep(0.3)
        self.stop()
        raise FinegrainError(f"the API was not ready after {timeout_s:.0f} s; its log: {self.log_path}\n"
                             + self.log_tail())

    def _check_port_free(self) -> None:
        binds = [("FINEGRAIN_API_BIND", self.settings.api_address())]
        metrics = self.settings.metrics_address()
        if metrics is not None:
            binds.append(("FINEGRAIN_API_METRICS_BIND", metrics))
        for variable, (host, port) in binds:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host or "127.0.0.1", port))
                except OSError:
                    raise FinegrainError(f"{host}:{port} is taken by another process: stop it "
                                         f"(`finegrain api stop`) or set {variable}") from None

    def ready_workers(self, probes: int = 12, path: str = "/readyz") -> int:
        """How many distinct worker processes answered `path` with 200 (a request lands on any)."""
        ready = set()
        try:
            # No keep-alive: one connection stays on one worker, and every worker must be asked.
            with httpx.Client(base_url=self.url, timeout=2.0,
                              limits=httpx.Limits(max_keepalive_connections=0)) as client:
                for _ in range(probes):
                    response = client.get(path)
                    body = response.json()
                    # Only this gunicorn's workers count, not an older server still draining the port.
                    ours = self.process is not None and body.get("master_pid") == self.process.pid
                    if response.status_code == 200 and ours:
                        ready.add(body["pid"])
        except httpx.HTTPError:
            return 0
        return len(ready)

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
