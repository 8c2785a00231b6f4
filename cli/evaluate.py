"""`finegrain evaluate channels` and `finegrain evaluate all`: the recall channels, their merge and the
rankers on the data set README's offline protocol.

It evaluates what serving would use: the MostPop list is the popularity job's `global:all@all` list
and the item-to-item channel scores users with the similarity job's lists, both read from Redis for
a version built as of the split date (the jobs are run first when there is none, or with --rebuild).
Every figure sits next to the README's reference rows; the table is also written as Markdown with a
bar plot into a report folder.

`evaluate all` adds the content channel (`finegrain.recall.content` over the index job's postings in
Redis, with the user profiles of `finegrain.features.user` as of the split), the ALS embedding channel
(`models.embeddings`, trained on the train window), every channel read to depth 1,000, their merge
per user (`finegrain.recall.merge`, as serving calls it) and the rankers of `models.evaluate_rankers`;
the report (`finegrain.evaluation.report`) has one table, Recall@K curves and two PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import typer

from finegrain.console import Step, console, fail, print_json_line, step, summary_table
from finegrain.dates import parse_as_of, rows_before
from finegrain.errors import DataError, FinegrainError
from finegrain.evaluation.protocol import (
    DEFAULT_KS,
    REFERENCE,
    REFERENCE_NOTE,
    SPLIT_DATE,
    EvaluationSplit,
    build_split,
    load_events,
)
from finegrain.evaluation.report import (
    CURVE_KS,
    MERGE_KS,
    RANKER_METRICS,
    FullEvaluation,
    MergeFigures,
    fmt,
    label,
    summary_rows,
)
from finegrain.evaluation.report import write_report as write_full_report
from finegrain.recall.content import ContentConfig, RedisPostings, wanted_postings
from finegrain.recall.content import recommend as recommend_content
from finegrain.recall.item_to_item import (
    ItemToItemConfig,
    NeighbourMatrix,
    read_neighbour_lists,
    score_users,
    seed_matrix,
)
from finegrain.recall.merge import CHANNELS, merge
from finegrain.settings import Settings, get_settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import read_list
from finegrain.storage.redis_versions import RedisVersions
from spark_jobs.base import JobError, JobResult
from spark_jobs.runner import RESULT_COLUMNS, load_job, result_row, run_jobs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

app = typer.Typer(help="Offline evaluation of the recall channels on the data set README's protocol.")

VARIANTS = ("standard", "explore")
METRICS = tuple(f"{name}@{k}" for k in DEFAULT_KS for name in ("HR", "Recall", "NDCG"))
MOST_POPULAR_LIST = ("global", "all@all")
SIMILARITY_ALGORITHMS = ("cosine", "swing")
# Dataset -> the job of spark_jobs.JOBS that builds it.
DATASET_JOBS = {Dataset.POPULARITY: "popularity", Dataset.SIMILARITY: "item_similarity"}

# Narrow terminals: the table keeps its figures readable with short channel names.
SHORT_LABELS = {f"item_to_item:{algorithm}": f"i2i {algorithm}" for algorithm in SIMILARITY_ALGORITHMS}


@dataclass
class ChannelEvaluation:
    as_of: date
    events_path: Path
    versions: dict[str, str]
    rebuilt: list[JobResult]
    users: dict[str, int]
    # variant -> channel -> metric -> value
    figures: dict[str, dict[str, dict[str, float]]]
    seconds: float = 0.0
    short_lists: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def reference(self) -> dict[str, dict[str, dict[str, float]]]:
        """The README's rows apply to its split only."""
        return REFERENCE if self.as_of == SPLIT_DATE else {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "events": str(self.events_path),
            "versions": self.versions,
            "rebuilt": [r.job for r in self.rebuilt],
            "users": self.users,
            "channels": self.figures,
            "short_lists": self.short_lists,
            "reference": self.reference,
            "seconds": round(self.seconds, 2),
        }


def is_built_for(version: str | None, as_of: date) -> bool:
    """Versions are named `<as-of YYYYMMDD>-<build time>` (finegrain.jobs.version_for)."""
    return version is not None and version.startswith(f"{as_of:%Y%m%d}-")


