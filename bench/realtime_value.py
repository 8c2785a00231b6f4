"""What the real-time profile is worth: the README protocol's last 30 days replayed basket by basket,
the API asked before each basket with and without the user's real-time profile.

1. A namespace of its own (Redis database `--redis-db`, flushed before and after; Mongo database and
   ZooKeeper root `finegrain_bench_value`), filled as of the README split S (the data's last 30 days,
   `finegrain.evaluation.protocol.readme_split`): the four offline jobs, an XGBoost ranker and the
   ALS embeddings trained as of S (`models.train_ranker`, `models.train_embeddings`: nothing of the
   window reaches them), published; the API under gunicorn on `--port` (`serving.process.ApiServer`).
2. The replay: the purchases of the protocol's users in [S, end), in time order, one basket (invoice) at
   a time. Before basket b of user u at time t, u's real-time profile is what the sidecar would hold
   after the user's purchases since S (the sidecar's own fold, `finegrain.features.realtime.fold`, with
   the item lookup the sidecar reads, `spark_jobs.stream.batch.ItemLookups`), written to Redis where
   the sidecar writes it; the API is asked for n=20 (scene `--scene`), then the profile is deleted and
   the API asked again. The datasets and models stay as of S all along: the profile is the only way
   the user's window behaviour reaches serving.
3. Per basket, both ways: hit (an item of b among the 20), and Recall@20 / NDCG@20 against everything
   u buys in [t, t + 30 days), the README protocol's targets (binary gains; targets outside the
   candidate items count in the denominator); means over baskets, over the baskets that have a
   profile (a user's first basket in the window has none: the two answers are the same), and over
   users' last baskets.

The purchases go into the profile directly instead of through Kafka and Spark: the fold is the function
the sidecar's micro-batches call, and waiting for the sidecar's freshness before each of thousands of
baskets would take hours.

Usage: .venv/bin/python bench/realtime_value.py [--redis-db 2] [--port 18480] [--scene home] [--json]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import matplotlib
import numpy as np
import pandas as pd
import typer

from finegrain.apikeys import MAX_RATE_PER_S, KeyStore
from finegrain.codecs import encode
from finegrain.console import console, print_json_line, summary_table
from finegrain.dates import as_of_ms, data_end
from finegrain.evaluation.protocol import TEST_DAYS, build_split, load_events, readme_split
from finegrain.features.history import epoch_ms
from finegrain.features.realtime import Action, RealtimeConfig, fold
from finegrain.schemas import EventType
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import RedisKeys
from finegrain.storage.namespace import drop_namespace
from models.train_embeddings import train_register_publish as train_embeddings
from models.train_ranker import train_register_publish as train_ranker
from serving.process import ApiServer
from spark_jobs import JOBS
from spark_jobs.runner import load_job, run_jobs
from spark_jobs.stream.batch import ItemLookups

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

DEFAULT_OUT = PROJECT_ROOT / "var" / "reports" / "realtime_value"
NAMESPACE = "finegrain_bench_value"
K = 20
WAYS = ("with profile", "without")


@dataclass
class Basket:
    user_id: str
    invoice: str
    at_ms: int
    items: frozenset[str]
    future: frozenset[str]  # everything the user buys in [at, at + 30 days)


@dataclass
class Scores:
    hits: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    ndcg: list[float] = field(default_factory=list)

    def add(self, ranked: list[str], basket: Basket) -> None:
        self.hits.append(float(any(item in basket.items for item in ranked)))
        gains = np.array([item in basket.future for item in ranked], dtype=float)
        self.recall.append(gains.sum() / len(basket.future))
        discounts = 1 / np.log2(np.arange(2, K + 2))
        ideal = discounts[:min(len(basket.future), K)].sum()
        self.ndcg.append(float((gains * discounts[:len(gains)]).sum() / ideal))

    def means(self, mask: np.ndarray | None = None) -> dict[str, float]:
        def mean(values: list[float]) -> float:
            array = np.asarray(values)
            return round(float(array[mask].mean() if mask is not None else array.mean()), 4)

        return {"next basket HR@20": mean(self.hits), "Recall@20 (30 d)": mean(self.recall),
                "NDCG@20 (30 d)": mean(self.ndcg)}


def baskets_of(events: pd.DataFrame, split_ms: int, end_ms: int, users: set[str]) -> list[Basket]:
    """The protocol users' baskets in the window, in time order, with their 30-day futures."""
    times = epoch_ms(events["timestamp"])
    chosen = (times >= split_ms) & (times < end_ms) & events["user_id"].isin(users).to_numpy()
    window = events.loc[chosen, ["user_id", "invoice", "item_id"]].assign(ms=times[chosen])
    horizon = timedelta(days=TEST_DAYS) // timedelta(milliseconds=1)
    by_user = {user: frame for user, frame in window.groupby("user_id")}
    out = []
    for (user, invoice), frame in window.groupby(["user_id", "invoice"]):
        at = int(frame["ms"].min())
        mine = by_user[user]
        future = mine.loc[(mine["ms"] >= at) & (mine["ms"] < at + horizon), "item_id"]
        out.append(Basket(str(user), str(invoice), at, frozenset(frame["item_id"].astype(str)),
                          frozenset(future.astype(str))))
    return sorted(out, key=lambda b: (b.at_ms, b.user_id, b.invoice))


