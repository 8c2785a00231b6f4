"""`finegrain evaluate channels`: the recall channels on the data set README's offline protocol.

It evaluates what serving would use: the MostPop list is the popularity job's `global:all@all` list
and the item-to-item channel scores users with the similarity job's lists, both read from Redis for
a version built as of the split date (the jobs are run first when there is none, or with --rebuild).
Every figure sits next to the README's reference rows; the table is also written as Markdown with a
bar plot into a report folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import scipy.sparse as sp
import typer

from finegrain.cli.output import console, fail, print_json_line, summary_table
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
from finegrain.jobs import RESULT_COLUMNS, JobError, JobResult, load_job, parse_as_of, result_row, run_jobs
from finegrain.recall.item_to_item import (
    ItemToItemConfig,
    NeighbourMatrix,
    read_neighbour_lists,
    score_users,
    seed_matrix,
)
from finegrain.settings import Settings, get_settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import read_list
from finegrain.storage.redis_versions import RedisVersions

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

Step = Callable[[str], None]


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
                    replace_newer: bool = False) -> tuple[dict[str, str], list[JobResult]]:
    """The current popularity and similarity versions, after running the jobs whose current version
    was not built for `as_of` (all of them with `rebuild`). Refuses to replace a version built as of a
    later date (what serving would be reading) unless `replace_newer`."""
    versions = RedisVersions(redis_client(settings))
    stale = [dataset for dataset in DATASET_JOBS
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
        names = [DATASET_JOBS[dataset] for dataset in stale]
        if step:
            step(f"building {', '.join(names)} as of {as_of} (Spark)")
        jobs = [load_job(name) for name in names]
        results = run_jobs(jobs, as_of, events_path, settings=settings, spark=spark)
    current = {str(dataset): versions.current(dataset) for dataset in DATASET_JOBS}
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
    top, _ = score_users(seeds, neighbours, k, exclude_bought=bought, config=config)
    return np.where(top >= 0, split.item_index(neighbours.item_ids[np.maximum(top, 0)]), -1)


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


@app.command("channels")
def channels(
    as_of: Annotated[str, typer.Option("--as-of", help="Split date (YYYY-MM-DD): train before it, test the "
                                       "30 days from it; the datasets evaluated are built as of it.")
                     ] = SPLIT_DATE.isoformat(),
    events: Annotated[Path | None, typer.Option(
        "--events", help="Canonical events Parquet (default: <data dir>/retail/events.parquet).",
        show_default=False)] = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Run the popularity and similarity jobs even if versions built as of this date "
        "exist (e.g. after changing --events).")] = False,
    replace_newer: Annotated[bool, typer.Option(
        "--replace-newer", help="Allow rebuilding datasets whose current version is built as of a later date "
        "(what serving reads); without it the command refuses and suggests a namespace of its own.")] = False,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Where to write evaluation.md/.png/"
                                                    ".json (default: <var dir>/reports/evaluation-<as-of>).",
                                                    show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the figures as one JSON object on the "
                                          "last line.")] = False,
) -> None:
    """Evaluate MostPop and the item-to-item channel (cosine, Swing) next to the README's reference rows."""
    settings = get_settings()
    events_path = events if events is not None else settings.data_dir / "retail" / "events.parquet"
    started = time.perf_counter()

    def step(message: str) -> None:
        console.print(f"[dim]{datetime.now():%H:%M:%S}[/] {message} ...", highlight=False)

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
    try:
        paths = write_report(evaluation, folder)
    except OSError as exc:
        raise fail(f"cannot write the report into {folder}: {exc.strerror or exc}") from None
    console.print(f"report: {paths['markdown']}, {paths['plot']}, {paths['json']} "
                  f"({time.perf_counter() - started:.1f} s in all)")
    if as_json:
        print_json_line({**evaluation.as_dict(), "report": {k: str(v) for k, v in paths.items()}})