def ensure_datasets(settings: Settings, as_of: date, events_path: Path, *, rebuild: bool = False,
                    spark: SparkSession | None = None, step: Step | None = None,
                    replace_newer: bool = False, dataset_jobs: Mapping[Dataset, str] = DATASET_JOBS
                    ) -> tuple[dict[str, str], list[JobResult]]:
    """The current versions of `dataset_jobs`' datasets (popularity and similarity by default), after
    running the jobs whose current version was not built for `as_of` (all of them with `rebuild`).
    Refuses to replace a version built as of a later date (what serving would be reading) unless
    `replace_newer`."""
    versions = RedisVersions(redis_client(settings))
    stale = [dataset for dataset in dataset_jobs
             if rebuild or not is_built_for(versions.current(dataset), as_of)]
    results: list[JobResult] = []
    newer = [f"{dataset} ({versions.current(dataset)})" for dataset in stale
             if (versions.current(dataset) or "")[:8] > f"{as_of:%Y%m%d}" and not replace_newer]
    if newer:
        raise JobError(
            f"{', '.join(newer)} here {'is' if len(newer) == 1 else 'are'} built as of a later date than "
            f"{as_of}: rebuilding would switch serving back to older data. Evaluate in a namespace of its "
            "own (e.g. FINEGRAIN_REDIS_URL=redis://127.0.0.1:16379/1 FINEGRAIN_MONGO_DATABASE=finegrain_eval "
            "FINEGRAIN_ZOOKEEPER_ROOT=/finegrain_eval), or pass --replace-newer"
        )
    if stale:
        names = [dataset_jobs[dataset] for dataset in stale]
        if step:
            step(f"building {', '.join(names)} as of {as_of} (Spark)")
        jobs = [load_job(name) for name in names]
        results = run_jobs(jobs, as_of, events_path, settings=settings, spark=spark)
    current = {str(dataset): versions.current(dataset) for dataset in dataset_jobs}
    for dataset, version in current.items():
        if not is_built_for(version, as_of):
            raise JobError(f"{dataset} has no version built as of {as_of} after the build "
                           f"(current: {version})")
    return {name: str(version) for name, version in current.items()}, results


def most_popular_ranking(settings: Settings, version: str, split: EvaluationSplit) -> np.ndarray:
    key = RedisKeys.popular_items(version, *MOST_POPULAR_LIST)
    stored = read_list(redis_client(settings), key)
    if stored is None or not len(stored.item_ids):
        raise JobError(f"no MostPop list at {key}: rebuild the popularity dataset (--rebuild)")
    return split.global_ranking(list(stored.item_ids))


def item_to_item_ranking(neighbours: NeighbourMatrix, split: EvaluationSplit, k: int,
                         config: ItemToItemConfig) -> np.ndarray:
    """Every evaluated user's top k from their train history, as candidate indices (-1 padded)."""
    return item_to_item_scored(neighbours, split, k, config)[0]


def item_to_item_scored(neighbours: NeighbourMatrix, split: EvaluationSplit, k: int,
                        config: ItemToItemConfig) -> tuple[np.ndarray, np.ndarray]:
    """`item_to_item_ranking` with the channel's scores (users x k, 0 past the end)."""
    h = split.history
    rows = neighbours.index(split.items[h.item])
    known = rows >= 0
    n_users, n_items = len(split.users), len(neighbours.item_ids)
    seeds = seed_matrix(h.user[known], rows[known], h.times_bought[known], h.last_bought_day[known],
                        n_users, n_items, split.today, config)
    bought = None
    if split.explore:
        bought = sp.csr_matrix((np.ones(int(known.sum())), (h.user[known], rows[known])),
                               shape=(n_users, n_items))
    top, scores = score_users(seeds, neighbours, k, exclude_bought=bought, config=config)
    # Map the neighbour matrix's ids to candidate indices once, not once per (user, position).
    to_candidate = split.item_index(neighbours.item_ids)
    return np.where(top >= 0, to_candidate[np.maximum(top, 0)], -1), scores


