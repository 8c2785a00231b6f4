"""Wall time and peak memory of the offline build (all Spark jobs) on the real data and on N x synthetic data.

Each build runs as its own `finegrain jobs run` process (so the Spark session start, about 10 s, is
counted once, as in production), against the local stack in a separate namespace (Redis database 2,
Mongo database `finegrain_bench`, ZooKeeper root `/finegrain_bench`) so the demo's data is untouched.
Peak memory is the largest sum of RSS over the process tree (Python driver + Spark JVM), sampled every
0.2 s. Targets: the real-data build under 180 s; the N x build under 1.2 N times the real-data build.

Usage: .venv/bin/python bench/offline_build.py [--scale 10] [--as-of 2010-12-10] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from finegrain.console import console, print_json_line, summary_table
from finegrain.data.layout import EVENTS_FILE
from finegrain.settings import get_settings

BENCH_ENV = {
    "FINEGRAIN_MONGO_DATABASE": "finegrain_bench",
    "FINEGRAIN_ZOOKEEPER_ROOT": "/finegrain_bench",
}


def _tree_rss_bytes(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed_build(events: Path, as_of: str) -> dict[str, Any]:
    settings = get_settings()
    host, port = settings.redis_address()
    env = {**os.environ, **BENCH_ENV, "FINEGRAIN_REDIS_URL": f"redis://{host}:{port}/2"}
    command = [
        sys.executable,
        "-m",
        "cli",
        "jobs",
        "run",
        "--as-of",
        as_of,
        "--events",
        str(events),
        "--json",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"the build on {events} failed (exit {process.returncode}):\n{stdout[-2000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "jobs_s": {name: job["seconds"] for name, job in figures["jobs"].items()},
        "rows_in": max(job["rows_in"] for job in figures["jobs"].values()),
    }


def ensure_synthetic(scale: int) -> Path:
    settings = get_settings()
    folder = settings.data_dir / f"synthetic-x{scale}"
    if not (folder / EVENTS_FILE).exists():
        with console.status(f"generating {scale}x synthetic data ..."):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "data",
                    "synth",
                    "--scale",
                    str(scale),
                    "--out",
                    str(folder),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return folder / EVENTS_FILE


def main(
    scale: Annotated[int, typer.Option(help="Synthetic scale factor to compare with the real data.")] = 10,
    as_of: Annotated[
        str, typer.Option("--as-of", help="As-of date of both builds (YYYY-MM-DD).")
    ] = "2010-12-10",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as one JSON line at the end.")
    ] = False,
) -> None:
    """Time the whole offline build on the real data and on `scale` x synthetic data."""
    settings = get_settings()
    real_events = settings.events_path
    if not real_events.exists():
        subprocess.run(
            [sys.executable, "-m", "cli", "data", "load"], check=True, stdout=subprocess.DEVNULL
        )
    synthetic_events = ensure_synthetic(scale)
    results = {}
    for label, events in (("real", real_events), (f"synthetic x{scale}", synthetic_events)):
        with console.status(f"building on the {label} data ..."):
            results[label] = timed_build(events, as_of)
    real, big = results["real"], results[f"synthetic x{scale}"]
    job_names = list(real["jobs_s"])
    rows = [
        (name, real["jobs_s"][name], big["jobs_s"][name], big["jobs_s"][name] / real["jobs_s"][name])
        for name in job_names
    ]
    rows.append(
        ("whole build (incl. Spark start)", real["wall_s"], big["wall_s"], big["wall_s"] / real["wall_s"])
    )
    rows.append(
        ("peak RSS, MB", real["peak_rss_mb"], big["peak_rss_mb"], big["peak_rss_mb"] / real["peak_rss_mb"])
    )
    console.print(
        summary_table(
            f"Offline build as of {as_of} (targets: real < 180 s; x{scale} < {1.2 * scale:g}x real)",
            rows,
            ["", f"real ({real['rows_in']:,} rows) s", f"x{scale} ({big['rows_in']:,} rows) s", "ratio"],
        )
    )
    if as_json:
        print_json_line(
            {
                "as_of": as_of,
                "scale": scale,
                "real": real,
                "synthetic": big,
                "time_ratio": big["wall_s"] / real["wall_s"],
            }
        )


if __name__ == "__main__":
    typer.run(main)
