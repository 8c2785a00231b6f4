"""Three consecutive simulated days of the living loop, on the real data, through the real parts.

The shop's history stops before the data's last three trading days; then, day after day:
1. the day's purchases (with synthetic views and clicks around them) are posted through the HTTP API
   in time order (`finegrain replay`'s `Replayer`, with an `events` key), produced to Kafka, and the
   streaming sidecar folds them into real-time profiles and appends them to the event archive;
2. the nightly DAG runs through the local Airflow for the next day, reading the archive only (no file
   drop: what it learns of that day came through the API): ingest, the offline build, the training set,
   the three models trained as of that date, the gate, publishing to ZooKeeper, the API's smoke test;
3. the running API is asked for one of that day's buyers, and every worker must serve the versions
   just published.
Reported per day: events posted and archived, purchases the ingest added, the nightly run's time, each
published model's as-of date and its figures on the backtest the gate compared (NDCG@20, Recall@20 of
the rankers; Recall@200 of the embeddings), and what the API served. A PNG plots the figures by day.

Everything lives in a namespace of its own (Redis database 3, Mongo database `finegrain_bench_days`,
ZooKeeper root `/finegrain_bench_days`, a Kafka topic prefix of its own, a temporary var folder).

Usage: .venv/bin/python bench/simulated_days.py [--days 3] [--conf JSON] [--json] [--plot PATH]
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import pandas as pd
import typer
from pydantic import SecretStr

from cli.options import json_params
from finegrain.apikeys import MAX_RATE_PER_S, KeyStore, Scope, bearer_headers
from finegrain.console import console, print_json_line, summary_table
from finegrain.data.ingest import ingest
from finegrain.data.replay import Replayer, replay_events, summarise
from finegrain.data.retail import read_events
from finegrain.dates import utc_timestamps
from finegrain.events.archive import EventArchive
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.stack.airflow import LocalAirflow
from finegrain.stack.airflow_runs import AirflowRuns, DagRun
from finegrain.storage.namespace import drop_namespace
from models.publishing import ModelPublisher
from serving.process import ApiServer
from serving.smoke import smoke_test
from spark_jobs.stream.process import SidecarProcess

API_BIND = "127.0.0.1:18384"
AIRFLOW_PORT = 18385
DAG = "finegrain_nightly"
ARCHIVE_WAIT_S = 300.0
# The figures each model's manifest carries from the gate's backtest (`finegrain models list`).
FIGURES = {"ranker_xgboost": ("ndcg@20", "recall@20"), "ranker_tf": ("ndcg@20", "recall@20"),
           "embeddings_als": ("ndcg@20", "recall@200")}
DEFAULT_PLOT = PROJECT_ROOT / "docs" / "img" / "simulated_days.png"

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def bench_settings(folder: Path) -> Settings:
    base = get_settings()
    host, port = base.redis_address()
    return base.model_copy(update={
        "mongo_database": "finegrain_bench_days", "zookeeper_root": "/finegrain_bench_days",
        "redis_url": f"redis://{host}:{port}/3", "kafka_topic_prefix": f"fgbench_days_{uuid.uuid4().hex[:6]}",
        "var_dir": folder / "var", "event_archive": str(folder / "archive"), "api_bind": API_BIND,
        "api_workers": 2, "airflow_port": AIRFLOW_PORT, "airflow_home": folder / "airflow",
        "stream_metrics_bind": "127.0.0.1:0"})


def trading_days(events: pd.DataFrame, count: int) -> list[date]:
    """The data's last `count` days with purchases."""
    days = sorted(set(utc_timestamps(events["timestamp"]).dt.date))
    if len(days) < count:
        raise typer.BadParameter(f"the data has {len(days)} days of purchases, fewer than {count}")
    return days[-count:]


def wait_archived(archive: EventArchive, ids: set[str]) -> float:
    """Seconds until every posted event id is in the archive."""
    started = time.monotonic()
    while time.monotonic() - started < ARCHIVE_WAIT_S:
        archived = set(archive.read().column("event_id").to_pylist())
        if ids <= archived:
            return time.monotonic() - started
        time.sleep(1.0)
    missing = len(ids - set(archive.read().column("event_id").to_pylist()))
    raise SystemExit(f"{missing:,} posted events are not in the archive after {ARCHIVE_WAIT_S:.0f} s")


def published(settings: Settings) -> dict[str, dict[str, Any]]:
    with ModelPublisher(settings) as publisher:
        found = {name: publisher.published(name)[0] for name in FIGURES}
    return {name: {"version": manifest.version, "as_of": manifest.data_snapshot.as_of_date,
                   **{figure: manifest.metrics.get(figure) for figure in FIGURES[name]}}
            for name, manifest in found.items() if manifest is not None}


def task_seconds(run: DagRun) -> dict[str, float | None]:
    return {task.task_id: task.seconds for task in run.tasks}