def evaluate_channels(settings: Settings, as_of: date, events_path: Path, *, rebuild: bool = False,
                      spark: SparkSession | None = None, config: ItemToItemConfig | None = None,
                      step: Step | None = None, replace_newer: bool = False) -> ChannelEvaluation:
    """Build what is missing, then evaluate MostPop and item-to-item (cosine, Swing) on both variants."""
    started = time.perf_counter()
    say = step or (lambda _: None)
    config = config or ItemToItemConfig()
    if not events_path.exists():
        raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    say("checking the popularity and similarity versions in Redis")
    versions, rebuilt = ensure_datasets(settings, as_of, events_path, rebuild=rebuild, spark=spark, step=say,
                                        replace_newer=replace_newer)
    say(f"reading events from {events_path}")
    events = load_events(events_path)
    k = max(DEFAULT_KS)
    splits = {}
    for variant in VARIANTS:
        say(f"splitting at {as_of} ({variant})")
        splits[variant] = build_split(events, as_of, explore=variant == "explore")
    del events
    figures: dict[str, dict[str, dict[str, float]]] = {variant: {} for variant in VARIANTS}
    short: dict[str, dict[str, int]] = {variant: {} for variant in VARIANTS}
    say("scoring MostPop")
    for variant, split in splits.items():
        ranked = most_popular_ranking(settings, versions["popularity"], split)
        figures[variant]["MostPop"] = split.evaluate(ranked)
    client = redis_client(settings)
    for algorithm in SIMILARITY_ALGORITHMS:
        say(f"reading {algorithm} neighbour lists")
        candidates = splits["standard"].items
        lists = read_neighbour_lists(client, versions["similarity"], algorithm, list(candidates))
        if not lists:
            raise JobError(f"no {algorithm} lists under similarity version {versions['similarity']}")
        neighbours = NeighbourMatrix.from_lists(lists, candidates)
        for variant, split in splits.items():
            say(f"scoring item-to-item ({algorithm}, {variant})")
            ranked = item_to_item_ranking(neighbours, split, k, config)
            channel = f"item_to_item:{algorithm}"
            figures[variant][channel] = split.evaluate(ranked)
            short[variant][channel] = int((ranked[:, k - 1] < 0).sum())
    return ChannelEvaluation(as_of=as_of, events_path=events_path, versions=versions, rebuilt=rebuilt,
                             users={variant: len(split.users) for variant, split in splits.items()},
                             figures=figures, seconds=time.perf_counter() - started, short_lists=short)


