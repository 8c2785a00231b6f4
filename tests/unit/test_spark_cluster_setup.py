"""What a session on a cluster ships and how the local cluster is chosen and configured, without a JVM:
the project archive (`finegrain.spark.project_archive`), the stack's service selection, the settings."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from finegrain.errors import StackError
from finegrain.settings import Settings
from finegrain.spark import JOB_PACKAGES, project_archive, submitted_conf
from finegrain.stack import SERVICE_NAMES, SPARK_SERVICE_NAMES, services


def _tree(root: Path) -> None:
    for package in JOB_PACKAGES:
        (root / package / "sub").mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"NAME = {package!r}\n")
        (root / package / "sub" / "__init__.py").write_text("")
        (root / package / "sub" / "__pycache__").mkdir()
        (root / package / "sub" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
        (root / package / "README.md").write_text("not code")
    (root / "serving").mkdir()
    (root / "serving" / "__init__.py").write_text("")


def test_the_archive_holds_the_job_packages_and_is_named_by_content(tmp_path: Path) -> None:
    root, out = tmp_path / "project", tmp_path / "out"
    _tree(root)
    first = project_archive(out, root)
    with zipfile.ZipFile(first) as archive:
        names = sorted(archive.namelist())
        assert archive.read("models/__init__.py") == b"NAME = 'models'\n"
    assert names == sorted(f"{p}/{f}" for p in JOB_PACKAGES for f in ("__init__.py", "sub/__init__.py"))
    assert project_archive(out, root) == first  # the same code: the same file, not rewritten
    rebuilt = tmp_path / "again"
    assert project_archive(rebuilt, root).read_bytes() == first.read_bytes()  # byte for byte
    (root / "spark_jobs" / "sub" / "__init__.py").write_text("CHANGED = True\n")
    changed = project_archive(out, root)
    assert changed != first and changed.exists() and first.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, changed.name])  # no partial left


def test_the_archive_of_this_checkout_is_importable(tmp_path: Path, project_root: Path) -> None:
    archive = project_archive(tmp_path, project_root)
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
    assert {"finegrain/features/user.py", "spark_jobs/features.py", "models/training_set_io.py"} <= names
    assert not any(name.startswith(("serving/", "cli/", "tests/")) for name in names)


def test_an_empty_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Python packages"):
        project_archive(tmp_path / "out", tmp_path)


def test_outside_spark_submit_there_is_no_submitted_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert submitted_conf() is None


def test_the_cluster_is_started_only_when_asked_for() -> None:
    settings = Settings()
    assert [s.name for s in services(settings)] == list(SERVICE_NAMES)
    assert [s.name for s in services(settings, spark=True)] == [*SERVICE_NAMES, *SPARK_SERVICE_NAMES]
    assert [s.name for s in services(settings, ["spark-worker", "redis"])] == ["redis", "spark-worker"]
    assert [s.name for s in services(settings, ["mongo"], spark=True)] == ["mongo", *SPARK_SERVICE_NAMES]
    with pytest.raises(StackError, match=r"unknown service spark; choose from .*spark-master, spark-worker"):
        services(settings, ["spark"])


def test_cluster_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINEGRAIN_SPARK_CLUSTER_MASTER", "127.0.0.1:17099")
    settings = Settings()
    assert settings.spark_cluster_url == "spark://127.0.0.1:17099"
    master, worker = services(settings, list(SPARK_SERVICE_NAMES))
    assert master.address == ("127.0.0.1", 17099)
    assert worker.address == ("127.0.0.1", settings.spark_cluster_worker_ui_port)
    monkeypatch.setenv("FINEGRAIN_SPARK_CLUSTER_MASTER", "127.0.0.1:notaport")
    with pytest.raises(ValidationError, match="FINEGRAIN_SPARK_CLUSTER_MASTER"):
        Settings()
    monkeypatch.delenv("FINEGRAIN_SPARK_CLUSTER_MASTER")
    monkeypatch.setenv("FINEGRAIN_SPARK_CLUSTER_WORKER_MEMORY", "lots")
    with pytest.raises(ValidationError, match="spark_cluster_worker_memory"):
        Settings()
