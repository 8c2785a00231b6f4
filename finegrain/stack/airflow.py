"""The local Airflow: its api-server (the UI, the REST API and the execution API tasks report to), its
scheduler (LocalExecutor) and its dag-processor, each a process of its own on this machine, with SQLite
metadata in an Airflow home under the var dir, the project's `dags/`, the `finegrain_spark` connection
and the FINEGRAIN_* settings wired in.

Not `airflow standalone`: it binds its log server to 0.0.0.0 and orphans its children on SIGTERM. Each
component is started here in a session of its own (`LocalService._spawn`) and stopped with its whole
process tree (`LocalService.stop_process_tree`): the scheduler's executor workers, a running task and
the shell or spark-submit it started. The scheduler runs with `--skip-serve-logs`: tasks run on this
machine, so the api-server reads their logs from the home's `logs/` folder and no log server listens.

Layout of the home (`Settings.airflow_dir`):
- `airflow.cfg` (written by Airflow on its first command, mode 0600: it holds the generated fernet key,
  JWT secret and API secret key every component shares), `airflow.db` (SQLite metadata);
- `passwords.json`: the UI user's generated password (mode 0600), read by Airflow's simple auth
  manager and printed by `finegrain airflow up` / `status`;
- `run/<component>.pid`, `run/<component>.log`: our PID files and each component's output;
- `logs/`: Airflow's task and dag-processor logs.

Login: Airflow 3's simple auth manager with one user (`Settings.airflow_user`, role admin) and a
password generated here with `secrets`, not Airflow's "all admins" mode that opens the UI to anyone
who reaches the port. Airflow's own user management (the FAB or Keycloak auth managers) is for a
production deployment, which configures its Airflow through AIRFLOW__* variables, not through this.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from abc import abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

import httpx

from finegrain.console import Step, quiet
from finegrain.errors import StackError
from finegrain.settings import PROJECT_ROOT, Settings
from finegrain.stack.base import LocalService, ServiceStatus

DAGS_FOLDER = PROJECT_ROOT / "dags"
# The connection id dags/finegrain_deployment.py submits Spark jobs with.
SPARK_CONNECTION = "finegrain_spark"
HOST = "127.0.0.1"
HEALTH_PATH = "/api/v2/monitor/health"
PASSWORDS_FILE = "passwords.json"
# Each running task is a heavy process (a Spark driver, a training run) on a machine of a few cores;
# Airflow's default of 32 would also keep 32 idle executor workers in memory. An AIRFLOW__CORE__PARALLELISM
# in the environment wins.
DEFAULT_PARALLELISM = "4"
# Airflow re-parses every unchanged DAG file each 30 s by default, a fresh interpreter importing Airflow
# each time: about a fifth of a core here, taken from the nightly run's Spark and training tasks. A
# modified file is parsed again at once whatever this says, so editing a DAG is not slowed down.
DEFAULT_MIN_FILE_PROCESS_INTERVAL = "300"


def ui_url(settings: Settings) -> str:
    """The UI's address, also the base of the REST and execution APIs."""
    return f"http://{HOST}:{settings.airflow_port}"