def table_rows(evaluation: ChannelEvaluation, variant: str) -> list[tuple[str, str, list[float | None]]]:
    """(model, source, values in METRICS order) for the measured channels, then the README's rows."""
    rows: list[tuple[str, str, list[float | None]]] = [
        (channel, "measured", [values.get(metric) for metric in METRICS])
        for channel, values in evaluation.figures[variant].items()
    ]
    rows.extend((model, "README", [values.get(metric) for metric in METRICS])
                for model, values in evaluation.reference.get(variant, {}).items())
    return rows


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_report(evaluation: ChannelEvaluation, folder: Path) -> dict[str, Path]:
    """evaluation.md (the tables), evaluation.png (bar plot per variant), evaluation.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "evaluation.md", "plot": folder / "evaluation.png",
             "json": folder / "evaluation.json"}
    lines = [f"# Recall channels, offline evaluation as of {evaluation.as_of}", "",
             f"Events: `{evaluation.events_path}`. Popularity version `{evaluation.versions['popularity']}`, "
             f"similarity version `{evaluation.versions['similarity']}`. Protocol: the data set README's "
             "(global temporal split, binary gains, means over users).", ""]
    for variant in VARIANTS:
        lines += [f"## {variant} ({evaluation.users[variant]:,} users)", "",
                  "| model | source | " + " | ".join(METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        lines += [f"| {model} | {source} | " + " | ".join(_format(v) for v in values) + " |"
                  for model, source, values in table_rows(evaluation, variant)]
        lines.append("")
    if evaluation.reference:
        lines += [REFERENCE_NOTE, ""]
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    paths["json"].write_text(json.dumps(evaluation.as_dict(), indent=2, sort_keys=True) + "\n",
                             encoding="utf-8")

    figure, axes = plt.subplots(1, len(VARIANTS), figsize=(14, 5), sharey=False)
    for axis, variant in zip(axes, VARIANTS, strict=True):
        rows = table_rows(evaluation, variant)
        width = 0.8 / len(rows)
        positions = np.arange(len(METRICS))
        for n, (model, source, values) in enumerate(rows):
            heights = [np.nan if v is None else v for v in values]
            axis.bar(positions + n * width - 0.4 + width / 2, heights, width,
                     label=f"{model} ({source})", hatch="//" if source == "README" else None,
                     alpha=0.55 if source == "README" else 1.0)
        axis.set_xticks(positions, METRICS, rotation=30)
        axis.set_title(f"{variant}: {evaluation.users[variant]:,} users, as of {evaluation.as_of}")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=110)
    plt.close(figure)
    return paths


def _print_tables(evaluation: ChannelEvaluation) -> None:
    for variant in VARIANTS:
        rows = [(SHORT_LABELS.get(model, model) if source == "measured" else f"README {model}",
                 *[_format(v) for v in values])
                for model, source, values in table_rows(evaluation, variant)]
        title = (f"{variant.capitalize()} protocol as of {evaluation.as_of}: "
                 f"{evaluation.users[variant]:,} users")
        console.print(summary_table(title, rows, ["model", *METRICS]))
    if evaluation.reference:
        console.print(REFERENCE_NOTE, style="dim")
    else:
        console.print(f"(the README's reference rows are for an as-of of {SPLIT_DATE} only)")


def _write(writer: Callable[[Any, Path], dict[str, Path]], evaluation: Any, folder: Path, started: float,
           as_json: bool) -> None:
    """Write an evaluation's report files, say where, and print the JSON line when asked."""
    try:
        paths = writer(evaluation, folder)
    except OSError as exc:
        raise fail(f"cannot write the report into {folder}: {exc.strerror or exc}") from None
    console.print(f"report: {', '.join(str(p) for p in paths.values())} "
                  f"({time.perf_counter() - started:.1f} s in all)")
    if as_json:
        print_json_line({**evaluation.as_dict(), "report": {k: str(v) for k, v in paths.items()}})


DEFAULT_AS_OF = SPLIT_DATE.isoformat()
JsonOption = Annotated[bool, typer.Option("--json", help="Also print the figures as one JSON object on the "
                                          "last line.")]
AsOfOption = Annotated[str, typer.Option(
    "--as-of", help="Split date (YYYY-MM-DD): train before it, test the 30 days from it; the datasets "
    "evaluated are built as of it.")]
EventsOption = Annotated[Path | None, typer.Option(
    "--events", help="Canonical events Parquet (default: <data dir>/retail/events.parquet).",
    show_default=False)]
ReplaceNewerOption = Annotated[bool, typer.Option(
    "--replace-newer", help="Allow rebuilding datasets whose current version is built as of a later date "
    "(what serving reads); without it the command refuses and suggests a namespace of its own.")]


@app.command("channels")
def channels(
    as_of: AsOfOption = DEFAULT_AS_OF,
    events: EventsOption = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Run the popularity and similarity jobs even if versions built as of this date "
        "exist (e.g. after changing --events).")] = False,
    replace_newer: ReplaceNewerOption = False,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Where to write evaluation.md/.png/"
                                                    ".json (default: <var dir>/reports/evaluation-<as-of>).",
                                                    show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate MostPop and the item-to-item channel (cosine, Swing) next to the README's reference rows."""
    settings = get_settings()
    events_path = events if events is not None else settings.data_dir / "retail" / "events.parquet"
    started = time.perf_counter()

    try:
        date_ = parse_as_of(as_of)
        evaluation = evaluate_channels(settings, date_, events_path, rebuild=rebuild, step=step,
                                       replace_newer=replace_newer)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    if evaluation.rebuilt:
        rows = [result_row(r) for r in evaluation.rebuilt]
        console.print(summary_table("Jobs run first", rows, RESULT_COLUMNS))
    _print_tables(evaluation)
    folder = report_dir if report_dir is not None else settings.var_dir / "reports" / f"evaluation-{date_}"
    _write(write_report, evaluation, folder, started, as_json)



# --- `finegrain evaluate all`: every channel alone, the merged recall, the rankers ---------------------

