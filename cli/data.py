"""`finegrain data load | ingest | watermark | synth | publish-catalog`: build the Parquet data sets every
later job reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from pymongo.errors import PyMongoError

from cli.options import JsonOption
from finegrain.console import console, fail, print_json_line, step, summary_table
from finegrain.data.ingest import IngestReport, ingest, read_watermark, watermark_path
from finegrain.data.retail import (
    LoadReport,
    load_online_retail,
    read_catalog,
    read_catalog_table,
    read_events_table,
)
from finegrain.data.synthetic import SyntheticReport, generate_synthetic
from finegrain.dates import parse_as_of
from finegrain.errors import DataError
from finegrain.events.archive import EventArchive
from finegrain.settings import get_settings
from finegrain.storage.catalog import publish_catalog

app = typer.Typer(
    help="Load the Online Retail II data into Parquet (events, catalogue, report), or scale it up."
)

OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Folder to write events.parquet, catalog.parquet and report.json into (created if needed).",
        show_default=False,
    ),
]


@app.command()
def load(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="The Online Retail II CSV (gzip) to read. Default: FINEGRAIN_SOURCE_CSV.",
            show_default=False,
        ),
    ] = None,
    out: OutOption = None,
    json: JsonOption = False,
) -> None:
    """Clean the CSV into purchase events and an item catalogue; print what was kept and rejected.

    Default --out: <FINEGRAIN_VAR_DIR>/data/retail.
    """
    settings = get_settings()
    source_path = source if source is not None else settings.source_csv
    out_dir = out if out is not None else settings.retail_dir
    with _failing_cleanly(out_dir), console.status(f"loading {source_path} ...") as status:
        report = load_online_retail(source_path, out_dir, progress=lambda step: status.update(f"{step} ..."))
    console.print(summary_table("Online Retail II load", _load_rows(report), ["figure", "value"]))
    console.print(
        summary_table("Rejected rows (first failing rule)", _rejected_rows(report), _REJECTED_COLUMNS)
    )
    if json:
        print_json_line(report.as_dict())


@app.command("ingest")
def ingest_command(
    as_of: Annotated[str, typer.Option(
        "--as-of", help="Take the events before this date (YYYY-MM-DD, midnight UTC); later ones wait for "
        "a later run.", show_default=False)],
    source: Annotated[list[Path] | None, typer.Option(
        "--source", help="A file drop to read: a raw CSV (gzip) in the Online Retail II format; repeat for "
        "several. Default: FINEGRAIN_SOURCE_CSV.", show_default=False)] = None,
    no_source: Annotated[bool, typer.Option(
        "--no-source", help="Read no file drop (the event archive only).")] = False,
    archive: Annotated[str | None, typer.Option(
        "--archive", help="The streaming sidecar's event archive, a folder or a URI (s3://bucket/prefix...). "
        "Default: FINEGRAIN_EVENT_ARCHIVE.",
        show_default=False)] = None,
    no_archive: Annotated[bool, typer.Option("--no-archive", help="Read no event archive.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder of the canonical events to merge into (events.parquet, catalog.parquet, "
        "report.json, watermark.json). Default: <FINEGRAIN_VAR_DIR>/data/retail.", show_default=False)
    ] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Ignore the watermark: read every source again (duplicates are still dropped, so the "
        "events come out the same); after restoring an archive, for instance.")] = False,
    json: JsonOption = False,
) -> None:
    """Merge what arrived since the last run (file drops, the event archive) into the canonical events,
    dropping duplicate event ids; re-running a date adds nothing. Prints rows per source."""
    settings = get_settings()
    if source and no_source:
        raise fail("--source and --no-source contradict each other: give one")
    if archive is not None and no_archive:
        raise fail("--archive and --no-archive contradict each other: give one")
    out_dir = out if out is not None else settings.retail_dir
    try:
        day = parse_as_of(as_of)
    except DataError as exc:
        raise fail(str(exc)) from None
    sources = [] if no_source else list(source or [settings.source_csv])
    try:
        event_archive = None if no_archive else EventArchive.at(
            archive if archive is not None else settings.event_archive_location)
    except DataError as exc:
        raise fail(str(exc)) from None
    with _failing_cleanly(out_dir):
        report = ingest(day, out_dir, sources=sources, archive=event_archive, full=full, say=step)
    console.print(summary_table(f"Ingest as of {day}", _ingest_rows(report), _INGEST_COLUMNS))
    console.print(summary_table("Canonical events", [
        ("events before", report.events_before), ("events after", report.events_after),
        ("written", "yes" if report.written else "no (nothing new)"),
        ("sources read again", report.reread or "no (the watermark was trusted)"),
        ("folder", str(report.out_dir)), ("watermark", str(report.watermark)),
        ("seconds", round(report.seconds, 1))], ["figure", "value"]))
    if json:
        print_json_line(report.as_dict())


@app.command()
def watermark(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder of the canonical events. Default: <FINEGRAIN_VAR_DIR>/data/retail.",
        show_default=False)] = None,
    json: JsonOption = False,
) -> None:
    """What the nightly ingest has merged into the canonical events: the latest as-of date, and per
    source what was taken."""
    out_dir = out if out is not None else get_settings().retail_dir
    with _failing_cleanly(out_dir):
        mark = read_watermark(out_dir)
    if mark is None:
        raise fail(f"no watermark at {watermark_path(out_dir)}: nothing was ingested into {out_dir} yet "
                   "(`finegrain data ingest --as-of D`)")
    rows: list[tuple[str, str, str]] = [
        ("events", str(out_dir), f"{mark.events.get('rows', 0):,} rows as of {mark.as_of}, updated "
                                 f"{mark.updated_at}")]
    rows += [("file drop", path, f"taken before {entry['before']} ({entry['bytes']:,} bytes)")
             for path, entry in sorted(mark.files.items())]
    for path, days in sorted(mark.archive.items()):
        last = f", last {max(days)} (batch {days[max(days)]})" if days else ""
        rows.append(("archive", path, f"{len(days)} event dates taken{last}"))
    console.print(summary_table(f"Watermark {watermark_path(out_dir)}", rows, ["source", "path", "taken"]))
    if json:
        print_json_line(mark.as_dict())


@app.command()
def synth(
    scale: Annotated[
        int,
        typer.Option(
            "--scale",
            help="How many copies of the clean data to generate (>= 1; 1 gives back the loaded data).",
            show_default=False,
        ),
    ],
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (>= 0); the same seed gives the same data set.")
    ] = 0,
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="Folder of loaded data (written by `finegrain data load`). Default: <data dir>/retail.",
            show_default=False,
        ),
    ] = None,
    move_weeks: Annotated[
        int, typer.Option("--move-weeks", help="Move every date by this many weeks (another year's shop: "
                          "e.g. 156 for three years later; negative moves earlier).")
    ] = 0,
    out: OutOption = None,
    json: JsonOption = False,
) -> None:
    """Generate N times the loaded data with the same shape, in the same Parquet layout.

    Default --out: <FINEGRAIN_VAR_DIR>/data/synthetic-x<N>.
    """
    if scale < 1:
        raise fail(f"--scale must be at least 1, got {scale}")
    if seed < 0:
        raise fail(f"--seed must be a non-negative integer, got {seed}")
    settings = get_settings()
    source_dir = source if source is not None else settings.retail_dir
    out_dir = out if out is not None else settings.data_dir / f"synthetic-x{scale}"
    if out_dir.resolve() == source_dir.resolve():
        raise fail(f"--out must differ from --source ({source_dir}): it would overwrite the real data")
    with _failing_cleanly(out_dir), console.status(f"reading {source_dir} ...") as status:
        events = read_events_table(source_dir)
        catalog = read_catalog_table(source_dir)
        report = generate_synthetic(
            events,
            catalog,
            scale,
            seed,
            out_dir,
            move_weeks=move_weeks,
            source=str(source_dir),
            progress=lambda step: status.update(f"{step} ..."),
        )
    console.print(summary_table(f"Synthetic data x{scale}", _synthetic_rows(report), ["figure", "value"]))
    console.print(
        summary_table("Shape: loaded vs synthetic", _shape_rows(report), ["figure", "loaded", "synthetic"])
    )
    if json:
        print_json_line(report.as_dict())


@app.command("publish-catalog")
def publish_catalog_command(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="Folder (or catalog.parquet) written by `data load`; default: the loaded data.",
            show_default=False,
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Write the item catalogue into MongoDB as a new version (catalog__<version>) and switch to it."""
    settings = get_settings()
    folder = source or settings.retail_dir
    with _failing_cleanly(folder), console.status(f"publishing the catalogue of {folder} to MongoDB ..."):
        try:
            report = publish_catalog(settings, read_catalog(folder))
        except PyMongoError as exc:
            reason = str(exc).split(" (configured timeouts")[0]
            raise fail(
                f"MongoDB at {settings.mongo_uri} failed: {reason} (is the stack up? `finegrain stack up`)"
            ) from None
    rows = [
        ("version", report.version),
        ("items", report.items),
        ("replaced", report.previous or "-"),
        ("dropped old versions", ", ".join(report.dropped) or "-"),
    ]
    console.print(summary_table("Catalogue in MongoDB", rows, ["figure", "value"]))
    if json:
        print_json_line(asdict(report))