def airflow_environment(settings: Settings) -> dict[str, str]:
    """The environment every Airflow process (and so every task) runs with: this process's, with the
    FINEGRAIN_* variables of `settings` (`Settings.environment`), and Airflow pointed at its home, the
    project's DAGs, the Spark master of `settings` and the api-server on 127.0.0.1, and the DAGs'
    deployment settings (`dags/finegrain_deployment.py`). AIRFLOW__* variables already in the
    environment pass through, except those set here. Tests starting Airflow their own way reuse it."""
    home = settings.airflow_dir
    url = ui_url(settings)
    env = settings.environment()
    env.setdefault("AIRFLOW__CORE__PARALLELISM", DEFAULT_PARALLELISM)
    env.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", DEFAULT_MIN_FILE_PROCESS_INTERVAL)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # The api-server's own view of where it listens: links it builds, and the execution API the
        # tasks report to (Airflow's default would be localhost:8080).
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "false",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS_FILE),
        f"AIRFLOW_CONN_{SPARK_CONNECTION.upper()}": json.dumps({"conn_type": "spark",
                                                                "host": settings.spark_master}),
        # dags/finegrain_deployment.py's checkout: the one whose dags/ Airflow reads.
        "FINEGRAIN_HOME": str(PROJECT_ROOT),
    })
    # Its other deployment settings are no Settings fields, so `Settings.environment` dropped them:
    # what the shell sets wins, else this Python and the data `finegrain data load` writes.
    env["FINEGRAIN_PYTHON"] = os.environ.get("FINEGRAIN_PYTHON", sys.executable)
    env["FINEGRAIN_DATA_DIR"] = os.environ.get("FINEGRAIN_DATA_DIR", str(settings.retail_dir))
    if "FINEGRAIN_SPARK_SUBMIT" in os.environ:
        env["FINEGRAIN_SPARK_SUBMIT"] = os.environ["FINEGRAIN_SPARK_SUBMIT"]
    return env


@dataclass(frozen=True)
class Login:
    user: str
    password: str
    path: Path


def ensure_login(settings: Settings) -> Login:
    """The UI user's password, generated on first use and kept in the home (mode 0600), where Airflow's
    simple auth manager reads it; other users in the file are kept."""
    path = settings.airflow_dir / PASSWORDS_FILE
    passwords = _read_passwords(path)
    password = passwords.get(settings.airflow_user)
    if password is None:
        password = secrets.token_urlsafe(18)
        passwords[settings.airflow_user] = password
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 (not chmod-ed after writing), so the password is never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(passwords) + "\n")
    os.chmod(path, 0o600)  # a file copied in with a looser mode
    return Login(settings.airflow_user, password, path)


def read_login(settings: Settings) -> Login | None:
    """The UI login if `ensure_login` made one, else None."""
    path = settings.airflow_dir / PASSWORDS_FILE
    password = _read_passwords(path).get(settings.airflow_user)
    return None if password is None else Login(settings.airflow_user, password, path)


