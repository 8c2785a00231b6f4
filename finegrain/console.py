"""How every layer reports to people and scripts: progress lines, summary tables and the one-line error
for people, one JSON line for scripts. The command line, the Spark jobs' entry points, the models'
training runs and the benchmarks all print through here, so they read the same."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

# Piped into a log or a CI transcript, rich would fold tables at 80 columns; a log has room for more.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

# A progress callback: long work calls it once per step with a line saying what it starts now.
Step = Callable[[str], object]


def step(message: str) -> None:
    """The `Step` of an interactive command: the time, then what starts now."""
    console.print(f"[dim]{datetime.now():%H:%M:%S}[/] {message} ...", highlight=False)


def quiet(_message: str) -> None:
    """The `Step` of a caller that wants no progress lines."""


def summary_table(title: str, rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    return table


def print_json_line(figures: Mapping[str, Any]) -> None:
    """The machine-readable result of a command: one JSON object, always the last line printed."""
    print(json.dumps(figures, sort_keys=True, default=str), flush=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line reason (no traceback) and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
