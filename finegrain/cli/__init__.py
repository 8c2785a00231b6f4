"""`finegrain`: the one command-line tool for operators. Each sub-command group lives in its own module."""

from __future__ import annotations

import typer

from finegrain.cli import bench, data, jobs, settings_cmd, stack

app = typer.Typer(
    help="Finegrain: self-hosted, fine-grained recommendations. Every command reads FINEGRAIN_* settings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(data.app, name="data")
app.add_typer(jobs.app, name="jobs")
app.add_typer(bench.app, name="bench")
app.command("settings")(settings_cmd.show_settings)


def main() -> None:
    app()
