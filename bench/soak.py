"""Soak test of the recommendation API: a bounded run of at least --requests requests (200,000) under
wrk with the ranker swapped every --swap-every seconds (60), sampling each gunicorn worker's resident
memory (RSS) and open file descriptors; reports their growth per 10,000 requests, every failure by
kind, and a PNG of RSS and descriptors over requests.

Like bench/serving_load.py it needs the demo's datasets and published ranker (`bin/demo`), starts its
own gunicorn on a free port with its own metrics folder, and uses its own API key (revoked at the end).
A swap is a publication through ZooKeeper as `finegrain models publish` makes one: the ranker's znode
alternates between the published version and a copy of its bytes registered as a new version, so each
swap is a full load in every worker (GridFS fetch, sha256 check, build, warm-up, swap); the published
version is published again at the end.
Target (issue 13): no failure; RSS and descriptors flat.

Usage: .venv/bin/python bench/soak.py [--requests 200000] [--swap-every 60] [--connections 8] [--json]
"""

from __future__ import annotations

import re
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from serving_load import (  # bench/serving_load.py, beside this script
    RANKER,
    bench_key,
    check_ready,
    free_port,
    revoke_key,
    run_wrk,
    user_file,
    wait_rollout,
)

from finegrain.console import console, print_json_line, summary_table
from finegrain.settings import PROJECT_ROOT, get_settings
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from serving.process import ApiServer

DEFAULT_OUT = PROJECT_ROOT / "var" / "reports" / "soak"
_REQUESTS = re.compile(r'^finegrain_requests_total\{route="/v1/recommendations",status="\d+"\} ([0-9.e+-]+)$')


def served_requests(url: str, headers: dict[str, str]) -> int:
    """Recommendation requests the workers have answered (the API's own counter, every status)."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return int(sum(float(m.group(1)) for line in text.splitlines() if (m := _REQUESTS.match(line))))


def worker_pids(master: int) -> list[int]:
    return sorted(int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Sampler(threading.Thread):
    """Every `every_s`: the requests served so far and each worker's RSS and open descriptors."""

    def __init__(self, server: ApiServer, headers: dict[str, str], every_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        assert server.process is not None
        self.master = server.process.pid
        self.url = server.url
        self.headers = headers
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def sample(self) -> None:
        requests = served_requests(self.url, self.headers)
        workers = {}
        for pid in worker_pids(self.master):
            try:
                workers[pid] = (rss_mb(pid), open_fds(pid))
            except OSError:  # exited between the listing and the read
                continue
        self.samples.append({"t": time.monotonic(), "requests": requests, "workers": workers})

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            self.sample()


class Swapper(threading.Thread):
    """Every `every_s`, publish the other of the two versions."""

    def __init__(self, versions: tuple[str, str], every_s: float) -> None:
        super().__init__(name="soak-swapper", daemon=True)
        self.versions = versions
        self.every_s = every_s
        self.swaps: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        settings = get_settings()
        while not self.stopping.wait(self.every_s):
            version = self.versions[len(self.swaps) % 2]
            try:
                with ModelPublisher(settings) as publisher:
                    result = publisher.publish(RANKER, version, force=True)
                if not result.published:
                    self.errors.append(f"{version}: not published ({result})")
            except Exception as exc:  # reported at the end: a failed swap is a finding, not a crash
                self.errors.append(f"{version}: {type(exc).__name__}: {exc}")
            self.swaps.append((time.monotonic(), version))


def growth_per_10k(samples: list[dict[str, Any]], pid: int, index: int, skip: int) -> float:
    """Least-squares slope of RSS (index 0) or descriptors (1) over requests, per 10,000 requests,
    for one worker, after the first `skip` requests (start-up and first loads)."""
    points = [(s["requests"], s["workers"][pid][index]) for s in samples
              if pid in s["workers"] and s["requests"] >= skip]
    if len(points) < 3:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 10_000)


