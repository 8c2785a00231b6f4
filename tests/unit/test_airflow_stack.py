"""The local Airflow's pieces that need no server: the environment every Airflow process gets, the UI
login kept in its home, the settings, and stopping a process tree (a session, a descendant that left
it, one that ignores SIGTERM) with nothing left behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from finegrain.errors import StackError
from finegrain.settings import PROJECT_ROOT, Settings
from finegrain.stack.airflow import LocalAirflow, airflow_environment, ensure_login, read_login
from finegrain.stack.base import stop_process_tree


@pytest.fixture(autouse=True)
def _no_deployment_settings_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FINEGRAIN_PYTHON", "FINEGRAIN_DATA_DIR", "FINEGRAIN_SPARK_SUBMIT",
                 "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"):
        monkeypatch.delenv(name, raising=False)


def test_the_environment_points_airflow_at_its_home_the_dags_and_the_api_server(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", airflow_port=18287, spark_master="local[2]")
    env = airflow_environment(settings)
    home = tmp_path / "var" / "airflow"
    assert settings.airflow_dir == home
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home}/airflow.db"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT_ROOT / "dags")
    assert (Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "finegrain_retrain.py").exists()
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert json.loads(env["AIRFLOW_CONN_FINEGRAIN_SPARK"]) == {"conn_type": "spark", "host": "local[2]"}
    # Everything listens on loopback, and the tasks report to this api-server, not localhost:8080.
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "18287"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18287"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18287/execution/"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "false"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(home / "passwords.json")
    # What dags/finegrain_deployment.py reads on the workers.
    assert env["FINEGRAIN_HOME"] == str(PROJECT_ROOT)
    assert env["FINEGRAIN_PYTHON"] == sys.executable
    assert env["FINEGRAIN_DATA_DIR"] == str(settings.retail_dir)
    assert env["FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS"] == settings.spark_driver_java_options


def test_the_environment_passes_the_finegrain_settings_through(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("FINEGRAIN_MONGO_DATABASE", "from_the_shell")
    monkeypatch.setenv("AIRFLOW_HOME", "/somewhere/else")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "2")
    monkeypatch.setenv("AIRFLOW__CORE__DEFAULT_TIMEZONE", "Europe/London")
    settings = Settings(var_dir=tmp_path, mongo_database="finegrain_test_x", zookeeper_root="/fg_x",
                        kafka_topic_prefix="fgx", airflow_home=tmp_path / "home", airflow_user="ops")
    env = airflow_environment(settings)
    # The settings given win over the shell's, as every child process of Finegrain sees them.
    assert env["FINEGRAIN_MONGO_DATABASE"] == "finegrain_test_x"
    assert env["FINEGRAIN_ZOOKEEPER_ROOT"] == "/fg_x" and env["FINEGRAIN_KAFKA_TOPIC_PREFIX"] == "fgx"
    assert env["FINEGRAIN_VAR_DIR"] == str(tmp_path)
    assert env["FINEGRAIN_AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")  # ours, not the shell's
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"
    # Other Airflow options pass through, tuning included.
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == "Europe/London"
    monkeypatch.delenv("AIRFLOW__CORE__PARALLELISM")
    assert airflow_environment(settings)["AIRFLOW__CORE__PARALLELISM"] == "4"
    # Unchanged DAG files are parsed again every 5 minutes, not every 30 s, unless the shell says.
    assert env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "300"
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "30")
    assert airflow_environment(settings)["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "30"
    # The DAGs' deployment settings that are no Settings fields are kept from the shell too.
    assert "FINEGRAIN_SPARK_SUBMIT" not in env
    monkeypatch.setenv("FINEGRAIN_SPARK_SUBMIT", "/opt/spark/bin/spark-submit")
    monkeypatch.setenv("FINEGRAIN_DATA_DIR", "/srv/data")
    deployed = airflow_environment(settings)
    assert deployed["FINEGRAIN_SPARK_SUBMIT"] == "/opt/spark/bin/spark-submit"
    assert deployed["FINEGRAIN_DATA_DIR"] == "/srv/data"
    assert deployed["FINEGRAIN_HOME"] == str(PROJECT_ROOT)  # the checkout whose dags/ Airflow reads


def test_a_home_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "-m", "cli", "airflow", "up"], capture_output=True, text=True,
                            timeout=120, cwd=PROJECT_ROOT,
                            env={**os.environ, "FINEGRAIN_AIRFLOW_HOME": str(tmp_path / "file" / "home"),
                                 "FINEGRAIN_AIRFLOW_PORT": "18289"})
    assert result.returncode == 2
    assert f"cannot prepare its home {tmp_path}/file/home" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_login_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    assert read_login(settings) is None
    login = ensure_login(settings)
    assert login.user == "admin" and len(login.password) >= 20
    assert login.path == tmp_path / "airflow" / "passwords.json"
    assert stat.S_IMODE(login.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(login.path.parent.stat().st_mode) == 0o700
    # Airflow's simple auth manager reads this file: a JSON object of user -> password.
    assert json.loads(login.path.read_text()) == {"admin": login.password}
    assert ensure_login(settings) == login == read_login(settings)
    # Another user is added beside the first; a loosened mode is tightened again.
    login.path.chmod(0o644)
    other = ensure_login(settings.model_copy(update={"airflow_user": "ops"}))
    assert other.password != login.password
    assert json.loads(login.path.read_text()) == {"admin": login.password, "ops": other.password}
    assert stat.S_IMODE(login.path.stat().st_mode) == 0o600


def test_a_broken_passwords_file_is_named(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    settings.airflow_dir.mkdir(parents=True)
    (settings.airflow_dir / "passwords.json").write_text('["admin"]')
    with pytest.raises(StackError, match=r"passwords\.json is not a JSON object of user: password"):
        ensure_login(settings)


def test_airflow_settings_are_checked() -> None:
    assert Settings().airflow_port == 18280 and Settings().airflow_user == "admin"
    with pytest.raises(ValidationError, match="airflow_port"):
        Settings(airflow_port=70000)
    with pytest.raises(ValidationError, match="airflow_user"):
        Settings(airflow_user="admin:viewer")  # would be read as a user and a role


def test_a_bad_setting_names_the_variable_and_the_value() -> None:
    result = subprocess.run([sys.executable, "-m", "cli", "airflow", "status"], capture_output=True,
                            text=True, timeout=120, cwd=PROJECT_ROOT,
                            env={**os.environ, "FINEGRAIN_AIRFLOW_PORT": "8o80"})
    assert result.returncode == 2
    assert "FINEGRAIN_AIRFLOW_PORT='8o80'" in result.stderr and "valid integer" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_components_start_in_order_and_stop_in_reverse(tmp_path: Path) -> None:
    airflow = LocalAirflow(Settings(var_dir=tmp_path))
    assert [c.name for c in airflow.components] == ["api-server", "scheduler", "dag-processor"]
    # Nothing runs here: down says so for each, in reverse order, and touches nothing.
    assert list(airflow.down().items()) == [("dag-processor", False), ("scheduler", False),
                                            ("api-server", False)]
    assert all(c.pidfile.parent == tmp_path / "airflow" / "run" for c in airflow.components)


TREE = """
import signal, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(300)")
child = subprocess.Popen(sleep)
escaped = subprocess.Popen(sleep, start_new_session=True)  # as a task's shell does
ignoring = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE, text=True)
ignoring.stdout.readline()
print(child.pid, escaped.pid, ignoring.pid, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def test_a_process_tree_is_stopped_whole() -> None:
    leader = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert leader.stdout is not None
    pids = [leader.pid, *map(int, leader.stdout.readline().split())]
    assert len(pids) == 4 and all(_running(pid) for pid in pids)
    started = time.monotonic()
    stop_process_tree(leader.pid, 1.5, "test")
    assert not [pid for pid in pids if _running(pid)]
    # The one ignoring SIGTERM was killed once the grace period was over, not before.
    assert 1.5 <= time.monotonic() - started < 10


@pytest.mark.parametrize(("conf", "message"), [("{not json", "not JSON"),
                                               ('["as_of"]', "expected a JSON object of params")])
def test_airflow_run_refuses_bad_conf_before_calling_airflow(conf: str, message: str) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["airflow", "run", "finegrain_nightly", "--conf", conf])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert repr(conf) in result.output  # the bad value, named
