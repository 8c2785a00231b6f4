"""The local Airflow (`finegrain airflow up | status | down`, `finegrain.stack.airflow`), started once
for this module on a test port in a temporary home, with the test session's Finegrain namespaces:
three healthy components listening on loopback only, a login that is required, `up` twice reusing what
runs; the Airflow UI in headless Chromium (log in, both DAGs listed, the retrain DAG triggered with
params through its trigger form and its run's success shown); `down` during a run leaving no process
behind.

The browser test drives the system's Chromium (Debian `chromium`) through Playwright; nothing downloads
a browser build. It trains the ALS embeddings (the retrain DAG's quickest branch: no Spark, about 15 s
of training) on the real data, so the run's tasks really execute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pandas as pd
import pytest

from finegrain.settings import Settings
from finegrain.stack.airflow import LocalAirflow, read_login
from finegrain.stack.airflow_runs import AirflowRuns, DagRun
from models.registry import ModelRegistry
from tests.integration.conftest import drop_namespace

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
FINEGRAIN = [sys.executable, "-m", "cli"]
TEST_PORTS = range(18281, 18290)
DOCS_SCREENSHOT = PROJECT / "docs" / "img" / "airflow_retrain.png"
# Generous but bounded: a cold start is about 30 s here, a retrain run about 30 s, on a quiet machine.
UP_TIMEOUT_S = 420
RUN_TIMEOUT_S = 600


def _free_test_port() -> int:
    for port in TEST_PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"every test port {TEST_PORTS.start}-{TEST_PORTS.stop - 1} is taken")


def _cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FINEGRAIN, *args], capture_output=True, text=True, timeout=timeout,
                          env=settings.environment(), cwd=PROJECT)


def _last_json(stdout: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return found


def _processes_of(home: Path) -> dict[int, str]:
    """PID -> command line of every process on the machine that runs with this AIRFLOW_HOME or in a
    folder of it: whatever its parent or session, an orphan of ours is found here. (Both, since a
    process that sets its title, as Airflow's do, overwrites the environment /proc shows, and a task
    runs in the project's folder.)"""
    marker = f"AIRFLOW_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd.is_relative_to(home) or marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, a zombie, or a kernel thread
            continue
    return found


def _listening_addresses(pids: set[int]) -> set[str]:
    """host:port of every TCP socket these processes listen on (IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                addresses.add(f"{_hex_host(host)}:{int(port, 16)}")
    return addresses


def _hex_host(text: str) -> str:
    if len(text) == 8:  # IPv4, little-endian
        return ".".join(str(int(text[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "::1" if text == "00000000000000000000000001000000" else f"ipv6:{text}"


@pytest.fixture(scope="module")
def airflow_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Airflow in a home of its own on a free test port; a registry and ZooKeeper root of its own, so
    the retrain run's gate compares against nothing another test published."""
    root = tmp_path_factory.mktemp("airflow")
    own = settings.model_copy(update={
        "airflow_home": root / "home", "airflow_port": _free_test_port(), "var_dir": root / "var",
        "mongo_database": settings.mongo_database + "_airflow",
        "zookeeper_root": settings.zookeeper_root + "_airflow"})
    yield own
    LocalAirflow(own).down()  # what a failed test left running
    drop_namespace(own)


@pytest.fixture(scope="module")
def started(airflow_settings: Settings) -> dict[str, Any]:
    """`finegrain airflow up --json`, once for the module."""
    result = _cli(airflow_settings, "airflow", "up", "--json", timeout=UP_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    figures = _last_json(result.stdout)
    figures["stdout"] = result.stdout
    return figures


def test_up_starts_three_healthy_components_on_loopback(airflow_settings: Settings,
                                                        started: dict[str, Any]) -> None:
    port = airflow_settings.airflow_port
    home = airflow_settings.airflow_dir
    components = started["components"]
    assert set(components) == {"api-server", "scheduler", "dag-processor"}
    assert all(c["healthy"] and c["pid"] for c in components.values()), components
    assert started["url"] == f"http://127.0.0.1:{port}" and started["home"] == str(home)
    # The login is printed, and is the one kept (mode 0600) in the home Airflow reads it from.
    login = read_login(airflow_settings)
    assert login is not None and login.user == "admin"
    assert f"UI: http://127.0.0.1:{port}" in started["stdout"]
    assert f"login: admin / {login.password}" in started["stdout"]
    assert stat.S_IMODE(login.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "airflow.db").exists()  # SQLite metadata, migrated by `up`

    # Nothing of ours listens beyond loopback: the api-server's port and no log server.
    processes = _processes_of(home)
    assert {pid for pid in (c["pid"] for c in components.values())} <= set(processes)
    assert _listening_addresses(set(processes)) == {f"127.0.0.1:{port}"}

    health = httpx.get(f"{started['url']}/api/v2/monitor/health", timeout=30).json()
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy" and health["dag_processor"]["status"] == "healthy"
    # The REST API wants a login (not the simple auth manager's "everyone is admin" mode) ...
    assert httpx.get(f"{started['url']}/api/v2/dags", timeout=30).status_code == 401
    token = httpx.post(f"{started['url']}/auth/token", json={"username": "admin", "password": "wrong"},
                       timeout=30)
    assert token.status_code == 401
    # ... and the printed one works.
    token = httpx.post(f"{started['url']}/auth/token",
                       json={"username": login.user, "password": login.password}, timeout=30)
    assert token.status_code == 201, token.text


def test_up_twice_reuses_what_runs(airflow_settings: Settings, started: dict[str, Any]) -> None:
    result = _cli(airflow_settings, "airflow", "up", "--json", timeout=UP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    again = _last_json(result.stdout)
    assert {n: c["pid"] for n, c in again["components"].items()} == \
        {n: c["pid"] for n, c in started["components"].items()}
    assert "migrating" not in result.stdout and "is running (PID" in result.stdout


def test_status_shows_each_component_and_the_login(airflow_settings: Settings,
                                                   started: dict[str, Any]) -> None:
    result = _cli(airflow_settings, "airflow", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = _last_json(result.stdout)
    assert {n: (c["pid"], c["healthy"]) for n, c in status["components"].items()} == \
        {n: (c["pid"], True) for n, c in started["components"].items()}
    assert status["password_file"] == str(airflow_settings.airflow_dir / "passwords.json")
    login = read_login(airflow_settings)
    assert login is not None and f"login: admin / {login.password}" in result.stdout


def test_a_taken_port_is_refused_before_anything_starts(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        own = settings.model_copy(update={"airflow_home": tmp_path / "home", "airflow_port": port})
        result = _cli(own, "airflow", "up")
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "FINEGRAIN_AIRFLOW_PORT" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "airflow.db").exists()  # refused before the migration
    assert _processes_of(tmp_path / "home") == {}


def _retrain_as_of(events: Path) -> str:
    """An as-of date the embeddings can be trained and evaluated on: 30 days before the data ends, so
    the evaluation window after it is full (derived from the data, not written here)."""
    last = pd.read_parquet(events, columns=["timestamp"])["timestamp"].max()
    return str((last.date() - timedelta(days=30)).isoformat())


@pytest.mark.browser
@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_the_ui_logs_in_lists_the_dags_and_runs_a_retrain(
    airflow_settings: Settings, started: dict[str, Any], events_path: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium is not None, "Debian's chromium is not installed: run bin/setup"
    login = read_login(airflow_settings)
    assert login is not None
    url = started["url"]
    as_of = _retrain_as_of(events_path)

    def until(page: Page, seconds: float, found: Any) -> None:
        """Reload the page, as a person would, until `found()` holds."""
        deadline = time.monotonic() + seconds
        while not found():
            assert time.monotonic() < deadline, f"not shown after {seconds:.0f} s: {page.url}"
            page.wait_for_timeout(2000)
            page.reload()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(url + "/")
            # Not logged in: the simple auth manager's sign-in form.
            expect(page.get_by_text("Sign into Airflow")).to_be_visible()
            page.get_by_label("Username").fill(login.user)
            page.get_by_label("Password").fill(login.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(url + "/")

            # Both DAGs, once the dag-processor has parsed them.
            page.goto(url + "/dags")
            nightly = page.get_by_role("link", name="finegrain_nightly", exact=True)
            retrain = page.get_by_role("link", name="finegrain_retrain", exact=True)
            until(page, 180, lambda: nightly.count() > 0 and retrain.count() > 0)
            expect(nightly).to_be_visible()
            expect(retrain).to_be_visible()
            page.screenshot(path=tmp_path / "dags.png")

            # The retrain DAG's trigger form, with its params.
            retrain.click()
            page.wait_for_url(url + "/dags/finegrain_retrain")
            # Rendered (until then the list's per-DAG trigger buttons are still on the page).
            expect(page.get_by_text("Latest Dag Version")).to_be_visible()
            page.get_by_role("button", name="Trigger Dag").click()
            form = page.get_by_role("dialog")
            expect(form.get_by_text("Trigger Dag - finegrain_retrain")).to_be_visible()
            form.get_by_role("combobox", name="model").click()  # the XGBoost objective is one too
            page.get_by_role("option", name="embeddings_als", exact=True).click()
            form.locator("input[name='element_as_of']").fill(as_of)
            form.locator("input[name='element_events']").fill(str(events_path))
            # A paused DAG's run would stay queued: the form unpauses it (ticked by default).
            expect(form.get_by_role("checkbox", name=re.compile("Unpause finegrain_retrain"))).to_be_checked()
            page.screenshot(path=tmp_path / "trigger.png")
            form.get_by_role("button", name="Trigger", exact=True).click()

            # The UI opens the new run; it refreshes itself while the run is active.
            page.wait_for_url(re.compile(re.escape(url) + r"/dags/finegrain_retrain/runs/.+"))
            run_id = unquote(page.url.rsplit("/runs/", 1)[1])
            header = page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..")
            state = header.get_by_test_id("state-badge")
            expect(state).to_have_text(re.compile("Success|Failed"), timeout=RUN_TIMEOUT_S * 1000)
            assert state.inner_text().strip() == "Success", _task_logs(airflow_settings, run_id)

            # Each task's state as the run's page lists it: the embeddings branch ran, the ranker's was
            # skipped. Reloaded: the table stops refreshing with the run, maybe a beat before its last
            # task's state came in.
            page.reload()
            for task, expected in (("choose_model", "Success"), ("train_embeddings", "Success"),
                                   ("build_training_set", "Skipped"), ("train_ranker", "Skipped")):
                row = page.get_by_role("row").filter(has=page.get_by_title(task, exact=True))
                expect(row.get_by_test_id("state-badge")).to_have_text(expected)
            page.screenshot(path=tmp_path / "run.png")
        finally:
            browser.close()

    print(f"screenshots: {tmp_path}")
    if request.config.getoption("--docs-screenshots"):
        shutil.copyfile(tmp_path / "run.png", DOCS_SCREENSHOT)
    # The params reached the task: the run trained as of the date typed in the form, on those events,
    # and published the version in this test's own registry.
    entries = ModelRegistry(airflow_settings).list("embeddings_als")
    assert len(entries) == 1 and entries[0].published, entries
    snapshot = entries[0].manifest.data_snapshot
    assert snapshot.as_of_date == as_of and snapshot.events_uri == str(events_path)


def _task_logs(settings: Settings, run_id: str) -> str:
    run_logs = settings.airflow_dir / "logs" / "dag_id=finegrain_retrain" / f"run_id={run_id}"
    logs = sorted(run_logs.rglob("*.log"))
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}" for log in logs)


def _training_task_running(settings: Settings, url: str, events: Path) -> None:
    """Trigger the retrain DAG through the REST API and return once its training task runs."""
    conf = {"model": "embeddings_als", "as_of": _retrain_as_of(events), "events": str(events)}
    with AirflowRuns(settings) as runs:
        run = runs.trigger("finegrain_retrain", None, conf)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (state := _task_state(runs.refresh(run), "train_embeddings")) != "running":
            assert state in {"none", "scheduled", "queued"} and time.monotonic() < deadline, state
            time.sleep(0.5)


def _task_state(run: DagRun, task_id: str) -> str:
    return next((t.state for t in run.tasks if t.task_id == task_id), "none")


def test_the_run_command_triggers_and_follows_a_run(airflow_settings: Settings, started: dict[str, Any],
                                                    events_path: Path) -> None:
    conf = {"model": "embeddings_als", "as_of": _retrain_as_of(events_path), "events": str(events_path),
            "publish": False}
    result = _cli(airflow_settings, "airflow", "run", "finegrain_retrain", "--conf", json.dumps(conf),
                  "--json", timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    run = _last_json(result.stdout)
    assert run["state"] == "success" and run["tasks"]["train_embeddings"]["state"] == "success", run
    assert "train_embeddings: success" in result.stdout  # followed task by task
    bad = _cli(airflow_settings, "airflow", "run", "finegrain_retrain", "--conf", "[1]")
    assert bad.returncode == 2 and "expected a JSON object" in bad.stderr + bad.stdout
    unknown = _cli(airflow_settings, "airflow", "run", "finegrain_weekly")
    assert unknown.returncode == 2 and "no DAG 'finegrain_weekly'" in unknown.stderr + unknown.stdout


def test_down_stops_every_process(airflow_settings: Settings, started: dict[str, Any],
                                  events_path: Path) -> None:
    home = airflow_settings.airflow_dir
    # A task is running when `down` comes: its process tree goes too.
    _training_task_running(airflow_settings, started["url"], events_path)
    deadline = time.monotonic() + 120  # "running" comes a moment before the task's command starts
    before = _processes_of(home)
    while not any("models train-embeddings" in command for command in before.values()):
        assert time.monotonic() < deadline, before
        time.sleep(0.2)
        before = _processes_of(home)
    # The three components, the scheduler's executor workers and the task, at least.
    assert len(before) >= 5, before
    result = _cli(airflow_settings, "airflow", "down", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "api-server: stopped" in result.stdout and "scheduler: stopped" in result.stdout
    assert "dag-processor: stopped" in result.stdout
    assert _processes_of(home) == {}  # no orphan, wherever it was reparented
    with pytest.raises(httpx.ConnectError):
        httpx.get(started["url"] + "/api/v2/monitor/health", timeout=5)

    status = _cli(airflow_settings, "airflow", "status")
    assert status.returncode == 1 and status.stdout.count("not running") == 3
    again = _cli(airflow_settings, "airflow", "down")
    assert again.returncode == 0 and again.stdout.count("was not running") == 3