@contextmanager
def _failing_cleanly(out_dir: Path) -> Iterator[None]:
    """Turn the errors a user can fix into a one-line message and exit code 2."""
    try:
        yield
    except DataError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        # Reading errors arrive as DataError, so an OSError here is about the output folder.
        raise fail(f"cannot write the data set into {out_dir}: {exc.strerror or exc}") from None


_REJECTED_COLUMNS = ["reason", "rows", "share of rows read"]
_INGEST_COLUMNS = ["source", "kind", "files", "rows in", "rejected", "later", "other types",
                   "duplicates dropped", "rows out", "note"]


def _ingest_rows(report: IngestReport) -> list[tuple[Any, ...]]:
    return [(c.source, c.kind, c.files, c.rows_in, c.rejected, c.later, c.other_types, c.duplicates, c.added,
             c.note or "-") for c in report.sources]


def _load_rows(report: LoadReport) -> list[tuple[str, Any]]:
    return [
        ("source", str(report.source)),
        ("rows read", report.rows_read),
        ("clean rows", report.clean_rows),
        ("rejected rows", sum(report.rejected.values())),
        ("users", report.users),
        ("items", report.items),
        ("baskets", report.baskets),
        ("user-item pairs", report.user_item_pairs),
        ("countries", report.countries),
        ("first purchase", report.first_timestamp.isoformat(sep=" ")),
        ("last purchase", report.last_timestamp.isoformat(sep=" ")),
        ("events", str(report.events_path)),
        ("catalogue", str(report.catalog_path)),
        ("seconds", report.seconds),
    ]


