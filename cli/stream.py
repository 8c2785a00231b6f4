"""`finegrain stream start | stop | status`: the streaming sidecar (Kafka events -> real-time profiles
in Redis + the event archive), in the background beside the API."""

from __future__ import annotations

import typer

from cli.options import JsonOption
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.errors import FinegrainError
from finegrain.settings import get_settings

app = typer.Typer(help="Start, stop and inspect the streaming sidecar (events -> real-time profiles and "
                  "the event archive).")


@app.command()
def start() -> None:
    """Start the sidecar in the background (or find it running); returns once its query runs."""
    from spark_jobs.stream.process import SidecarProcess

    process = SidecarProcess(get_settings())
    try:
        with console.status("starting the sidecar's Spark query ..."):
            pid = process.start()
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]✓[/] sidecar running (PID {pid}, log {process.log_path})")


@app.command()
def stop() -> None:
    """Stop the sidecar between two micro-batches."""
    from spark_jobs.stream.process import SidecarProcess

    if SidecarProcess(get_settings()).stop():
        console.print("sidecar stopped")
    else:
        console.print("the sidecar was not running")


@app.command()
def status(json: JsonOption = False) -> None:
    """State, events counted, dead letters, the offsets processed and the lag per partition; exit 1 if
    the sidecar is not running."""
    from spark_jobs.stream.process import SidecarProcess

    state = SidecarProcess(get_settings()).status()
    offsets = state.get("offsets") or {}
    ends = state.get("end_offsets") or {}
    lag = state.get("lag") or {}
    rows = [(p, offsets.get(p, 0), ends.get(p, "?"), lag.get(p, "?")) for p in sorted({*offsets, *ends})]
    last = state.get("last_batch") or {}
    console.print(
        f"sidecar: {state.get('state')} (PID {state.get('pid', '-')}), {state.get('batches', 0):,} batches, "
        f"{state.get('accepted', 0):,} events, {state.get('dead_letters', 0):,} dead letters; "
        f"last batch {last.get('batch_id', '-')} at {last.get('at', '-')}", highlight=False)
    console.print(summary_table("Events topic", rows, ["partition", "processed to", "end", "lag"]))
    if state.get("lag_error"):
        console.print(f"lag unknown: {state['lag_error']}", style="dim")
    if json:
        print_json_line(state)
    if not state["running"]:
        raise typer.Exit(1)
