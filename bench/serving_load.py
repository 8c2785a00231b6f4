"""Load test of the recommendation API under gunicorn with wrk, on the real data's datasets and the
published XGBoost ranker (about 1,000 candidates per request): latency p50/p99 and requests per
second, the cost of each stage, a model swap in the middle of a run (non-2xx answers, p99 against the
steady run), and the rule cache's hit rate over 10,000 requests from different users.

Needs the demo's datasets and published ranker (`bin/demo`); starts its own gunicorn on a free port
with its own metrics folder, so a running API is not disturbed, and creates its own API key (every
scope, a rate no run reaches), revoked when it ends; every request sends it, as a client would. The
swap re-registers the published ranker's bytes as a new version, publishes it, and rolls back
afterwards.
Targets (issue 5): p99 <= 25 ms and >= 300 requests/s on this 2-core machine; no failure and no p99
above 2x during the swap. Every failure is counted and listed by kind: wrk's socket errors (connect,
read, write), timeouts (5 s) and each non-2xx status.

Usage: .venv/bin/python bench/serving_load.py [--duration 20] [--connections 8] [--workers 2] [--json]
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer

from finegrain.apikeys import MAX_RATE_PER_S, KeyStore, Scope, parse_token
from finegrain.console import console, print_json_line, summary_table
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.storage.clients import redis_client, zookeeper_client
from finegrain.storage.workers import worker_states
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from serving.process import ApiServer
from serving.state import SnapshotError, dataset_versions

RANKER = "ranker_xgboost"
LUA = PROJECT_ROOT / "bench" / "lua" / "recommendations.lua"
DEFAULT_OUT = PROJECT_ROOT / "var" / "reports" / "serving"
STAGES = ("profile", "recall", "merge", "features", "rank")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_ready(settings: Settings) -> None:
    try:
        dataset_versions(redis_client(settings))
    except SnapshotError as exc:
        raise typer.BadParameter(f"{exc} (run bin/demo first)") from None
    with ModelPublisher(settings) as publisher:
        manifest, _ = publisher.published(RANKER)
    if manifest is None:
        raise typer.BadParameter(f"no {RANKER} is published: run bin/demo or `finegrain models train-ranker`")


def user_file(settings: Settings, folder: Path, seed: int = 0) -> tuple[Path, int]:
    """Every user of the data in a shuffled order (users first seen after the features' as-of date
    take the cold-start path, as new customers do), plus 5% never-seen ids."""
    users = pd.read_parquet(settings.events_path, columns=["user_id"])["user_id"]
    ids = users.astype(str).unique().tolist()
    ids += [f"new-customer-{i}" for i in range(len(ids) // 20)]
    random.Random(seed).shuffle(ids)
    path = folder / "users.txt"
    path.write_text("\n".join(ids) + "\n")
    return path, len(ids)


def bench_key(settings: Settings) -> str:
    """A key of every scope for this run (revoke it with `revoke_key` when done)."""
    with KeyStore(settings) as store:
        _, token, _ = store.create("bench-serving-load", list(Scope), rate_per_s=MAX_RATE_PER_S)
    return token


def revoke_key(settings: Settings, token: str) -> None:
    with KeyStore(settings) as store:
        store.revoke(parse_token(token)[0])


def run_wrk(url: str, users: Path, token: str, *, duration_s: int, connections: int, threads: int = 1
            ) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise typer.BadParameter("wrk is not installed (bin/setup installs it)")
    result = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s", "-s", str(LUA), url],
        env={"FG_USERS": str(users), "FG_N": "20", "FG_KEY": token, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
        check=True)
    return wrk_figures(result.stdout)


def wrk_figures(stdout: str) -> dict[str, Any]:
    """The FGJSON line of bench/lua/recommendations.lua, with the rate, p50/p99 and every failure by
    kind (`failures`: socket errors by wrk's kind, timeouts, each non-2xx status) and their total."""
    line = next(line for line in stdout.splitlines() if line.startswith("FGJSON "))
    figures: dict[str, Any] = json.loads(line.removeprefix("FGJSON "))
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["p50_ms"] = figures["percentiles_us"]["50"] / 1000
    figures["p99_ms"] = figures["percentiles_us"]["99"] / 1000
    kinds = {kind: count for kind, count in figures["socket_errors"].items() if count}
    kinds |= {f"HTTP {status}": count for status, count in sorted(figures["statuses"].items())}
    figures["failures"] = kinds
    figures["failed"] = sum(kinds.values())
    return figures


def failure_rows(runs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, int]]:
    """(run, kind, count) for every failure of every run; one row "none" for a run without any."""
    rows = []
    for name, figures in runs:
        rows += [(name, kind, count) for kind, count in figures["failures"].items()] or [(name, "none", 0)]
    return rows


