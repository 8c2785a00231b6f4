"""`finegrain evaluate all`: every recall channel alone, their merge and the rankers, on the data set
README's protocol.

Every channel (`models.evaluate_channels`) is read to depth 1,000 for every evaluated user, the lists
are merged per user with `finegrain.recall.merge` exactly as serving calls it, and the rankers of
`models.evaluate_rankers` are trained and scored on the same split; the report
(`finegrain.evaluation.report`) has one table, Recall@K curves and two PNG plots. The datasets read
are built as of the split date by the caller (`spark_jobs.ensure`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finegrain.console import Step, quiet
from finegrain.dates import data_end
from finegrain.errors import DataError
from finegrain.evaluation.protocol import (
    DEFAULT_KS,
    TEST_DAYS,
    EvaluationSplit,
    build_split,
    load_events,
    reference_rows,
)
from finegrain.evaluation.report import CURVE_KS, MERGE_KS, FullEvaluation, MergeFigures
from finegrain.recall.item_to_item import ItemToItemConfig, NeighbourMatrix, read_neighbour_lists
from finegrain.recall.merge import CHANNELS, merge
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.training.plan import TrainingPlan
from models.evaluate_channels import (
    SIMILARITY_ALGORITHMS,
    ChannelRanking,
    content_channel,
    embedding_channel,
    item_to_item_scored,
    popular_channel,
)

RECALL_DEPTH = 1000
# Per-channel quotas of the merged recall (1,000 candidates), chosen on the validation split 2010-10-11
# (datasets built as of it; 1,135 users), never on the test window. Merged Recall@500 / @1000 there:
# i2i 400, ALS 400, content 100, popular 100: 0.665 / 0.783 (chosen); 500/300/100/100: 0.664 / 0.784;
# 400/250/200/150: 0.654 / 0.782; 250 each: 0.641 / 0.779; the same 400/250/200/150 with cosine lists
# instead of Swing: 0.645 / 0.765. At 1,000 the fill evens the quotas out; they matter at 300-700.
DEFAULT_QUOTAS: dict[str, int] = {"item_to_item": 400, "embedding": 400, "content": 100, "popular": 100}
RANKERS = ("xgboost", "tf")


def _curve(split: EvaluationSplit, ranked: np.ndarray) -> dict[str, float]:
    ks = sorted({*DEFAULT_KS, *CURVE_KS})
    figures = split.evaluate(ranked, ks)
    return {name: value for name, value in figures.items()
            if name.startswith("Recall@") or int(name.split("@")[1]) in DEFAULT_KS}


def merge_channels(split: EvaluationSplit, lists: Mapping[str, ChannelRanking], quotas: Mapping[str, int],
                   total: int) -> tuple[np.ndarray, MergedStats]:
    """`finegrain.recall.merge.merge` per user, as serving calls it: candidate indices in merge order
    (users x total, -1 padded) and what each channel brought."""
    merged_rows = np.full((len(split.users), total), -1, dtype=np.int64)
    brought = np.zeros(len(CHANNELS))
    only = np.zeros(len(CHANNELS))
    sizes = np.zeros(len(split.users))
    merging = 0.0
    for row in range(len(split.users)):
        channels = {}
        for name, listing in lists.items():
            valid = listing.ranked[row] >= 0
            channels[name] = (split.items[listing.ranked[row][valid]], listing.scores[row][valid])
        started = time.perf_counter()
        merged = merge(channels, quotas, total)
        merging += time.perf_counter() - started
        index = split.item_index(merged.item_ids)
        merged_rows[row, :len(index)] = index
        sizes[row] = len(merged)
        bits = merged.channel_mask[:, None] & (np.uint32(1) << np.arange(len(CHANNELS), dtype=np.uint32))
        present = bits != 0
        brought += present.sum(axis=0)
        only += present[present.sum(axis=1) == 1].sum(axis=0)
    per_user_ms = merging / max(len(split.users), 1) * 1000
    users = max(len(split.users), 1)
    stats = MergedStats(
        brought={name: float(brought[i] / users) for i, name in enumerate(CHANNELS) if name in lists},
        only={name: float(only[i] / users) for i, name in enumerate(CHANNELS) if name in lists},
        mean_candidates=float(sizes.mean()) if len(sizes) else 0.0, per_user_ms=per_user_ms)
    return merged_rows, stats


@dataclass(frozen=True)
class MergedStats:
    brought: dict[str, float]
    only: dict[str, float]
    mean_candidates: float
    per_user_ms: float


def parse_quotas(text: str) -> dict[str, int]:
    """`item_to_item=400,embedding=250,...` -> {name: quota}; names from `finegrain.recall.merge.CHANNELS`."""
    quotas: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in CHANNELS or not value.strip().isdigit():
            raise DataError(f"bad quota {part!r}: expected CHANNEL=N, CHANNEL one of {', '.join(CHANNELS)}")
        quotas[name.strip()] = int(value)
    if not quotas:
        raise DataError("no quota given")
    return quotas


def tf_ranker_available() -> bool:
    """The TensorFlow ranker is optional: its module, TensorFlow and its evaluation function
    (`models.evaluate_rankers.evaluate_tf`) must all be there."""
    import importlib.util

    try:
        if any(importlib.util.find_spec(name) is None for name in ("models.tf_ranker", "tensorflow")):
            return False
        import models.evaluate_rankers as rankers_module
    except (ImportError, ValueError):
        return False
    return callable(getattr(rankers_module, "evaluate_tf", None))


def check_rankers(names: list[str]) -> None:
    unknown = [name for name in names if name not in RANKERS]
    if unknown:
        raise DataError(f"unknown ranker(s) {', '.join(unknown)}: choose from {', '.join(RANKERS)}")
    if "tf" in names and not tf_ranker_available():
        raise DataError("the TensorFlow ranker is not available here (models.tf_ranker, tensorflow or "
                        "models.evaluate_rankers.evaluate_tf missing): use --rankers xgboost")


def evaluate_rankers(events: pd.DataFrame, plan: TrainingPlan, names: list[str], say: Step,
                     max_users: int | None = None) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each ranker trained and evaluated by `models.evaluate_rankers` as the plan says, on one shared
    training set and the same test candidates: the final list's HR/Recall/NDCG and AUC / GAUC.
    `max_users`: train on at most that many users per cut-off (the test always has every user)."""
    from models import evaluate_rankers as rankers_module

    check_rankers(names)
    figures: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    say("building the rankers' training set and test candidates (shared by every ranker)")
    train, _ = rankers_module.training_rows(events, plan, max_users, lambda message: say(f"  {message}"))
    shared: dict[str, Any] = {"train": train, "test": rankers_module.TestRows.build(events, plan)}
    result: Any = None
    for name in names:
        if name == "xgboost":
            result = rankers_module.evaluate(events, plan, say=lambda line: say(f"  xgboost: {line}"),
                                             max_users=max_users, **shared)
            notes.append(f"XGBoost ranker: objective {result.objective} (chosen on the validation cut-off "
                         f"{plan.validation_cutoff}), seconds {result.seconds}.")
        else:
            result = rankers_module.evaluate_tf(events, plan, say=lambda line: say(f"  tf: {line}"),
                                                max_users=max_users, **shared)
            notes.append(f"TensorFlow ranker: seconds {result.seconds}.")
        figures.update({model: dict(values) for model, values in result.table.items()
                        if "alone" not in model})
    if result is not None:
        training = {key: round(value, 2) if isinstance(value, float) else value
                    for key, value in dict(result.training_set).items()}
        notes.append("Rankers' candidates: item-to-item top 200 + the 50 most popular per user (their own "
                     f"candidate set, not the merged recall's); training set {training}.")
    return figures, notes


