"""Fault injection under load: Redis, ZooKeeper, MongoDB, the Kafka broker, the streaming sidecar and
one API worker (SIGKILL) stopped and started again in turn, while a steady load of recommendations and
event posts runs against the API under gunicorn (2 workers); per fault the requests, the failures by
kind, the degraded answers, the recovery time, and the acknowledged events lost or duplicated in Kafka
and in the archive.

Runs on a private stack of its own (`bench/_faults.py`: every server on a free port, a temporary var
dir), never the shared one: the datasets are built there by the offline jobs from the demo's events as
of the day after their last event, and the demo's published XGBoost ranker is copied into its registry
and published (so `bin/demo` first). The Kafka broker's outage is its port cut (its log is in memory;
see `bench/_faults.py`). `tests/integration/test_faults.py` asserts the same with shorter outages.

Usage: .venv/bin/python bench/faults.py [--hold 10] [--rps 40] [--event-posts 10] [--json]
"""

from __future__ import annotations

import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from _faults import (  # bench/_faults.py, beside this script
    FaultRun,
    Load,
    acknowledged,
    archived_ids,
    event_accounting,
    faults,
    inject,
    kafka_ids,
    private_deployment,
    sidecar_settle,
    wait_archived,
)

from finegrain.console import console, print_json_line, summary_table
from finegrain.dates import data_end, rows_before
from finegrain.settings import Settings, get_settings
from finegrain.spark import spark_session
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from spark_jobs import JOBS
from spark_jobs.runner import load_job, run_jobs

RANKER = "ranker_xgboost"


def copy_ranker(source: Settings, target: Settings) -> str:
    """The published ranker of `source` registered in `target`'s registry and published there."""
    with ModelPublisher(source) as publisher:
        manifest, _ = publisher.published(RANKER)
    if manifest is None:
        raise typer.BadParameter(f"no {RANKER} is published: run bin/demo first")
    data = ModelRegistry(source).fetch_artifact(manifest)
    copy = ModelRegistry(target).register(RANKER, data, features=list(manifest.features),
                                          metrics=dict(manifest.metrics), params=dict(manifest.params),
                                          data_snapshot=manifest.data_snapshot, framework=manifest.framework)
    with ModelPublisher(target) as publisher:
        publisher.publish(RANKER, copy.version, force=True)
    return copy.version


COLUMNS = ["dependency", "fault", "requests", "failures by kind", "degraded answers (while down)",
           "recovery s", "events acked", "lost (Kafka / archive)", "duplicated (Kafka / archive)"]


def cells(row: dict[str, Any]) -> list[str]:
    failures = ", ".join(f"{kind} {count}" for kind, count in row["failures"].items()) or "none"
    return [row["dependency"], row["what"], f"{row['requests']:,} + {row['event_posts']:,} posts", failures,
            f"{row['degraded_down']} of {row['answers_down']}", f"{row['recovery_s']:.1f}",
            f"{row['acknowledged']:,}", f"{row['lost_kafka']} / {row['lost_archive']}",
            f"{row['duplicated_kafka']} / {row['duplicated_archive']}"]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cells(row)) + " |" for row in rows])


def main(
    hold: Annotated[float, typer.Option(help="Seconds each dependency stays down.", min=1)] = 10.0,
    rps: Annotated[float, typer.Option(help="Recommendation requests per second.", min=1)] = 40.0,
    event_posts: Annotated[float, typer.Option(help="Event posts (5 events each) per second.", min=1)] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON line.")] = False,
) -> None:
    # SIGTERM ends the run through the clean-up (the private stack's servers stopped), not around it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = get_settings()
    if not base.events_path.exists():
        raise typer.BadParameter(f"no events at {base.events_path}: run bin/demo first")
    events = pd.read_parquet(base.events_path, columns=["user_id", "item_id", "timestamp"])
    as_of = data_end(events)
    before = events[rows_before(events, as_of)]
    users = before["user_id"].value_counts().index[:500].astype(str).tolist()
    items = before["item_id"].value_counts().index[:500].astype(str).tolist()

    def prepare(own: Settings) -> None:
        with console.status(f"building the datasets as of {as_of} on the private stack"):
            session = spark_session(own, app_name="finegrain-bench-faults")
            try:
                jobs = [load_job(name) for name in JOBS]
                run_jobs(jobs, as_of, base.events_path, settings=own, spark=session)
            finally:
                session.stop()
        copy_ranker(base, own)

    runs: list[FaultRun] = []
    with tempfile.TemporaryDirectory(prefix="fg-faults-") as tmp, \
            private_deployment(base, Path(tmp), prepare) as deployment:
        load = Load(deployment.server.url, deployment.headers, users, items, rps=rps, event_posts=event_posts)
        sidecar = deployment.sidecar.pid()
        survived = False
        load.start()
        try:
            for fault in faults(deployment):
                if fault.name == "sidecar":  # whether the outages before it left the sidecar running
                    survived = deployment.sidecar.pid() == sidecar
                with console.status(f"{fault.name}: {fault.what}, {hold:g} s"):
                    settle = sidecar_settle(deployment, load) if fault.name == "sidecar" else None
                    runs.append(inject(fault, load, before_s=3.0, hold_s=hold, after_s=10.0, settle=settle))
                console.print(f"{fault.name}: {runs[-1].summary()}")
        finally:
            outcomes = load.stop()
        with console.status("waiting for the sidecar to archive every acknowledged event"):
            wait_archived(deployment.settings, acknowledged(outcomes), 180)
        accounting = event_accounting(runs, kafka_ids(deployment.settings), archived_ids(deployment.settings))
    rows = [{**run.summary(), **accounting[run.fault.name]} for run in runs]
    title = f"Faults under load ({rps:g} req/s + {event_posts:g} posts/s, each held {hold:g} s)"
    console.print(summary_table(title, [cells(row) for row in rows], COLUMNS))
    console.print(markdown(rows), soft_wrap=True, markup=False)  # one line per row, to paste
    console.print(f"the sidecar {'outlived' if survived else 'did NOT outlive'} the outages before its own")
    figures = {"machine": f"{socket.gethostname()}, 2 cores", "hold_s": hold, "rps": rps,
               "event_posts": event_posts, "as_of": str(as_of), "sidecar_outlived_other_faults": survived,
               "faults": rows}
    if as_json:
        print_json_line(figures)


if __name__ == "__main__":
    typer.run(main)
