"""One local server of the stack: how it is started, health-checked and stopped.

Each server runs on 127.0.0.1 with its data, log and PID file under `var/stack/<name>/`. A server is
"ours" only while the process named in its PID file is alive and is the program we started, so `down`
never signals a process that merely reused the PID. A server that forks workers (Airflow's components)
is stopped with its whole process tree, so `down` leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from finegrain.errors import StackError
from finegrain.settings import Settings

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    version: str
    healthy: bool
    detail: str = ""


class LocalService(ABC):
    """A real server the project starts itself for tests, the demo and development."""

    name: ClassVar[str]
    setting_name: ClassVar[str]  # the FINEGRAIN_* variable that holds this server's address
    start_timeout_s: ClassVar[float] = 30.0
    stop_timeout_s: ClassVar[float] = 20.0
    # A word that must appear in /proc/<pid>/cmdline for the PID file to be trusted.
    cmdline_marker: ClassVar[str]
    # False: a process with no port of its own, whose health is read through another server's.
    listens: ClassVar[bool] = True
    # Whether a server of the right kind already answering on the port (another checkout's, say) is
    # reused. Not when our other processes must share its state (Airflow's home and secrets).
    adopt_foreign: ClassVar[bool] = True
    # Stop the process with its session and every descendant (a server that forks workers and tasks).
    stop_process_tree: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = self.service_dir()
        self.pidfile = self.dir / f"{self.name}.pid"
        self.logfile = self.dir / f"{self.name}.log"

    @property
    @abstractmethod
    def address(self) -> tuple[str, int]: ...

    def service_dir(self) -> Path:
        """The folder of this server's data, log and PID file."""
        return self.settings.stack_dir / self.name

    @abstractmethod
    def check_installed(self) -> None:
        """Raise StackError naming what is missing and how to install it."""

    @abstractmethod
    def launch(self) -> None:
        """Start the server in the background; it must write (or we write) `self.pidfile`."""

    @abstractmethod
    def probe(self) -> str:
        """Talk to the server over its own protocol; return its version or raise on any failure."""

    # ----------------------------------------------------------------------------------------------
    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def running_pid(self) -> int | None:
        """The PID of our server if it is alive, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_process(pid, self.cmdline_marker) else None

    def status(self) -> ServiceStatus:
        pid = self.running_pid()
        try:
            version = self.probe()
        except Exception as exc:
            reason = "not running" if pid is None else f"not answering: {_one_line(exc)}"
            return ServiceStatus(self.name, self.address_text, pid, "-", False, reason)
        detail = "" if pid is not None else "answering, but not started by this stack"
        return ServiceStatus(self.name, self.address_text, pid, version, True, detail)

    def up(self) -> ServiceStatus:
        """Start the server unless it runs, and wait until it answers."""
        return self.start() or self.wait_healthy()

    def start(self) -> ServiceStatus | None:
        """Launch the server unless it runs, without waiting for it; the status of a server of the
        right kind that already answers on the port but is not ours (`adopt_foreign`), else None."""
        host, port = self.address
        if host not in LOCAL_HOSTS:
            raise StackError(
                f"{self.name}: {self.setting_name} points at {host}, not 127.0.0.1; "
                "the local stack only runs servers on this machine"
            )
        if self.running_pid() is not None:
            return None
        if self.listens and _port_open(host, port):
            try:
                version = self.probe() if self.adopt_foreign else None
            except Exception:
                version = None
            if version is not None:  # the right kind of server already answers there
                return ServiceStatus(
                    self.name,
                    self.address_text,
                    None,
                    version,
                    True,
                    "answering, but not started by this stack",
                )
            self.check_port_free()
        self.check_installed()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.pidfile.unlink(missing_ok=True)
            self.launch()
        except OSError as exc:
            raise StackError(f"{self.name}: cannot start: {exc}") from None
        return None

    def down(self) -> bool:
        """Stop our server and wait until its process has exited; False if it was not running."""
        pid = self.running_pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        if self.stop_process_tree:
            stop_process_tree(pid, self.stop_timeout_s, self.name)
            self.pidfile.unlink(missing_ok=True)
            return True
        os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, self.stop_timeout_s):
            os.kill(pid, signal.SIGKILL)
            if not _wait_exit(pid, 5.0):
                raise StackError(f"{self.name}: process {pid} did not exit after SIGKILL")
        self.pidfile.unlink(missing_ok=True)
        return True

    def check_port_free(self) -> None:
        """Raise StackError naming the setting if another process listens on this server's port."""
        host, port = self.address
        if _port_open(host, port):
            raise StackError(
                f"{self.name}: port {port} on {host} is already taken by another process; "
                f"stop it or set {self.setting_name} to a free port"
            )

    # ----------------------------------------------------------------------------------------------
    def wait_healthy(self) -> ServiceStatus:
        """Wait until the server answers; StackError if its process exits or time runs out first."""
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            try:
                version = self.probe()
            except Exception as exc:
                last_error = _one_line(exc)
            else:
                return ServiceStatus(self.name, self.address_text, self.running_pid(), version, True)
            if not self.pidfile.exists() or self.running_pid() is None:
                # The pidfile may lag a daemonising server by a moment; give it that moment.
                time.sleep(0.3)
                if self.running_pid() is None:
                    raise StackError(f"{self.name}: the server exited during start-up; {self._log_tail()}")
            time.sleep(0.1)
        raise StackError(
            f"{self.name}: not healthy {self.start_timeout_s:.0f} s after start ({last_error}); "
            f"see {self.logfile}"
        )

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> None:
        """Start a non-daemonising server in its own session, detached from our terminal, with our
        environment plus `env` and without the variables named in `drop`."""
        environment = {key: value for key, value in os.environ.items() if key not in drop}
        with self.logfile.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**environment, **(env or {})},
                start_new_session=True,
            )
        self.pidfile.write_text(f"{process.pid}\n")

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.logfile.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log written"
        return f"last log line: {lines[-1].strip()[:300]!r} (log: {self.logfile})" if lines else "empty log"