def check_dates(events: pd.DataFrame, as_of: date, test_days: int, rankers: Sequence[str]
                ) -> TrainingPlan | None:
    """Refuse a split whose test window runs past the data, or (with rankers) without the history the
    rankers' plan needs, before anything is built; the rankers' plan."""
    end = data_end(events)
    if as_of + timedelta(days=test_days) > end:
        raise DataError(f"the {test_days}-day test window from {as_of} runs past the data's end "
                        f"({end - timedelta(days=1)}): pick an --as-of by {end - timedelta(days=test_days)}")
    return TrainingPlan.for_events(events, as_of, test_days) if rankers else None


def check_options(rankers: Sequence[str], merge_item_to_item: str) -> None:
    """Refuse unknown rankers or similarity lists before anything is built."""
    check_rankers(list(rankers))
    if merge_item_to_item not in SIMILARITY_ALGORITHMS:
        raise DataError(f"unknown similarity algorithm {merge_item_to_item!r}: one of "
                        f"{', '.join(SIMILARITY_ALGORITHMS)}")


def evaluate_all(settings: Settings, as_of: date, events_path: Path, versions: Mapping[str, str], *,
                 step: Step = quiet, rebuilt: Sequence[str] = (), rankers: list[str] | None = None,
                 quotas: Mapping[str, int] | None = None, total: int = RECALL_DEPTH,
                 merge_item_to_item: str = "swing", test_days: int = TEST_DAYS,
                 max_users: int | None = None) -> FullEvaluation:
    """Every recall channel alone to depth `total`, their merge, and each ranker of `rankers`, from
    the popularity, similarity and index `versions` built as of `as_of`
    (`spark_jobs.ensure.ensure_datasets`); `rebuilt` (the jobs run first) is reported."""
    started = time.perf_counter()
    say = step
    quotas = dict(quotas or DEFAULT_QUOTAS)
    check_options(rankers or [], merge_item_to_item)
    seconds: dict[str, float] = {}
    lap = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        seconds[name] = round(now - lap, 2)
        lap = now

    say(f"reading events from {events_path}")
    events = load_events(events_path)
    plan = check_dates(events, as_of, test_days, rankers or [])
    split = build_split(events, as_of, test_days=test_days)
    tick("split")
    lists: dict[str, ChannelRanking] = {}
    say("scoring MostPop")
    lists["popular"] = popular_channel(settings, versions["popularity"], split, total)
    say("scoring the content channel (profiles and postings)")
    lists["content"] = content_channel(settings, versions["index"], split, events, total)
    tick("popular_and_content")
    client = redis_client(settings)
    config = ItemToItemConfig()
    for algorithm in SIMILARITY_ALGORITHMS:
        say(f"scoring item-to-item ({algorithm})")
        lists_read = read_neighbour_lists(client, versions["similarity"], algorithm, list(split.items))
        if not lists_read:
            raise DataError(f"no {algorithm} lists under similarity version {versions['similarity']}")
        neighbours = NeighbourMatrix.from_lists(lists_read, split.items)
        ranked, scores = item_to_item_scored(neighbours, split, total, config)
        lists[f"item_to_item:{algorithm}"] = ChannelRanking(ranked, scores)
    tick("item_to_item")
    say("training ALS embeddings and searching them")
    lists["embedding"], train_seconds = embedding_channel(events, split, total)
    tick("embedding")
    channels = {name: _curve(split, listing.ranked) for name, listing in lists.items()}
    tick("channel_metrics")

    say(f"merging the channels per user (quotas {quotas}, {total:,} candidates)")
    merge_inputs = {name: lists[name] for name in ("content", "embedding", "popular")}
    merge_inputs["item_to_item"] = lists[f"item_to_item:{merge_item_to_item}"]
    merged, stats = merge_channels(split, merge_inputs, quotas, total)
    merged_figures = {**_curve(split, merged), **{k: v for k, v in split.evaluate(merged, MERGE_KS).items()
                                                  if k.startswith("Recall")}}
    at_quota = {name: split.evaluate(merge_inputs[name].ranked, (quota,))[f"Recall@{quota}"]
                for name, quota in quotas.items() if name in merge_inputs and quota > 0}
    tick("merge")
    merge_figures = MergeFigures(quotas=quotas, total=total, item_to_item=merge_item_to_item,
                                 figures=merged_figures, channel_recall_at_quota=at_quota,
                                 mean_candidates=stats.mean_candidates, brought_by=stats.brought,
                                 only_by=stats.only, seconds_per_user_ms=round(stats.per_user_ms, 3))
    notes = [f"ALS trained in {train_seconds:.1f} s on the purchases before {as_of} (models.embeddings).",
             "Content profiles: finegrain.features.user on the lines before the split; postings: the index "
             f"version {versions['index']} in Redis."]
    ranker_figures: dict[str, dict[str, float]] = {}
    if rankers:
        assert plan is not None  # check_dates made it for the rankers
        say(f"training and evaluating the rankers: {', '.join(rankers)} ({plan.describe()})")
        ranker_figures, ranker_notes = evaluate_rankers(events, plan, rankers, say, max_users)
        if max_users is not None:
            ranker_notes.append(f"Rankers trained on at most {max_users:,} users per cut-off (--max-users).")
        notes += ranker_notes
        tick("rankers")
    else:
        notes.append("rankers skipped (--skip-rankers)")
    seconds["total"] = round(time.perf_counter() - started, 2)
    return FullEvaluation(as_of=as_of, test_days=test_days, events_path=events_path, users=len(split.users),
                          reference=reference_rows(events, as_of) if test_days == TEST_DAYS else {},
                          versions=dict(versions), rebuilt=list(rebuilt), channels=channels,
                          merge=merge_figures, rankers=ranker_figures, notes=notes, seconds=seconds)