ALL_DATASET_JOBS = {**DATASET_JOBS, Dataset.INDEX: "content_index"}
RECALL_DEPTH = 1000
# Per-channel quotas of the merged recall (1,000 candidates), chosen on the validation split 2010-10-11
# (datasets built as of it; 1,135 users), never on the test window. Merged Recall@500 / @1000 there:
# i2i 400, ALS 400, content 100, popular 100: 0.665 / 0.783 (chosen); 500/300/100/100: 0.664 / 0.784;
# 400/250/200/150: 0.654 / 0.782; 250 each: 0.641 / 0.779; the same 400/250/200/150 with cosine lists
# instead of Swing: 0.645 / 0.765. At 1,000 the fill evens the quotas out; they matter at 300-700.
DEFAULT_QUOTAS: dict[str, int] = {"item_to_item": 400, "embedding": 400, "content": 100, "popular": 100}
RANKERS = ("xgboost", "tf")


@dataclass(frozen=True)
class ChannelRanking:
    """One channel's top `RECALL_DEPTH` per evaluated user: candidate indices of the split (-1 padded)
    and the channel's scores."""

    ranked: np.ndarray
    scores: np.ndarray


def _curve(split: EvaluationSplit, ranked: np.ndarray) -> dict[str, float]:
    ks = sorted({*DEFAULT_KS, *CURVE_KS})
    figures = split.evaluate(ranked, ks)
    return {name: value for name, value in figures.items()
            if name.startswith("Recall@") or int(name.split("@")[1]) in DEFAULT_KS}


def popular_channel(settings: Settings, version: str, split: EvaluationSplit, depth: int) -> ChannelRanking:
    key = RedisKeys.popular_items(version, *MOST_POPULAR_LIST)
    stored = read_list(redis_client(settings), key)
    if stored is None or not len(stored.item_ids):
        raise JobError(f"no MostPop list at {key}: rebuild the popularity dataset (--rebuild)")
    index = split.item_index(list(stored.item_ids))
    keep = index >= 0
    ranked = np.full(depth, -1, dtype=np.int64)
    scores = np.zeros(depth)
    n = min(depth, int(keep.sum()))
    ranked[:n] = index[keep][:n]
    scores[:n] = np.asarray(stored.scores, dtype=np.float64)[keep][:n]
    users = len(split.users)
    return ChannelRanking(np.tile(ranked, (users, 1)), np.tile(scores, (users, 1)))


def content_channel(settings: Settings, version: str, split: EvaluationSplit, events: pd.DataFrame,
                    depth: int, config: ContentConfig | None = None) -> ChannelRanking:
    """`finegrain.recall.content.recommend` for every evaluated user, with the profile serving would
    hold at the split (`finegrain.features.user` on the lines before it) and the postings of the index
    version in Redis."""
    from finegrain.features.user import ItemLookup, user_profiles
    from models.training_set import item_attributes_as_of

    config = config or ContentConfig()
    history = events.loc[rows_before(events, split.split_date)]
    lookup = ItemLookup.from_attributes(item_attributes_as_of(history))
    users = set(split.users.tolist())
    profiles = {p.user_id: p for p in user_profiles(history[history["user_id"].isin(users)],
                                                    split.split_date, lookup)}
    postings = RedisPostings(redis_client(settings), version)
    postings.prefetch(pair for profile in profiles.values() for pair in wanted_postings(profile, config))
    if not any(value is not None for value in postings.cache.values()):
        raise JobError(f"no content postings under index version {version}: rebuild it (--rebuild)")
    ranked = np.full((len(split.users), depth), -1, dtype=np.int64)
    scores = np.zeros((len(split.users), depth))
    for row, user in enumerate(split.users.tolist()):
        profile = profiles.get(str(user))
        if profile is None:
            continue
        found = recommend_content(profile, postings, depth, config)
        index = split.item_index(found.item_ids)
        keep = index >= 0
        ranked[row, :int(keep.sum())] = index[keep]
        scores[row, :int(keep.sum())] = found.scores[keep]
    return ChannelRanking(ranked, scores)