def plot(days: list[dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [day["as_of"] for day in days]
    for name, (ndcg, recall) in FIGURES.items():
        axes[0].plot(labels, [day["models"].get(name, {}).get(ndcg) for day in days], marker="o",
                     label=f"{name} {ndcg}")
        axes[1].plot(labels, [day["models"].get(name, {}).get(recall) for day in days], marker="o",
                     label=f"{name} {recall}")
    axes[0].set_title("NDCG@20 of each day's published models")
    axes[1].set_title("Recall of each day's published models")
    for axis in axes:
        axis.set_xlabel("nightly run's as-of date")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Simulated days: replay through the API, then the nightly DAG "
                    "(bench/simulated_days.py)", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def simulate_day(settings: Settings, runs: AirflowRuns, truth: pd.DataFrame, day: date, next_day: date,
                 conf: dict[str, Any]) -> dict[str, Any]:
    archive = EventArchive.at(settings.event_archive_location)
    planned = replay_events(truth, day, next_day)
    summary = summarise(planned, day, next_day)
    replayer = Replayer(f"http://{settings.api_bind}", speed=0, headers=bearer_headers(settings))
    try:
        with console.status(f"{day}: posting {len(planned):,} events through the API ..."):
            replayer.post(planned, summary)
    finally:
        replayer.close()
    with console.status(f"{day}: waiting for the sidecar to archive them ..."):
        archived_s = wait_archived(archive, {event["event_id"] for event in planned})
    params = {"file_drop": False, "archive": settings.event_archive_location, **conf}
    with console.status(f"{day}: nightly DAG as of {next_day} through Airflow ..."):
        run = runs.follow(runs.trigger(DAG, next_day, params))
    if run.state != "success":
        failed = [task.task_id for task in run.tasks if task.state != "success"]
        raise SystemExit(f"the nightly run as of {next_day} ended {run.state} (tasks {failed}); logs under "
                         f"{settings.airflow_dir / 'logs'}")
    models = published(settings)
    stale = {name: model["as_of"] for name, model in models.items() if model["as_of"] != next_day.isoformat()}
    if stale:
        raise SystemExit(f"after the run as of {next_day} these models are of another date: {stale}")
    buyer = str(truth.loc[(utc_timestamps(truth["timestamp"]).dt.date == day), "user_id"].iloc[-1])
    served = smoke_test(settings, buyer, expect={name: model["version"] for name, model in models.items()})
    ingested = read_events(settings.retail_dir)
    return {"day": day.isoformat(), "as_of": next_day.isoformat(), "posted": summary.posted,
            "purchases": summary.purchases, "synthetic": summary.synthetic,
            "archived_s": round(archived_s, 1), "events_after_ingest": len(ingested),
            "run_s": round(run.seconds, 1), "tasks": task_seconds(run),
            "models": models, "served": {"user": buyer, "workers": served.workers,
                                         "scenes": [answer["scene"] for answer in served.answers]}}


def main(
    days: Annotated[int, typer.Option("--days", min=1, max=7, help="How many consecutive days.")] = 3,
    conf: Annotated[str, typer.Option(
        "--conf", help="More params of each nightly run, as a JSON object.")] = "{}",
    plot_path: Annotated[Path, typer.Option("--plot", help="Where the PNG of the figures goes.")
                         ] = DEFAULT_PLOT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON line at the end.")
                       ] = False,
) -> None:
    """Replay a day through the API, run the nightly DAG for the next day, check what is served; repeat."""
    extra = json_params(conf)
    folder = Path(tempfile.mkdtemp(prefix="finegrain-bench-days-"))
    settings = bench_settings(folder)
    drop_namespace(settings)
    source = get_settings().source_csv
    with console.status("reading the raw data (the shop's truth, replayed day by day) ..."):
        ingest(date.max, folder / "truth", sources=[source])
        truth = read_events(folder / "truth")
    simulated = trading_days(truth, days)
    ends = [*simulated[1:], simulated[-1] + timedelta(days=1)]
    with console.status(f"the shop's history: the raw file before {simulated[0]} ..."):
        ingest(simulated[0], settings.retail_dir, sources=[source])
    with KeyStore(settings) as keys:
        _, token, _ = keys.create("bench-simulated-days", [str(Scope.RECOMMEND), str(Scope.EVENTS)],
                                  rate_per_s=MAX_RATE_PER_S)  # the replay posts as fast as it can
    settings = settings.model_copy(update={"api_key": SecretStr(token)})
    os.environ["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"  # only the runs triggered here
    api, sidecar, airflow = ApiServer(settings), SidecarProcess(settings), LocalAirflow(settings)
    results = []
    try:
        with console.status("starting the API, the sidecar and Airflow ..."):
            api.start(ready=False)  # nothing is published yet: the first run publishes
            sidecar.start()
            airflow.up()
        with AirflowRuns(settings) as runs:
            runs.wait_for_dag(DAG)
            for day, next_day in zip(simulated, ends, strict=True):
                results.append(simulate_day(settings, runs, truth, day, next_day, extra))
                done = results[-1]
                console.print(f"[green]✓[/] {day}: posted {done['posted']:,}, nightly as of {next_day} in "
                              f"{done['run_s']:.0f} s, served", highlight=False)
    finally:
        airflow.down()
        sidecar.stop()
        api.stop()
    rows = []
    for result in results:
        figures = "; ".join(
            f"{name} " + ", ".join(f"{k} {model[k]:.4f}" for k in FIGURES[name] if model.get(k) is not None)
            for name, model in sorted(result["models"].items()))
        rows.append((result["day"], result["as_of"], f"{result['posted']:,}", f"{result['purchases']:,}",
                     f"{result['events_after_ingest']:,}", result["run_s"], figures,
                     f"{result['served']['workers']} workers"))
    console.print(summary_table(f"{days} simulated days (models trained as of each run's date, published, "
                                "served)", rows, ["replayed day", "nightly as of", "events posted",
                                                  "purchases", "canonical events after", "run s",
                                                  "published models (backtest)", "API"]))
    plot(results, plot_path)
    console.print(f"plot: {plot_path}", highlight=False)
    if as_json:
        print_json_line({"days": results, "params": extra, "cpus": os.cpu_count()})


if __name__ == "__main__":
    typer.run(main)
