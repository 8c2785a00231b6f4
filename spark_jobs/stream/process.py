"""Running the streaming sidecar as a background process: used by `finegrain stream`, the demo and the
integration tests, so all of them start, stop and inspect it the same way.

The process is `python -m spark_jobs.stream.sidecar` with the caller's settings in its environment,
its own session (a signal to the caller's group does not reach it), its log in
`<var dir>/stream/sidecar.log` and its PID in `<var dir>/stream/sidecar.pid`. Starting it again
while it runs reuses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from finegrain.errors import FinegrainError
from finegrain.events.archive import EventArchive
from finegrain.settings import PROJECT_ROOT, Settings
from finegrain.storage.contract import KafkaTopics
from spark_jobs.stream.kafka_source import topic_end_offsets
from spark_jobs.stream.sidecar import SidecarConfig, read_status

MODULE = "spark_jobs.stream.sidecar"


class SidecarProcess:
    def __init__(self, settings: Settings, config: SidecarConfig | None = None) -> None:
        self.settings = settings
        self.config = config or SidecarConfig()
        self.pid_path = settings.stream_dir / "sidecar.pid"
        self.log_path = settings.stream_dir / "sidecar.log"

    def pid(self) -> int | None:
        """The running sidecar's PID, or None (a stale PID file of a dead process is ignored)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if MODULE in command else None

    def start(self, timeout_s: float = 180.0) -> int:
        """Start it (or find it running) and return once its query runs; returns its PID."""
        running = self.pid()
        if running is not None:
            return running
        EventArchive.at(self.settings.event_archive_location)  # a malformed location fails here, named
        self.settings.stream_dir.mkdir(parents=True, exist_ok=True)
        started_at = time.time()
        with self.log_path.open("ab") as log:
            command = [sys.executable, "-m", MODULE, "--trigger-ms", str(self.config.trigger_ms),
                       "--max-records-per-batch", str(self.config.max_records_per_batch)]
            process = subprocess.Popen(command, cwd=PROJECT_ROOT,
                                       env=self.settings.environment(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.pid_path.write_text(str(process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise FinegrainError(f"the sidecar exited with {process.returncode}; its log: "
                                     f"{self.log_path}\n{self.log_tail()}")
            status = read_status(self.settings)
            if (status is not None and status.get("pid") == process.pid and status.get("state") == "running"
                    and os.path.getmtime(self.settings.stream_dir / "status.json") >= started_at):
                return process.pid
            time.sleep(0.3)
        self._signal(process.pid, signal.SIGKILL)
        raise FinegrainError(f"the sidecar's query was not running after {timeout_s:.0f} s; its log: "
                             f"{self.log_path}\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop it between two batches (SIGTERM), or kill it after `timeout_s`; False if none ran."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout_s):
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)
        self.pid_path.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, mid-batch or not: what a crash looks like (the fault tests)."""
        pid = self.pid()
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)
            self.pid_path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """The status file, whether the process runs, and the lag behind the topic's end per partition."""
        status = read_status(self.settings) or {"state": "never started"}
        pid = self.pid()
        status["running"] = pid is not None
        if pid is None and status.get("state") == "running":
            status["state"] = "dead (no process)"
        try:
            ends = topic_end_offsets(self.settings, KafkaTopics(self.settings.kafka_topic_prefix).events)
        except Exception as exc:  # the broker may be down: the status still says what it knows
            status["lag"] = None
            status["lag_error"] = f"{type(exc).__name__}: {exc}"
            return status
        done = {int(p): int(o) for p, o in (status.get("offsets") or {}).items()}
        status["end_offsets"] = {str(p): end for p, end in sorted(ends.items())}
        status["lag"] = {str(p): max(end - done.get(p, 0), 0) for p, end in sorted(ends.items())}
        return status

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    @staticmethod
    def _wait_gone(pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
                if waited == pid:
                    return True
            except ChildProcessError:  # not our child: ask the kernel whether it still exists
                if not Path(f"/proc/{pid}").exists():
                    return True
            time.sleep(0.1)
        return False

