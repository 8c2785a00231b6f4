"""`finegrain bench NAME [OPTIONS]`: run one of the benchmark scripts of `bench/`.

The scripts stay plain files anyone can rerun with Python; this command only finds and runs them with
the project's interpreter, passing every option through (each takes `--json`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from finegrain.console import console, fail, summary_table
from finegrain.settings import PROJECT_ROOT

BENCH_DIR = PROJECT_ROOT / "bench"

app = typer.Typer(help="Run the benchmarks of bench/ (each prints its figures; --json for one JSON line).")


def _benchmarks() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCH_DIR.glob("*.py")) if not path.name.startswith("_")}


@app.command("list")
def list_benchmarks() -> None:
    """List the benchmarks and what each measures."""
    rows = []
    for name, path in _benchmarks().items():
        doc = path.read_text().split('"""')[1].strip().splitlines()[0] if '"""' in path.read_text() else ""
        rows.append((name, doc))
    console.print(summary_table("Benchmarks (finegrain bench run NAME --help)", rows, ["name", "measures"]))


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Benchmark name (see `finegrain bench list`).")],
) -> None:
    """Run benchmark NAME; options after the name go to the benchmark (try `--help`)."""
    scripts = _benchmarks()
    if name not in scripts:
        raise fail(f"no benchmark named {name!r}; choose from {', '.join(scripts)}")
    result = subprocess.run([sys.executable, str(scripts[name]), *ctx.args], check=False, cwd=PROJECT_ROOT)
    raise typer.Exit(result.returncode)
