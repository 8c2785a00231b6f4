"""`finegrain`: the one command-line tool for operators. Each sub-command group lives in its own module."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cli import airflow, api, bench, data, evaluate, jobs, keys, models, replay, settings_cmd, stack, stream
from finegrain.console import err_console

app = typer.Typer(
    help="Finegrain: self-hosted, fine-grained recommendations. Every command reads FINEGRAIN_* settings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(data.app, name="data")
app.add_typer(jobs.app, name="jobs")
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(models.app, name="models")
app.add_typer(api.app, name="api")
app.add_typer(keys.app, name="keys")
app.add_typer(stream.app, name="stream")
app.add_typer(airflow.app, name="airflow")
app.add_typer(bench.app, name="bench")
app.command("replay")(replay.replay)
app.command("settings")(settings_cmd.show_settings)


def main() -> None:
    try:
        app()
    except ValidationError as exc:  # a FINEGRAIN_* variable that cannot be used
        reasons = "; ".join(_setting_error(error) for error in exc.errors())
        err_console.print(f"[bold red]error:[/] bad setting: {reasons}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def _setting_error(error: ErrorDetails) -> str:
    """One refused setting: the variable and the value given (a field's own check), or the reason alone
    (the model's checks name their variable themselves)."""
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return reason
    return f"FINEGRAIN_{str(error['loc'][0]).upper()}={error['input']!r}: {reason}"