def prepare(settings: Settings, events_path: Path, say: Any) -> None:
    """Datasets and models as of the README split, published in the bench's namespace."""
    events = load_events(events_path)
    split = readme_split(events)
    say(f"offline jobs as of {split}")
    run_jobs([load_job(name) for name in JOBS], split, events_path, settings=settings)
    say(f"XGBoost ranker as of {split}")
    ranker = train_ranker(settings, events_path, kind="xgboost", as_of=split, objective="binary:logistic",
                          say=lambda line: say(f"  {line}"))
    assert ranker.publish is not None and ranker.publish.published, ranker.publish
    say(f"ALS embeddings as of {split}")
    embeddings = train_embeddings(settings, events_path, as_of=split, say=lambda line: say(f"  {line}"))
    assert embeddings.publish is not None and embeddings.publish.published, embeddings.publish


def ask(client: httpx.Client, user_id: str, scene: str) -> list[str]:
    response = client.get("/v1/recommendations", params={"user_id": user_id, "n": K, "scene": scene})
    response.raise_for_status()
    return [item["item_id"] for item in response.json()["items"]]


def replay(settings: Settings, url: str, token: str, baskets: list[Basket], scene: str, say: Any
           ) -> tuple[dict[str, Scores], np.ndarray, np.ndarray]:
    """Both answers before every basket; (scores per way, has-a-profile mask, last-basket mask)."""
    store = redis_client(settings)
    items = ItemLookups(settings).current(store)
    config = RealtimeConfig()
    profiles: dict[str, Any] = {}
    scores = {way: Scores() for way in WAYS}
    has_profile, last = [], []
    remaining = pd.Series([b.user_id for b in baskets]).value_counts().to_dict()
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for number, basket in enumerate(baskets, 1):
            key = RedisKeys.realtime_profile(basket.user_id)
            profile = profiles.get(basket.user_id)
            has_profile.append(profile is not None)
            remaining[basket.user_id] -= 1
            last.append(remaining[basket.user_id] == 0)
            if profile is not None:
                store.set(key, encode(profile), ex=config.ttl_s)
            scores["with profile"].add(ask(client, basket.user_id, scene), basket)
            store.delete(key)
            scores["without"].add(ask(client, basket.user_id, scene), basket)
            actions = [Action(item, int(EventType.PURCHASE), basket.at_ms, session_id=basket.invoice)
                       for item in sorted(basket.items)]
            profiles[basket.user_id] = fold(profile, basket.user_id, actions, items, config)
            if number % 500 == 0:
                say(f"  {number:,} / {len(baskets):,} baskets ({time.perf_counter() - started:.0f} s)")
    return scores, np.asarray(has_profile), np.asarray(last)


def plot(table: dict[str, dict[str, float]], out: Path) -> Path:
    metrics = list(next(iter(table.values())))
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(table)
    for offset, (name, figures) in enumerate(table.items()):
        axis.bar(np.arange(len(metrics)) + offset * width, [figures[m] for m in metrics], width, label=name)
    axis.set_xticks(np.arange(len(metrics)) + width * (len(table) - 1) / 2, metrics)
    axis.set_title("Served answers before each basket of the last 30 days, with and without the profile")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "realtime_value.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(
    redis_db: Annotated[int, typer.Option(help="Redis database of the run (flushed before and after).")] = 2,
    port: Annotated[int, typer.Option(help="Port of the bench's API.")] = 18480,
    scene: Annotated[str, typer.Option(help="Scene asked (home: the XGBoost ranker).")] = "home",
    out: Annotated[Path, typer.Option(help="Folder for the figures and the plot.")] = DEFAULT_OUT,
    json: Annotated[bool, typer.Option("--json", help="Also print the figures as one JSON line.")] = False,
) -> None:
    base = get_settings()
    host, redis_port = base.redis_address()
    settings = base.model_copy(update={
        "redis_url": f"redis://{host}:{redis_port}/{redis_db}", "mongo_database": NAMESPACE,
        "zookeeper_root": f"/{NAMESPACE}", "api_bind": f"127.0.0.1:{port}",
        "var_dir": base.var_dir / "bench" / "realtime_value"})
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    say = console.print
    events_path = base.events_path
    redis_client(settings).flushdb()
    drop_namespace(settings)
    started = time.perf_counter()
    server = ApiServer(settings)
    try:
        prepare(settings, events_path, say)
        events = load_events(events_path)
        split = readme_split(events)
        users = set(build_split(events, split).users.astype(str))
        baskets = baskets_of(events, as_of_ms(split), as_of_ms(data_end(events)), users)
        say(f"{len(baskets):,} baskets of {len(users):,} protocol users from {split}; starting the API")
        with KeyStore(settings) as store:  # in the run's own database, dropped with it
            _, token, _ = store.create("bench-realtime-value", ["recommend"], rate_per_s=MAX_RATE_PER_S)
        server.start()
        scores, has_profile, last = replay(settings, server.url, token, baskets, scene, say)
    finally:
        server.stop()
        redis_client(settings).flushdb()
        drop_namespace(settings)
    table = {}
    for way in WAYS:
        table[f"{way}: every basket ({len(has_profile):,})"] = scores[way].means()
    for way in WAYS:
        table[f"{way}: with a profile ({int(has_profile.sum()):,})"] = scores[way].means(has_profile)
    for way in WAYS:
        table[f"{way}: users' last basket ({int(last.sum()):,})"] = scores[way].means(last)
    metrics = list(next(iter(table.values())))
    rows = [(name, *(f"{v:.4f}" for v in figures.values())) for name, figures in table.items()]
    console.print(summary_table(f"Real-time profile value, scene {scene}, README users, window from {split}",
                                rows, ["answers", *metrics]))
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"plot: {plot(table, out)} ({time.perf_counter() - started:.0f} s in all)")
    if json:
        print_json_line({"split": split.isoformat(), "scene": scene, "baskets": len(baskets), "table": table})


if __name__ == "__main__":
    typer.run(main)