def _read_passwords(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StackError(f"airflow: cannot read the UI passwords {path}: {exc.strerror}") from None
    try:
        passwords = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        passwords = None
    if not isinstance(passwords, dict) or not all(isinstance(v, str) for v in passwords.values()):
        raise StackError(f"airflow: {path} is not a JSON object of user: password; fix or delete it")
    return passwords


def airflow_version() -> str:
    try:
        return f"airflow {version('apache-airflow-core')}"
    except PackageNotFoundError:
        return "airflow"


class AirflowComponent(LocalService):
    """One Airflow process: `python -m airflow <arguments>` with `airflow_environment`."""

    setting_name = "FINEGRAIN_AIRFLOW_PORT"
    # Cold start on two busy cores: the api-server loads the whole UI and API in about 10 s here.
    start_timeout_s = 120.0
    # The scheduler waits for running tasks to stop; tasks get SIGTERM too, and a Spark driver takes a
    # few seconds to go.
    stop_timeout_s = 45.0
    # Another home's api-server on our port has other secrets: our tasks could not report to it.
    adopt_foreign = False
    stop_process_tree = True

    def service_dir(self) -> Path:
        return self.settings.airflow_dir / "run"

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.settings.airflow_port

    def check_installed(self) -> None:
        if importlib.util.find_spec("airflow") is None:
            raise StackError("airflow: apache-airflow is not installed in this Python; run `bin/setup`")

    @abstractmethod
    def arguments(self) -> list[str]:
        """The `airflow` sub-command and its options."""

    def launch(self) -> None:
        self._spawn([sys.executable, "-m", "airflow", *self.arguments()],
                    env=airflow_environment(self.settings))

    def health(self) -> dict[str, Any]:
        """The api-server's health document: metadata database, scheduler and dag-processor heartbeats."""
        # Generous: with both cores busy (load 10), an answer took over 5 s here.
        response = httpx.get(ui_url(self.settings) + HEALTH_PATH, timeout=10.0)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document


class ApiServer(AirflowComponent):
    name = "api-server"
    cmdline_marker = "airflow api"  # `-m airflow api-server`, retitled `airflow api_server -- ...`

    def arguments(self) -> list[str]:
        return ["api-server", "--host", HOST, "--port", str(self.settings.airflow_port), "--workers", "1"]

    def probe(self) -> str:
        database = self.health()["metadatabase"]["status"]
        if database != "healthy":
            raise StackError(f"metadata database {database}")
        return airflow_version()


class _HeartbeatComponent(AirflowComponent):
    """A component with no port, healthy while the api-server reports a heartbeat it wrote since it
    started (a heartbeat of an earlier run stays in the database for a while)."""

    listens = False
    health_key: ClassVar[str]

    def probe(self) -> str:
        if self.running_pid() is None:
            raise StackError("not running")
        report = self.health()[self.health_key]
        beat = report.get(f"latest_{self.health_key}_heartbeat")
        started = datetime.fromtimestamp(self.pidfile.stat().st_mtime, UTC)
        if report.get("status") != "healthy" or beat is None or datetime.fromisoformat(beat) < started:
            raise StackError(f"no heartbeat since its start (last: {beat or 'never'})")
        return airflow_version()


class Scheduler(_HeartbeatComponent):
    name = "scheduler"
    cmdline_marker = "airflow scheduler"
    health_key = "scheduler"

    def arguments(self) -> list[str]:
        return ["scheduler", "--skip-serve-logs"]  # no log server: see the module's docstring


class DagProcessor(_HeartbeatComponent):
    name = "dag-processor"
    cmdline_marker = "airflow dag-processor"
    health_key = "dag_processor"

    def arguments(self) -> list[str]:
        return ["dag-processor"]


class LocalAirflow:
    """The three components in start order: the api-server first, since the scheduler's tasks report to
    its execution API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_server = ApiServer(settings)
        self.components: list[AirflowComponent] = [self.api_server, Scheduler(settings),
                                                   DagProcessor(settings)]

    @property
    def url(self) -> str:
        return ui_url(self.settings)

    @property
    def home(self) -> Path:
        return self.settings.airflow_dir

    def up(self, step: Step = quiet) -> list[ServiceStatus]:
        """Start what is not running (reusing what is) and wait until each component is healthy."""
        self.api_server.check_installed()
        try:
            # Its metadata, logs and secrets are nobody else's business on a shared machine.
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.api_server.running_pid() is None:
                self.api_server.check_port_free()  # before the migration, not after it
                step(f"migrating Airflow's metadata database ({self.home / 'airflow.db'})")
                self.migrate()
            ensure_login(self.settings)
        except OSError as exc:
            raise StackError(f"airflow: cannot prepare its home {self.home} (FINEGRAIN_AIRFLOW_HOME): "
                             f"{exc.strerror or exc}") from None
        # All launched before any is waited for: their start-up is mostly Python imports, which
        # overlap on two cores (about 25 s one after the other here).
        for component in self.components:
            pid = component.running_pid()
            step(f"starting {component.name}" if pid is None else f"{component.name} is running (PID {pid})")
            component.start()
        step("waiting until each component is healthy")
        return [component.wait_healthy() for component in self.components]

    def down(self) -> dict[str, bool]:
        """Stop each component with its process tree (tasks included); whether each was running."""
        return {component.name: component.down() for component in reversed(self.components)}

    def status(self) -> list[ServiceStatus]:
        return [component.status() for component in self.components]

    def migrate(self) -> None:
        """`airflow db migrate`: creates the metadata database, or brings it to this Airflow's schema."""
        run_dir = self.api_server.dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "migrate.log"
        with log.open("ab") as out:
            try:
                result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=airflow_environment(self.settings), cwd=run_dir, timeout=600)
            except subprocess.TimeoutExpired:
                raise StackError(f"airflow: `airflow db migrate` took over 600 s; see {log}") from None
        if result.returncode != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            last = lines[-1].strip()[:300] if lines else "no output"
            raise StackError(f"airflow: `airflow db migrate` failed: {last!r} (log: {log})")