_SAMPLE = re.compile(r'^finegrain_stage_seconds_(sum|count)\{stage="(\w+)"\} ([0-9.e+-]+)$')
_MERGED = re.compile(r'^finegrain_candidates_(sum|count) ([0-9.e+-]+)$')
_CHANNEL = re.compile(
    r'^finegrain_channel_(seconds_sum|seconds_count|candidates_sum)\{channel="(\w+)"\} ([0-9.e+-]+)$')


def scrape(url: str, headers: dict[str, str]) -> dict[tuple[str, str], float]:
    values: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=10).text.splitlines():
        merged = _MERGED.match(line)
        if merged:
            values[("merged", merged.group(1))] = float(merged.group(2))
        for pattern, prefix in ((_SAMPLE, "stage"), (_CHANNEL, "channel")):
            match = pattern.match(line)
            if match:
                kind, name, value = match.groups()
                values[(f"{prefix}:{kind}", name)] = float(value)
    return values


def stage_costs(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, Any]:
    def delta(key: tuple[str, str]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    stages = {}
    for stage in STAGES:
        count = delta(("stage:count", stage))
        if count:
            stages[stage] = round(1000 * delta(("stage:sum", stage)) / count, 3)
    channels = {}
    for (kind, name) in after:
        if kind == "channel:seconds_count" and delta((kind, name)):
            count = delta((kind, name))
            channels[name] = {"ms": round(1000 * delta(("channel:seconds_sum", name)) / count, 3),
                              "candidates": round(delta(("channel:candidates_sum", name)) / count, 1)}
    count = delta(("merged", "count"))
    merged = round(delta(("merged", "sum")) / count, 1) if count else 0.0
    return {"stages_ms": stages, "channels": channels, "candidates": merged}


BENCH_RULES = {
    "bench-favourite-category": {"where": {"all": [{"category_best_seller": "$user.top_category"},
                                                   {"price_band_max": "$user.price_band"}]},
                                 "order": "popularity", "limit": 100, "scenes": ["home"]},
    "bench-country-new": {"where": {"all": [{"country_best_seller": "$user.country"},
                                            {"not": {"term": "christmas"}}]},
                          "order": "popularity", "limit": 100, "scenes": ["home"]},
    "bench-top-term-cheap": {"where": {"all": [{"term": "$user.top_term"}, {"price_band_max": 3}]},
                             "order": "price_asc", "limit": 50, "scenes": ["home"]},
}
_ATOMS = re.compile(r'^finegrain_rule_atom_requests_total\{result="(hit|miss)"\} ([0-9.e+-]+)$')


def atom_counts(url: str, headers: dict[str, str]) -> dict[str, float]:
    counts = {"hit": 0.0, "miss": 0.0}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=10).text.splitlines():
        match = _ATOMS.match(line)
        if match:
            counts[match.group(1)] = float(match.group(2))
    return counts


def rule_hit_rate(settings: Settings, url: str, users: Path, headers: dict[str, str], requests: int = 10_000,
                  threads: int = 4) -> dict[str, Any]:
    """Hit rate of the shared atom cache over `requests` recommendations from different users, starting
    from an empty cache, with the bench rules active; the curve is read every 1,000 requests."""
    client = redis_client(settings)
    stale = list(client.scan_iter(match="fg:rule:*", count=1000))
    if stale:
        client.delete(*stale)
    ids = users.read_text().split()
    start = atom_counts(url, headers)
    curve: list[tuple[int, float]] = []
    done = 0
    lock = threading.Lock()

    def worker(offset: int) -> None:
        nonlocal done
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            for i in range(offset, requests, threads):
                http.get("/v1/recommendations", params={"user_id": ids[i % len(ids)], "n": 20})
                with lock:
                    done += 1
                    if done % 1000 == 0:
                        now = atom_counts(url, headers)
                        hits, misses = now["hit"] - start["hit"], now["miss"] - start["miss"]
                        curve.append((done, hits / max(hits + misses, 1)))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    end = atom_counts(url, headers)
    hits, misses = end["hit"] - start["hit"], end["miss"] - start["miss"]
    rate = hits / max(hits + misses, 1)
    return {"requests": requests, "atom_lookups": int(hits + misses), "hit_rate": round(rate, 4),
            "curve": [(n, round(rate, 4)) for n, rate in sorted(curve)],
            "atom_keys": sum(1 for _ in client.scan_iter(match="fg:rule:*", count=1000))}


