"""`finegrain settings`: the effective settings and the environment variable behind each."""

from __future__ import annotations

from typing import Annotated

import typer

from finegrain.console import console, print_json_line, summary_table
from finegrain.settings import Settings, get_settings


def show_settings(
    json: Annotated[
        bool, typer.Option("--json", help="Print the settings as one JSON line instead.")
    ] = False,
) -> None:
    """Show every setting, its FINEGRAIN_* variable and its current value."""
    settings = get_settings()
    values = settings.model_dump()
    if json:
        print_json_line(values)
        return
    rows = [
        (f"FINEGRAIN_{name.upper()}", str(values[name]), field.description or "")
        for name, field in Settings.model_fields.items()
    ]
    console.print(summary_table("Settings", rows, ["variable", "value", "meaning"]))
