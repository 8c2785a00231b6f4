"""Shared test set-up: the project root, the `--docs-screenshots` option, and the order of the files."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--docs-screenshots", action="store_true",
                     help="Browser tests also copy their screenshot into docs/img/ (to refresh the docs).")


# Tests that take minutes. bin/test runs the files in two processes (pytest-xdist, `--dist loadfile`,
# files handed out in collection order): started first, they run beside the many short files instead
# of one of them being left alone at the end while the other process waits.
LONG_MARKERS = frozenset({"slow", "browser", "cluster", "faults"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    long_files = {item.path for item in items if LONG_MARKERS & {mark.name for mark in item.iter_markers()}}
    items.sort(key=lambda item: item.path not in long_files)  # stable: each file keeps its own order
