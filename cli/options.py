"""Options several commands take, defined once so they read and behave the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