def _rejected_rows(report: LoadReport) -> list[tuple[str, int, str]]:
    return [(reason, count, f"{count / report.rows_read:.2%}") for reason, count in report.rejected.items()]


def _synthetic_rows(report: SyntheticReport) -> list[tuple[str, Any]]:
    return [
        ("source", report.source),
        ("scale", report.scale),
        ("seed", report.seed),
        ("rows", report.clean_rows),
        ("users", report.users),
        ("items", report.items),
        ("baskets", report.baskets),
        ("user-item pairs", report.user_item_pairs),
        ("lines with a swapped item", report.swapped_lines),
        ("first purchase", report.first_timestamp.isoformat(sep=" ")),
        ("last purchase", report.last_timestamp.isoformat(sep=" ")),
        ("events", str(report.events_path)),
        ("catalogue", str(report.catalog_path)),
        ("seconds", report.seconds),
    ]


def _shape_rows(report: SyntheticReport) -> list[tuple[str, Any, Any]]:
    loaded, synthetic = report.source_shape, report.shape
    rows: list[tuple[str, Any, Any]] = [
        (name.replace("_", " "), loaded[name], synthetic[name])
        for name in ("users", "items", "lines", "baskets", "mean_basket_size", "repeat_rate", "repeat_users")
    ]
    rows.extend(
        (f"share of lines in {month}", f"{share:.2%}", f"{_share(synthetic['month_share'], month):.2%}")
        for month, share in loaded["month_share"].items()
    )
    return rows


def _share(shares: Mapping[str, float], month: str) -> float:
    return shares.get(month, 0.0)
