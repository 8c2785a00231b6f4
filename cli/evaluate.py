"""`finegrain evaluate channels` and `finegrain evaluate all`: the recall channels, their merge and the
rankers on the data set README's offline protocol.

Each command makes sure the datasets it reads are built as of the split date (`spark_jobs.ensure`:
the jobs are run first when there is none, or with --rebuild), then hands them to the evaluation
(`models.evaluate_channels`, `models.evaluate_all`) and prints its tables; every figure sits next to
the README's reference rows, and the report goes to a folder as Markdown, JSON and PNG plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from cli.options import EventsOption, JsonOption, TestDaysOption
from finegrain.console import console, fail, print_json_line, step, summary_table
from finegrain.dates import parse_as_of
from finegrain.errors import DataError, FinegrainError
from finegrain.evaluation.protocol import REFERENCE_NOTE, TEST_DAYS, load_events, readme_split
from finegrain.evaluation.report import CURVE_KS, RANKER_METRICS, FullEvaluation, fmt, label, summary_rows
from finegrain.evaluation.report import write_report as write_full_report
from finegrain.settings import Settings, get_settings
from finegrain.storage.contract import Dataset
from models.evaluate_all import (
    RANKERS,
    check_dates,
    check_options,
    evaluate_all,
    parse_quotas,
    tf_ranker_available,
)
from models.evaluate_channels import (
    METRICS,
    SIMILARITY_ALGORITHMS,
    VARIANTS,
    ChannelEvaluation,
    evaluate_channels,
    table_rows,
    write_report,
)
from spark_jobs.base import JobResult
from spark_jobs.ensure import DATASET_JOBS, RECALL_DATASET_JOBS, ensure_datasets
from spark_jobs.runner import RESULT_COLUMNS, result_row

app = typer.Typer(help="Offline evaluation of the recall channels on the data set README's protocol.")

# Narrow terminals: the table keeps its figures readable with short channel names.
SHORT_LABELS = {f"item_to_item:{algorithm}": f"i2i {algorithm}" for algorithm in SIMILARITY_ALGORITHMS}


def _datasets(settings: Settings, as_of: date, events_path: Path, jobs: Mapping[Dataset, str], rebuild: bool,
              replace_newer: bool) -> tuple[dict[str, str], list[JobResult]]:
    if not events_path.exists():
        raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    step("checking the dataset versions in Redis")
    return ensure_datasets(settings, as_of, events_path, rebuild=rebuild, step=step,
                           replace_newer=replace_newer, dataset_jobs=jobs)


def _print_tables(evaluation: ChannelEvaluation) -> None:
    for variant in VARIANTS:
        rows = [(SHORT_LABELS.get(model, model) if source == "measured" else f"README {model}",
                 *[fmt(v) for v in values])
                for model, source, values in table_rows(evaluation, variant)]
        title = (f"{variant.capitalize()} protocol as of {evaluation.as_of}: "
                 f"{evaluation.users[variant]:,} users")
        console.print(summary_table(title, rows, ["model", *METRICS]))
    if evaluation.reference:
        console.print(REFERENCE_NOTE, style="dim")
    else:
        console.print("(the data set README's reference rows are for its own split only: the sample data's "
                      "last 30 days)")


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


AsOfOption = Annotated[str, typer.Option(
    "--as-of", help="Split date (YYYY-MM-DD): train before it, test the window from it; the datasets "
    "evaluated are built as of it. Default: the README protocol's split, the data's last 30 days.",
    show_default=False)]


def split_date(as_of: str, events_path: Path, test_days: int = TEST_DAYS,
               events: pd.DataFrame | None = None) -> date:
    """The --as-of given, or the README protocol's split of these events (their last test window);
    `events`: the file read already."""
    if as_of:
        return parse_as_of(as_of)
    if events is None:
        if not events_path.exists():
            raise DataError(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
        events = load_events(events_path)
    return readme_split(events, test_days)


ReplaceNewerOption = Annotated[bool, typer.Option(
    "--replace-newer", help="Allow rebuilding datasets whose current version is built as of a later date "
    "(what serving reads); without it the command refuses and suggests a namespace of its own.")]


@app.command("channels")
def channels(
    as_of: AsOfOption = "",
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
    events_path = events if events is not None else settings.events_path
    started = time.perf_counter()

    try:
        date_ = split_date(as_of, events_path)
        versions, rebuilt = _datasets(settings, date_, events_path, DATASET_JOBS, rebuild, replace_newer)
        evaluation = evaluate_channels(settings, date_, events_path, versions, step=step,
                                       rebuilt=[r.job for r in rebuilt])
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    if rebuilt:
        console.print(summary_table("Jobs run first", [result_row(r) for r in rebuilt], RESULT_COLUMNS))
    _print_tables(evaluation)
    folder = report_dir if report_dir is not None else settings.var_dir / "reports" / f"evaluation-{date_}"
    _write(write_report, evaluation, folder, started, as_json)


# --- `finegrain evaluate all`: every channel alone, the merged recall, the rankers ---------------------

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
    as_of: AsOfOption = "",
    events: EventsOption = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Run the popularity, similarity and content index jobs even if versions built as "
        "of this date exist.")] = False,
    replace_newer: ReplaceNewerOption = False,
    rankers: Annotated[str | None, typer.Option(
        "--rankers", help="Comma-separated rankers to train and evaluate: xgboost, tf (default: both when "
        "the TensorFlow ranker is available, else xgboost).", show_default=False)] = None,
    test_days: TestDaysOption = TEST_DAYS,
    max_users: Annotated[int | None, typer.Option(
        "--max-users", min=1, help="Train the rankers on at most this many users per cut-off (quick runs); "
        "every protocol user is still evaluated.", show_default=False)] = None,
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
    events_path = events if events is not None else settings.events_path
    started = time.perf_counter()

    try:
        # Read once for the split and the date checks, which refuse bad dates before any job runs.
        frame = load_events(events_path) if events_path.exists() else None
        date_ = split_date(as_of, events_path, test_days, frame)
        chosen: list[str] = []
        if not skip_rankers:
            if rankers is None:
                chosen = list(RANKERS) if tf_ranker_available() else ["xgboost"]
            else:
                chosen = [r.strip() for r in rankers.split(",") if r.strip()]
        check_options(chosen, merge_i2i)
        if frame is not None:
            check_dates(frame, date_, test_days, chosen)
        parsed_quotas = parse_quotas(quotas) if quotas else None
        versions, rebuilt = _datasets(settings, date_, events_path, RECALL_DATASET_JOBS, rebuild,
                                      replace_newer)
        evaluation = evaluate_all(settings, date_, events_path, versions, step=step,
                                  rebuilt=[r.job for r in rebuilt], rankers=chosen, quotas=parsed_quotas,
                                  merge_item_to_item=merge_i2i, test_days=test_days,
                                  max_users=max_users)
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