def _is_our_process(pid: int, marker: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    # A zombie (state Z) has exited; it lingers only until its parent reaps it.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"} and marker in cmdline


def stop_process_tree(leader: int, timeout_s: float, name: str) -> None:
    """SIGTERM `leader` (started in a session of its own), every process of its session and every
    descendant (a task's shell leaves the session with setsid), wait until all have exited, then
    SIGKILL what is left. A process is known by its PID and start time, so a PID reused meanwhile is
    never signalled."""
    processes: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        found = _process_tree(leader)  # again each time: workers forked while shutting down
        _signal({pid: start for pid, start in found.items() if pid not in processes}, signal.SIGTERM)
        processes.update(found)
        if not _alive(processes):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    processes.update(_process_tree(leader))
    _signal({pid: processes[pid] for pid in _alive(processes)}, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while left := _alive(processes):
        if time.monotonic() > kill_deadline:
            raise StackError(f"{name}: processes {sorted(left)} did not exit after SIGKILL")
        time.sleep(0.05)


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """State, parent PID, session id and start time (clock ticks after boot) of a process, if it exists."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "pid (comm)": state ppid pgrp session ... with starttime the 20th of these fields.
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _process_tree(leader: int) -> dict[int, int]:
    """PID -> start time of `leader`, the processes of its session and all their descendants."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[0] not in "ZX":
            table[int(entry.name)] = stat
    members = {pid for pid, (_, _, session, _) in table.items() if pid == leader or session == leader}
    while True:
        children = {pid for pid, (_, ppid, _, _) in table.items() if ppid in members} - members
        if not children:
            return {pid: table[pid][3] for pid in members}
        members |= children


def _alive(processes: dict[int, int]) -> set[int]:
    """Those of `processes` still running (a zombie has exited: it only waits to be reaped)."""
    alive = set()
    for pid, start in processes.items():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
        stat = _stat(pid)
        if stat is not None and stat[3] == start and stat[0] not in "ZX":
            alive.add(pid)
    return alive


def _signal(processes: dict[int, int], signum: signal.Signals) -> None:
    for pid in _alive(processes):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
            if waited == pid:
                return True
        except ChildProcessError:
            pass
        if not Path(f"/proc/{pid}").exists() or not _is_our_process(pid, ""):
            return True
        time.sleep(0.05)
    return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except (OSError, OverflowError):  # OverflowError: a port number outside 0-65535
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