def swap_during(settings: Settings, delay_s: float, done: dict[str, Any]) -> None:
    """Re-register the published ranker's bytes as a new version and publish it after `delay_s`."""
    registry = ModelRegistry(settings)
    with ModelPublisher(settings) as publisher:
        current, _ = publisher.published(RANKER)
        assert current is not None
        data = registry.fetch_artifact(current)
        copy = registry.register(RANKER, data, features=list(current.features), metrics=dict(current.metrics),
                                 params={**dict(current.params), "note": "bench/serving_load.py swap copy"},
                                 data_snapshot=current.data_snapshot, framework=current.framework)
        time.sleep(delay_s)
        done["published_at"] = time.monotonic()
        result = publisher.publish(RANKER, copy.version, force=True)
        done.update(version=copy.version, previous=current.version, published=result.published)


def wait_rollout(settings: Settings, version: str, timeout_s: float = 60) -> float:
    started = time.monotonic()
    zk = zookeeper_client(settings)
    try:
        while time.monotonic() - started < timeout_s:
            states = [s for s in worker_states(settings, zk) if s.get("models", {}).get(RANKER)]
            if states and all(s["models"][RANKER] == version for s in states):
                return time.monotonic() - started
            time.sleep(0.1)
    finally:
        zk.stop()
        zk.close()
    raise RuntimeError(f"workers did not all serve {version} within {timeout_s} s")


