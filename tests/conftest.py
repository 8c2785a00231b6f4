"""Shared test set-up: the project root, and the `--docs-screenshots` option."""

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