def embedding_channel(events: pd.DataFrame, split: EvaluationSplit, depth: int
                      ) -> tuple[ChannelRanking, float]:
    """ALS trained on the purchases before the split (`models.embeddings`), searched with each user's
    learnt vector (folded in from the train history for a user the model did not see)."""
    from models.embeddings import train_embeddings

    trained = train_embeddings(events, split.split_date)
    model = trained.model
    vectors, known = model.user_vectors(split.users)
    for row in np.flatnonzero(~known):
        vectors[row] = model.fold_in(split.purchase_history(int(row)), split.today)
    rows, scores = model.search(vectors, depth)
    to_candidate = split.item_index(model.item_ids.astype(str))
    ranked = np.where(rows >= 0, to_candidate[np.maximum(rows, 0)], -1)
    return ChannelRanking(ranked, np.where(rows >= 0, scores, 0.0)), trained.seconds


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


def evaluate_rankers(events: pd.DataFrame, names: list[str], say: Step
                     ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each ranker trained and evaluated by `models.evaluate_rankers` on the README split, on one shared
    training set and the same test candidates: the final list's HR/Recall/NDCG and AUC / GAUC."""
    import inspect

    import models.evaluate_rankers as rankers_module

    check_rankers(names)
    figures: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    shared: dict[str, Any] = {}
    # Build the training rows and the test candidates once when the module can share them.
    parameters = inspect.signature(rankers_module.evaluate).parameters
    if "train" in parameters and hasattr(rankers_module, "TestRows"):
        say("building the rankers' training set and test candidates (shared by every ranker)")
        train, _ = rankers_module.training_rows(events, rankers_module.TRAIN_CUTOFFS, None,
                                                lambda message: say(f"  {message}"))
        shared = {"train": train, "test": rankers_module.TestRows.build(events)}
    result: Any = None
    for name in names:
        if name == "xgboost":
            result = rankers_module.evaluate(events, say=lambda line: say(f"  xgboost: {line}"), **shared)
            notes.append(f"XGBoost ranker: objective {result.objective} (chosen on the validation cut-off "
                         f"{rankers_module.VALID_CUTOFF}), seconds {result.seconds}.")
        else:
            result = rankers_module.evaluate_tf(events, say=lambda line: say(f"  tf: {line}"), **shared)
            notes.append(f"TensorFlow ranker: seconds {result.seconds}.")
        figures.update({model: dict(values) for model, values in result.table.items()
                        if "alone" not in model})
    if result is not None:
        training = {key: round(value, 2) if isinstance(value, float) else value
                    for key, value in dict(result.training_set).items()}
        notes.append("Rankers' candidates: item-to-item top 200 + the 50 most popular per user (their own "
                     f"candidate set, not the merged recall's); training set {training}.")
    return figures, notes


def evaluate_all(settings: Settings, as_of: date, events_path: Path, *, rebuild: bool = False,
                 spark: SparkSession | None = None, step: Step | None = None, replace_newer: bool = False,
                 rankers: list[str] | None = None, quotas: Mapping[str, int] | None = None,
                 total: int = RECALL_DEPTH, merge_item_to_item: str = "swing") -> FullEvaluation:
    """Build what is missing (popularity, similarity, content index as of `as_of`), then evaluate
    every recall channel alone to depth `total`, their merge, and each ranker of `rankers`."""
    started = time.perf_counter()
    say = step or (lambda _: None)
    quotas = dict(quotas or DEFAULT_QUOTAS)
    if merge_item_to_item not in SIMILARITY_ALGORITHMS:
        raise DataError(f"unknown similarity algorithm {merge_item_to_item!r}: one of "
                        f"{', '.join(SIMILARITY_ALGORITHMS)}")
    if not events_path.exists():
        raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    check_rankers(rankers or [])
    seconds: dict[str, float] = {}
    lap = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        seconds[name] = round(now - lap, 2)
        lap = now

    say("checking the popularity, similarity and index versions in Redis")
    versions, rebuilt = ensure_datasets(settings, as_of, events_path, rebuild=rebuild, spark=spark, step=say,
                                        replace_newer=replace_newer, dataset_jobs=ALL_DATASET_JOBS)
    tick("datasets")
    say(f"reading events from {events_path}")
    events = load_events(events_path)
    split = build_split(events, as_of)
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
            raise JobError(f"no {algorithm} lists under similarity version {versions['similarity']}")
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
        if as_of != SPLIT_DATE:
            notes.append(f"rankers not evaluated: their training cut-offs are fixed for the {SPLIT_DATE} "
                         "split")
        else:
            say(f"training and evaluating the rankers: {', '.join(rankers)}")
            ranker_figures, ranker_notes = evaluate_rankers(events, rankers, say)
            notes += ranker_notes
            tick("rankers")
    else:
        notes.append("rankers skipped (--skip-rankers)")
    seconds["total"] = round(time.perf_counter() - started, 2)
    return FullEvaluation(as_of=as_of, events_path=events_path, users=len(split.users), versions=versions,
                          rebuilt=[r.job for r in rebuilt], channels=channels, merge=merge_figures,
                          rankers=ranker_figures, notes=notes, seconds=seconds)


def _print_full(evaluation: FullEvaluation) -> None:
    rows = [(name, kind, *[fmt(figures.get(m)) for m in RANKER_METRICS])
            for name, kind, figures in summary_rows(evaluation)]
    console.print(summary_table(f"README protocol as of {evaluation.as_of}: {evaluation.users:,} users", rows,
                                ["model", "kind", *RANKER_METRICS]))
    curve = [(label(name), *[fmt(figures.get(f"Recall@{k}")) for k in CURVE_KS])
             for name, figures in {**evaluation.channels, "merged recall": evaluation.merge.figures}.items()]
    console.print(summary_table("Recall@K (how much of the target the top K hold)", curve,
                                ["list", *[f"@{k}" for k in CURVE_KS]]))
    for note in evaluation.notes:
        console.print(f"- {note}", style="dim", highlight=False)


@app.command("all")
def all_(
    as_of: AsOfOption = DEFAULT_AS_OF,
    events: EventsOption = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Run the popularity, similarity and content index jobs even if versions built as "
        "of this date exist.")] = False,
    replace_newer: ReplaceNewerOption = False,
    rankers: Annotated[str | None, typer.Option(
        "--rankers", help="Comma-separated rankers to train and evaluate: xgboost, tf (default: both when "
        "the TensorFlow ranker is available, else xgboost).", show_default=False)] = None,
    skip_rankers: Annotated[bool, typer.Option("--skip-rankers", help="Channels and merge only (fast).")
                            ] = False,
    quotas: Annotated[str | None, typer.Option(
        "--quotas", help="Merge quotas as CHANNEL=N,... (default: item_to_item=400,embedding=400,"
        "content=100,popular=100).", show_default=False)] = None,
    merge_i2i: Annotated[str, typer.Option("--merge-i2i", help="Similarity lists feeding the merge's "
                                           "item_to_item channel: cosine or swing.")] = "swing",
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: <var dir>/reports/"
                                             "evaluation-all-<as-of>).", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Every recall channel alone, the merged recall and each ranker on the README protocol: a table,
    report.md and PNG plots."""
    settings = get_settings()
    events_path = events if events is not None else settings.data_dir / "retail" / "events.parquet"
    started = time.perf_counter()

    try:
        date_ = parse_as_of(as_of)
        chosen: list[str] = []
        if not skip_rankers:
            if rankers is None:
                chosen = list(RANKERS) if tf_ranker_available() else ["xgboost"]
            else:
                chosen = [r.strip() for r in rankers.split(",") if r.strip()]
        evaluation = evaluate_all(settings, date_, events_path, rebuild=rebuild, step=step,
                                  replace_newer=replace_newer, rankers=chosen,
                                  quotas=parse_quotas(quotas) if quotas else None,
                                  merge_item_to_item=merge_i2i)
        if not skip_rankers and rankers is None and "tf" not in chosen:
            evaluation.notes.append("TensorFlow ranker not included: models.tf_ranker (or tensorflow) is "
                                    "not available, so --rankers defaulted to xgboost.")
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    if evaluation.rebuilt:
        console.print(f"jobs run first: {', '.join(evaluation.rebuilt)}")
    _print_full(evaluation)
    folder = out if out is not None else settings.var_dir / "reports" / f"evaluation-all-{date_}"
    _write(write_full_report, evaluation, folder, started, as_json)
