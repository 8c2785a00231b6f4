"""The layers of the code base, enforced: `cli` above `serving | spark_jobs` above `models` above the
core `finegrain` (the import-linter contract in pyproject.toml), and DAG files that import no project
module. A worker importing no Spark is checked against the real stack in the integration tier."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("cli", "serving", "spark_jobs", "models", "finegrain")
# What a DAG file may import: Airflow and its date library, the standard library, its sibling modules.
DAG_IMPORTS = {"airflow", "pendulum", *sys.stdlib_module_names}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), str(root / "pyproject.toml")], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=120)


def test_the_layers_contract_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("finegrain/upward.py", "import models.registry"),
    ("models/upward.py", "from serving import app"),
    ("spark_jobs/upward.py", "import serving.config"),
    ("serving/upward.py", "from cli import main"),
])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    """The contract is not vacuous: the same tree with one upward import added fails it."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(f'"""An import against the layers."""\n\n{upward}\n')
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "BROKEN" in result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dag_files_import_no_project_module() -> None:
    dag_files = sorted((ROOT / "dags").glob("*.py"))
    assert dag_files
    siblings = {path.stem for path in dag_files}
    for path in dag_files:
        outside = _top_level_imports(path) - DAG_IMPORTS - siblings - {"__future__"}
        assert not outside, f"{path.name} imports {sorted(outside)}: DAGs only orchestrate"