def plot(steady: dict[str, Any], swap: dict[str, Any] | None, costs: dict[str, Any], rules: dict[str, Any],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, third) = plt.subplots(1, 3, figsize=(17, 4.5))
    runs = [("steady", steady)] + ([("model swap mid-run", swap)] if swap is not None else [])
    for label, figures in runs:
        points = sorted((float(p), v / 1000) for p, v in figures["percentiles_us"].items())
        left.plot([p for p, _ in points], [v for _, v in points], marker="o", label=label)
    left.axhline(25, color="red", linestyle="--", label="p99 target 25 ms")
    left.set(xlabel="percentile", ylabel="latency (ms)", title="GET /v1/recommendations latency (wrk)")
    left.legend()
    stages = costs["stages_ms"]
    right.bar(list(stages), list(stages.values()), color="tab:blue")
    right.set(ylabel="mean ms per request", title="Cost of each stage (server side)")
    if rules["curve"]:
        third.plot([n for n, _ in rules["curve"]], [100 * rate for _, rate in rules["curve"]], marker="o")
    else:
        third.text(0.5, 0.5, "not measured (--quick)", ha="center", transform=third.transAxes)
    third.set(xlabel="requests from different users", ylabel="atom cache hit rate (%)", ylim=(0, 100),
              title="Rule recall: shared atom cache hit rate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    duration: Annotated[int, typer.Option(help="Seconds of each measured wrk run.")] = 20,
    connections: Annotated[int, typer.Option(help="Concurrent HTTP connections.")] = 8,
    workers: Annotated[int, typer.Option(help="gunicorn worker processes.")] = 2,
    threads: Annotated[int, typer.Option(help="Threads per worker (1: sync workers).")] = 1,
    quick: Annotated[bool, typer.Option(help="Only the steady run (no rule cache, no swap).")] = False,
    rules_active: Annotated[bool, typer.Option(
        "--rules/--no-rules", help="Keep the bench rules active during the latency runs.")] = True,
    out: Annotated[Path, typer.Option(help="Folder of the PNG.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON line.")] = False,
) -> None:
    base = get_settings()
    check_ready(base)
    settings = base.model_copy(update={"api_bind": f"127.0.0.1:{free_port()}", "api_workers": workers,
                                       "api_threads": threads})
    with tempfile.TemporaryDirectory(prefix="fg-bench-") as tmp:
        folder = Path(tmp)
        users, n_users = user_file(settings, folder)
        server = ApiServer(settings, log_path=folder / "gunicorn.log", metrics_dir=folder / "prometheus")
        token = bench_key(settings)
        headers = {"Authorization": f"Bearer {token}"}
        with console.status(f"starting gunicorn ({workers} workers)"):
            server.start()
        try:
            for name, rule in BENCH_RULES.items():
                httpx.put(f"{server.url}/v1/rules/{name}", json=rule, headers=headers,
                          timeout=10).raise_for_status()
            time.sleep(1.0)  # every worker reloads the rules on the znode change
            rules = {"requests": 0, "atom_lookups": 0, "hit_rate": 0.0, "curve": [], "atom_keys": 0}
            if not quick:
                with console.status("rule cache: 10,000 requests from different users, from an empty cache"):
                    rules = rule_hit_rate(settings, server.url, users, headers)
            if not rules_active:
                for name in BENCH_RULES:
                    httpx.delete(f"{server.url}/v1/rules/{name}", headers=headers, timeout=10)
                time.sleep(1.0)
            with console.status("warming up (5 s)"):
                run_wrk(server.url, users, token, duration_s=5, connections=connections)
            before = scrape(server.url, headers)
            with console.status(f"steady run: {duration} s, {connections} connections"):
                steady = run_wrk(server.url, users, token, duration_s=duration, connections=connections)
            costs = stage_costs(before, scrape(server.url, headers))
            swap, rollout_s = steady, 0.0
            if not quick:
                swap_info: dict[str, Any] = {}
                swapper = threading.Thread(target=swap_during, args=(settings, duration / 2, swap_info))
                with console.status(f"swap run: {duration} s, a new ranker version published half-way"):
                    swapper.start()
                    swap = run_wrk(server.url, users, token, duration_s=duration, connections=connections)
                    swapper.join()
                rollout_s = wait_rollout(settings, swap_info["version"])
                with ModelPublisher(settings) as publisher:
                    publisher.rollback(RANKER, force=True)
        finally:
            for name in BENCH_RULES:
                httpx.delete(f"{server.url}/v1/rules/{name}", headers=headers, timeout=10)
            server.stop()
            revoke_key(settings, token)
    png = out / ("latency-quick.png" if quick else "latency.png")
    plot(steady, None if quick else swap, costs, rules, png)
    figures = {
        "machine": f"{socket.gethostname()}, 2 cores", "workers": workers, "threads": threads,
        "rules_active": rules_active,
        "connections": connections,
        "users": n_users,
        "steady": {k: steady[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "failed", "failures")},
        "swap": {k: swap[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "failed", "failures")},
        "swap_p99_ratio": round(swap["p99_ms"] / steady["p99_ms"], 2),
        "rollout_seconds_after_run": round(rollout_s, 2),
        **costs, "rule_cache": rules, "png": str(png),
    }
    runs = [("steady", steady), ("model swap", swap)]
    rows = [(name, f"{run['requests']:,}", f"{run['rps']:.0f}", f"{run['p50_ms']:.1f}",
             f"{run['p99_ms']:.1f}", run["failed"]) for name, run in runs]
    columns = ["run", "requests", "req/s", "p50 ms", "p99 ms", "failures"]
    console.print(summary_table("GET /v1/recommendations under wrk", rows, columns))
    console.print(summary_table("Failures by kind (socket errors, timeouts, non-2xx)", failure_rows(runs),
                                ["run", "kind", "count"]))
    console.print(summary_table("Mean server-side cost per stage (ms)", costs["stages_ms"].items(),
                                ["stage", "ms"]))
    console.print(f"rule atom cache: hit rate {rules['hit_rate']:.1%} over {rules['requests']:,} requests "
                  f"({rules['atom_lookups']:,} atom lookups, {rules['atom_keys']:,} atoms cached); "
                  f"after each 1,000: {', '.join(f'{rate:.0%}' for _, rate in rules['curve'])}")
    console.print(f"latency plot: {png}")
    if as_json:
        print_json_line(figures)


if __name__ == "__main__":
    typer.run(main)
