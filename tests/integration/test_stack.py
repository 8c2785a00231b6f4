"""The local stack: real servers started by the project, health-checked, stopped by their own PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from finegrain.settings import Settings
from finegrain.stack import ServiceStatus
from finegrain.stack.redis_server import RedisService

pytestmark = pytest.mark.integration

FINEGRAIN = [sys.executable, "-m", "cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exited(pid: int) -> bool:
    """Gone, or a zombie: it has exited and only waits for its parent (init, for a daemon) to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in {"Z", "X"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FINEGRAIN, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_every_server_is_up_and_reports_a_version(stack: list[ServiceStatus]) -> None:
    assert [s.name for s in stack] == ["redis", "zookeeper", "mongo", "kafka"]
    for status in stack:
        assert status.healthy, status
        assert status.address.startswith("127.0.0.1:")
        assert status.version not in {"", "-", "?"}


def test_status_prints_the_table_and_json(stack: list[ServiceStatus]) -> None:
    result = _cli("stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    for name in ("redis", "zookeeper", "mongo", "kafka"):
        assert name in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    import json

    figures = json.loads(last)
    assert figures["zookeeper"]["version"].startswith("3.")
    assert all(figures[name]["healthy"] for name in figures)


def test_up_is_idempotent_and_reuses_the_running_servers(stack: list[ServiceStatus]) -> None:
    result = _cli("stack", "up", "--json")
    assert result.returncode == 0, result.stderr
    import json

    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: figures[name]["pid"] for name in figures} == {s.name: s.pid for s in stack}


def test_start_and_stop_a_private_redis_by_its_pid(tmp_path: Path) -> None:
    port = _free_port()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", var_dir=tmp_path)
    service = RedisService(settings)
    status = service.up()
    assert status.healthy and status.pid is not None
    assert redis.Redis(port=port).ping()
    assert service.down() is True
    assert _exited(status.pid)
    assert service.status().healthy is False
    assert service.down() is False  # nothing left to stop


def test_a_taken_port_gives_a_one_line_reason(stack: list[ServiceStatus], tmp_path: Path) -> None:
    zookeeper_port = next(s for s in stack if s.name == "zookeeper").address.rsplit(":", 1)[1]
    result = _cli(
        "stack",
        "up",
        "--only",
        "redis",
        env={
            "FINEGRAIN_REDIS_URL": f"redis://127.0.0.1:{zookeeper_port}/0",
            "FINEGRAIN_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"port {zookeeper_port}" in result.stderr and "FINEGRAIN_REDIS_URL" in result.stderr


def test_a_missing_binary_gives_a_one_line_reason(tmp_path: Path) -> None:
    path_without_redis = str(Path(sys.executable).parent)
    assert shutil.which("redis-server", path=path_without_redis) is None
    result = _cli(
        "stack",
        "up",
        "--only",
        "redis",
        env={
            "PATH": path_without_redis,
            "FINEGRAIN_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
            "FINEGRAIN_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 2
    assert "redis-server" in result.stderr and "apt-get install redis-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_remote_address_is_refused_without_network_traffic(tmp_path: Path) -> None:
    result = _cli(
        "stack",
        "up",
        "--only",
        "mongo",
        env={"FINEGRAIN_MONGO_URI": "mongodb://mongo.prod.example:27017", "FINEGRAIN_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "mongo.prod.example" in result.stderr and "127.0.0.1" in result.stderr


def test_an_unknown_service_name_is_refused() -> None:
    result = _cli("stack", "status", "--only", "postgres")
    assert result.returncode == 2
    assert "unknown service postgres" in result.stderr


def test_a_server_that_cannot_start_gives_a_one_line_reason(tmp_path: Path) -> None:
    # The data folder redis must chdir into is a file: redis-server exits at once.
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "redis").write_text("not a folder")
    result = _cli(
        "stack",
        "up",
        "--only",
        "redis",
        env={
            "FINEGRAIN_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
            "FINEGRAIN_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: redis: cannot start" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_address_setting_names_the_variable(tmp_path: Path) -> None:
    result = _cli(
        "stack",
        "up",
        "--only",
        "redis",
        env={"FINEGRAIN_REDIS_URL": "redis://127.0.0.1:70000/0", "FINEGRAIN_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "FINEGRAIN_REDIS_URL" in result.stderr and "out of range" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