def plot(samples: list[dict[str, Any]], swaps: list[tuple[float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    pids = sorted({pid for s in samples for pid in s["workers"]})
    for pid in pids:
        points = [(s["requests"], *s["workers"][pid]) for s in samples if pid in s["workers"]]
        x, rss, fds = zip(*points, strict=True)
        left.plot(x, rss, label=f"worker {pid}")
        right.plot(x, fds, label=f"worker {pid}")
    times = np.array([s["t"] for s in samples])
    counts = np.array([s["requests"] for s in samples])
    for at, _ in swaps:
        for axis in (left, right):
            axis.axvline(float(np.interp(at, times, counts)), color="grey", alpha=0.3, linewidth=0.8)
    left.set(xlabel="requests served", ylabel="RSS (MB)", title="Worker memory (grey: a model swap)")
    right.set(xlabel="requests served", ylabel="open file descriptors", title="Worker descriptors")
    right.set_ylim(bottom=0)
    left.legend()
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    requests: Annotated[int, typer.Option(help="Run until at least this many requests are served.",
                                          min=1000)] = 200_000,
    swap_every: Annotated[float, typer.Option(help="Seconds between two ranker publications.", min=5)] = 60.0,
    connections: Annotated[int, typer.Option(help="Concurrent HTTP connections.")] = 8,
    segment: Annotated[int, typer.Option(help="Seconds of each wrk run (the load runs in segments).")] = 30,
    sample_every: Annotated[float, typer.Option(help="Seconds between two samples of the workers.")] = 5.0,
    workers: Annotated[int, typer.Option(help="gunicorn worker processes.")] = 2,
    out: Annotated[Path, typer.Option(help="Folder of the PNG.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON line.")] = False,
) -> None:
    base = get_settings()
    check_ready(base)
    settings = base.model_copy(update={"api_bind": f"127.0.0.1:{free_port()}", "api_workers": workers,
                                       "api_threads": 1})
    with ModelPublisher(settings) as publisher:
        original, _ = publisher.published(RANKER)
    assert original is not None
    registry = ModelRegistry(settings)
    copy = registry.register(RANKER, registry.fetch_artifact(original), features=list(original.features),
                             metrics=dict(original.metrics),
                             params={**dict(original.params), "note": "bench/soak.py swap copy"},
                             data_snapshot=original.data_snapshot, framework=original.framework)
    failures: Counter[str] = Counter()
    segments: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fg-soak-") as tmp:
        folder = Path(tmp)
        users, _ = user_file(settings, folder)
        server = ApiServer(settings, log_path=folder / "gunicorn.log", metrics_dir=folder / "prometheus")
        token = bench_key(settings)
        headers = {"Authorization": f"Bearer {token}"}
        with console.status(f"starting gunicorn ({workers} workers)"):
            server.start()
        sampler = Sampler(server, headers, sample_every)
        swapper = Swapper((copy.version, original.version), swap_every)
        try:
            run_wrk(server.url, users, token, duration_s=5, connections=connections)  # warm-up
            sampler.sample()
            started = time.monotonic()
            sampler.start()
            swapper.start()
            served = 0
            while served < requests:
                with console.status(f"soak: {served:,} of {requests:,} requests, {len(swapper.swaps)} swaps"):
                    figures = run_wrk(server.url, users, token, duration_s=segment, connections=connections)
                failures.update(figures["failures"])
                segments.append({k: figures[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "failed")})
                served += figures["requests"]
                console.print(f"{served:,} requests ({figures['rps']:.0f}/s, p99 {figures['p99_ms']:.0f} ms, "
                              f"{figures['failed']} failed), {len(swapper.swaps)} swaps")
            elapsed = time.monotonic() - started
            swapper.stopping.set()
            swapper.join()
            sampler.stopping.set()
            sampler.join()
            sampler.sample()
            with ModelPublisher(settings) as publisher:
                publisher.publish(RANKER, original.version, force=True)
            rollout_s = wait_rollout(settings, original.version)
        finally:
            server.stop()
            revoke_key(settings, token)
    samples = sampler.samples
    pids = sorted(samples[0]["workers"])
    replaced = sorted(set().union(*(s["workers"] for s in samples)) - set(pids))
    skip = max(requests // 10, samples[1]["requests"] if len(samples) > 1 else 0)
    per_worker = []
    for pid in pids:
        first, last = samples[0]["workers"].get(pid), samples[-1]["workers"].get(pid)
        per_worker.append({
            "pid": pid,
            "rss_mb_start": round(first[0], 1) if first else None,
            "rss_mb_end": round(last[0], 1) if last else None,
            "rss_mb_per_10k": round(growth_per_10k(samples, pid, 0, skip), 3),
            "fds_start": first[1] if first else None, "fds_end": last[1] if last else None,
            "fds_per_10k": round(growth_per_10k(samples, pid, 1, skip), 3)})
    png = out / "soak.png"
    plot(samples, swapper.swaps, png)
    total = sum(s["requests"] for s in segments)
    figures_out = {
        "machine": f"{socket.gethostname()}, 2 cores", "workers": workers, "connections": connections,
        "requests": total, "seconds": round(elapsed, 1), "rps": round(total / elapsed, 1),
        "swaps": len(swapper.swaps), "swap_errors": swapper.errors, "swap_every_s": swap_every,
        "failed": sum(failures.values()), "failures": dict(failures), "workers_replaced": replaced,
        "p99_ms_worst_segment": max(s["p99_ms"] for s in segments),
        "final_rollout_s": round(rollout_s, 2), "per_worker": per_worker, "growth_from_requests": skip,
        "png": str(png),
    }
    console.print(summary_table(
        f"Soak: {total:,} requests in {elapsed / 60:.1f} min, {len(swapper.swaps)} ranker swaps",
        [(w["pid"], w["rss_mb_start"], w["rss_mb_end"], w["rss_mb_per_10k"], w["fds_start"], w["fds_end"],
          w["fds_per_10k"]) for w in per_worker],
        ["worker", "RSS MB start", "RSS MB end", "RSS MB / 10k req", "fds start", "fds end",
         "fds / 10k req"]))
    kinds = sorted(failures.items()) or [("none", 0)]
    console.print(summary_table("Failures by kind", kinds, ["kind", "count"]))
    console.print(f"swap errors: {swapper.errors or 'none'}; workers replaced: {replaced or 'none'}; "
                  f"plot: {png}")
    if as_json:
        print_json_line(figures_out)


if __name__ == "__main__":
    typer.run(main)
