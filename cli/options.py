"""Options several commands take, defined once so they read and behave the same everywhere."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from finegrain.console import fail

JsonOption = Annotated[bool, typer.Option(
    "--json", help="Also print the result as one JSON object on the last line (for scripts).")]
EventsOption = Annotated[Path | None, typer.Option(
    "--events", help="Canonical events Parquet (default: the loaded data, Settings.events_path).",
    show_default=False)]
AsOfModelOption = Annotated[str, typer.Option(
    "--as-of", help="The model's date (YYYY-MM-DD): it learns from everything before it and is scored on "
    "the last test window that fits (a backtest when that window is before the date); default: the day "
    "after the data's last event.", show_default=False)]
TestDaysOption = Annotated[int, typer.Option(
    "--test-days", min=1, help="Length of the README protocol's test window, in days.")]


def name_versions(texts: Iterable[str], what: str) -> dict[str, str]:
    """Model versions given as NAME=VERSION (`models gate`, `api smoke --expect`), one per model."""
    found: dict[str, str] = {}
    for text in texts:
        name, sep, version = text.partition("=")
        if not sep or not name or not version:
            raise fail(f"bad {what} {text!r}: expected NAME=VERSION, e.g. ranker_xgboost=20261201T101500.123")
        if name in found:
            raise fail(f"two {what}s for {name}: give one version per model")
        found[name] = version
    return found


def json_params(text: str, option: str = "--conf") -> dict[str, Any]:
    """A DAG run's params given as one JSON object (`airflow run --conf`, the nightly benchmarks); a
    CLI error naming the option and the bad value otherwise."""
    try:
        params: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"bad {option} {text!r}: not JSON ({exc.msg})") from None
    if not isinstance(params, dict):
        raise fail(f"bad {option} {text!r}: expected a JSON object of params")
    return params
