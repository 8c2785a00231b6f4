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
