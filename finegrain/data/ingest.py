"""The nightly ingest: what arrived since the last run, merged into the canonical events.

`finegrain data ingest --as-of D` (`cli/data.py`) runs it; the nightly DAG's first task is that command.

Sources, read in this order (the order decides which copy of a repeated event is kept):
1. file drops: raw CSVs in the loader's format (`finegrain.data.retail.clean_online_retail`, the
   sample data's file). A file is read again only when it changed (size or modification time) or when
   the as-of date moved past what was taken of it before;
2. the event archive the streaming sidecar writes (`finegrain.events.archive`): of each event date,
   the files written after the last one taken (a micro-batch's id grows with time, so a file that
   arrives late for an old date still has a higher id than any taken before).

What is taken: events strictly before the as-of date's midnight UTC; later ones wait for the run of a
later date ("later" in the report). Of the archive, purchases only: every batch job, training set and
evaluation reads the canonical events as purchase lines (nothing downstream filters on `event_type`),
so views, clicks and cart adds stay in the archive ("other types"), partitioned by date.

Duplicates: an event id already in the canonical events, or met earlier in the same run, is dropped.
A purchase replayed from the CSV through the API (`finegrain replay`) keeps the loader's event id
(`<invoice>-<line>`), so it is dropped against the CSV's own row, which wins (it carries the
description the archive's copy lacks). A client's events without an id got a uuid4 from the API.

Idempotent: re-running a date finds nothing new by the watermark and rewrites nothing. With `full`,
or when the events file is not the one the watermark describes (rewritten by `finegrain data load`,
say, or a crash between the two writes), every source is read again and the duplicate removal gives
the same events. Rows already in the canonical events are never removed or reordered: new rows are
appended, file drops first, then the archive by event date and batch.

The watermark (`watermark.json` beside the events; `docs/storage.md`) is a small JSON file an
operator can read (`finegrain data watermark`): the latest as-of date ingested, the events file it
describes, and per source what was taken (a file's size, modification time and the date its rows
were taken up to; the archive's last batch id per event date).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finegrain.console import Step, quiet
from finegrain.data.layout import EVENTS_FILE, WATERMARK_FILE
from finegrain.data.retail import (
    EVENT_TYPE_PURCHASE,
    EVENTS_SCHEMA,
    build_catalog,
    clean_online_retail,
    dataset_counts,
    read_events_table,
    write_dataset,
)
from finegrain.dates import as_of_ms
from finegrain.errors import DataError
from finegrain.events.archive import EventArchive

FILE_DROP = "file drop"
ARCHIVE = "archive"
WATERMARK_FORMAT = 1
# mkstemp makes owner-only files; the watermark is read by operators and other workers too.
_FILE_MODE = 0o644


@dataclass
class SourceCounts:
    """What one source gave a run, in rows."""

    source: str
    kind: str
    files: int = 0  # files read (a file drop is one; archive files of dates before the as-of date)
    rows_in: int = 0  # rows read that the watermark did not already cover
    rejected: int = 0  # file drop: rows of the file the loader's rules reject (unparseable, cancellations...)
    later: int = 0  # at or after the as-of date: left for the run of a later date
    other_types: int = 0  # archive: views, clicks, cart adds (they stay in the archive)
    duplicates: int = 0  # an event id already in the canonical events or earlier in the run
    added: int = 0  # rows appended to the canonical events
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Watermark:
    """What the canonical events beside it hold of each source (the JSON of `watermark.json`)."""

    as_of: str | None = None  # the latest as-of date ingested
    updated_at: str = ""
    events: dict[str, int] = field(default_factory=dict)  # rows, bytes, mtime_ns of the events file
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> bytes, mtime_ns, before
    archive: dict[str, dict[str, int]] = field(default_factory=dict)  # path -> {event date: last batch}

    def describes(self, events_file: Path) -> bool:
        """Whether `events_file` is the file this watermark was written with."""
        if not events_file.is_file() or not self.events:
            return False
        stat = events_file.stat()
        return self.events.get("bytes") == stat.st_size and self.events.get("mtime_ns") == stat.st_mtime_ns

    def as_dict(self) -> dict[str, Any]:
        return {"format": WATERMARK_FORMAT, **asdict(self)}


@dataclass(frozen=True)
class IngestReport:
    as_of: date
    out_dir: Path
    sources: list[SourceCounts]
    events_before: int
    events_after: int
    written: bool  # the events were rewritten (False: nothing new)
    reread: str  # why every source was read again ("" when the watermark was trusted)
    watermark: Path
    counts: dict[str, Any]  # `dataset_counts` of the canonical events after the run
    seconds: float
    dataset: str = "ingest"

    @property
    def added(self) -> int:
        return sum(source.added for source in self.sources)

    def as_dict(self) -> dict[str, Any]:
        counts = {key: value.isoformat() if isinstance(value, datetime) else value
                  for key, value in self.counts.items()}
        return {"dataset": self.dataset, "as_of": self.as_of.isoformat(), "out_dir": str(self.out_dir),
                "sources": [source.as_dict() for source in self.sources],
                "events_before": self.events_before, "events_after": self.events_after,
                "added": self.added, "written": self.written, "reread": self.reread,
                "watermark": str(self.watermark), "counts": counts, "seconds": round(self.seconds, 3)}


def watermark_path(out_dir: Path) -> Path:
    return Path(out_dir) / WATERMARK_FILE


def read_watermark(out_dir: Path) -> Watermark | None:
    """The watermark of the events in `out_dir` (None if there is none). An unreadable one is an error:
    silently ignoring it would read every source again without saying so."""
    path = watermark_path(out_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.pop("format", None) != WATERMARK_FORMAT:
            raise ValueError(f"unknown format (expected {WATERMARK_FORMAT})")
        return Watermark(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"the watermark {path} is unreadable ({exc}): delete it, or run "
                        "`finegrain data ingest --full`, to read every source again") from None


def ingest(as_of: date, out_dir: Path, *, sources: Sequence[Path] = (), archive: EventArchive | None = None,
           full: bool = False, say: Step = quiet) -> IngestReport:
    """Merge what `sources` (file drops) and `archive` hold before `as_of` and the watermark does not
    cover into the canonical events of `out_dir` (events, catalogue, report, then the watermark)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    events_file = out_dir / EVENTS_FILE
    existing = read_events_table(events_file) if events_file.exists() else EVENTS_SCHEMA.empty_table()
    found = read_watermark(out_dir)
    reread = ""
    if full:
        reread = "--full"
    elif found is None:
        reread = "no watermark yet" if not events_file.exists() else (
            f"no watermark beside {events_file} (written by `data load`?)")
    elif not found.describes(events_file):
        reread = f"{events_file} is not the file the watermark describes (rewritten since?)"
    mark = found if not reread and found is not None else Watermark()
    if reread:
        say(f"reading every source again: {reread}")
    known = existing.column("event_id").combine_chunks()
    cutoff = as_of_ms(as_of)
    counts: list[SourceCounts] = []
    parts: list[pa.Table] = []
    for source in sources:
        say(f"file drop {source}")
        taken, source_counts = _take_file(Path(source), as_of, cutoff, mark)
        kept, known = _drop_known(taken, known, source_counts)
        counts.append(source_counts)
        parts.append(kept)
    if archive is not None:
        say(f"archive {archive.name}")
        taken, source_counts = _take_archive(archive, as_of, cutoff, mark)
        kept, known = _drop_known(taken, known, source_counts)
        counts.append(source_counts)
        parts.append(kept)
    new_rows = sum(part.num_rows for part in parts)
    if new_rows == 0 and not events_file.exists():
        what = "; ".join(f"{c.kind} {c.source}: "
                         + (c.note or f"{c.rows_in:,} rows before it, {c.later:,} later") for c in counts)
        raise DataError(f"nothing to ingest before {as_of} ({what or 'no file drop or archive given'})")
    mark.as_of = max(filter(None, [mark.as_of, as_of.isoformat()]))
    events = pa.concat_tables([existing, *parts]) if new_rows else existing

    def report(written: bool) -> IngestReport:
        return IngestReport(as_of, out_dir, counts, existing.num_rows, events.num_rows, written, reread,
                            watermark_path(out_dir), dataset_counts(events), time.perf_counter() - started)

    if new_rows:
        say(f"writing {events.num_rows:,} events (+{new_rows:,}) and the catalogue into {out_dir}")
        result = write_dataset(out_dir, events, build_catalog(events), lambda _paths: report(True))
    else:
        say("nothing new: the canonical events stay as they are")
        result = report(False)
    stat = events_file.stat()
    mark.events = {"rows": events.num_rows, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    mark.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    _write_watermark(out_dir, mark)
    return result


def _take_file(path: Path, as_of: date, cutoff: int, mark: Watermark) -> tuple[pa.Table, SourceCounts]:
    """The rows of a file drop before the as-of date that the watermark does not cover."""
    key = str(path.resolve())
    counts = SourceCounts(key, FILE_DROP)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"file drop {path} cannot be read: {exc.strerror or exc}") from None
    entry = mark.files.get(key)
    unchanged = (entry is not None and entry.get("bytes") == stat.st_size
                 and entry.get("mtime_ns") == stat.st_mtime_ns)
    before = date.fromisoformat(entry["before"]) if unchanged and entry is not None else None
    if before is not None and as_of <= before:
        counts.note = f"unchanged since the last run, taken up to {before}"
        return EVENTS_SCHEMA.empty_table(), counts
    cleaned = clean_online_retail(path)
    events = cleaned.events
    counts.files = 1
    counts.rejected = sum(cleaned.rejected.values())
    times = _millis(events)
    window = times < cutoff
    if before is not None:  # rows before `before` were taken by an earlier run
        window &= times >= as_of_ms(before)
        counts.note = f"unchanged, taken up to {before} before"
    counts.later = int((times >= cutoff).sum())
    counts.rows_in = int(window.sum())
    mark.files[key] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "before": as_of.isoformat()}
    return events.filter(pa.array(window)), counts


def _take_archive(archive: EventArchive, as_of: date, cutoff: int, mark: Watermark
                  ) -> tuple[pa.Table, SourceCounts]:
    """The purchases of the archive's files of dates before the as-of date not taken yet."""
    key = archive.name
    counts = SourceCounts(key, ARCHIVE)
    try:
        files = archive.files()
    except OSError as exc:  # an unreachable object store, a folder we may not read
        raise DataError(f"event archive {archive.name} cannot be listed: {exc}") from None
    if not files:
        counts.note = "no archive yet (the streaming sidecar has written nothing)"
        return EVENTS_SCHEMA.empty_table(), counts
    taken = dict(mark.archive.get(key, {}))
    tables = []
    for file in files:
        day = file.event_date.isoformat()
        if file.event_date >= as_of:
            counts.later += archive.count_rows(file)
            continue
        if file.batch_id <= taken.get(day, -1):
            continue
        try:
            table = archive.read_file(file)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"archive file {file.path} is unreadable: {exc}") from None
        counts.files += 1
        counts.rows_in += table.num_rows
        purchases = table.filter(pc.equal(table.column("event_type"), EVENT_TYPE_PURCHASE))
        counts.other_types += table.num_rows - purchases.num_rows
        # An event date before the as-of date means every row is before it; checked all the same, so
        # a file in the wrong folder cannot bring a later event in.
        early = _millis(purchases) < cutoff
        counts.later += int((~early).sum())
        tables.append(purchases.filter(pa.array(early)))
        taken[day] = max(taken.get(day, -1), file.batch_id)
    if not counts.files and not counts.later:
        counts.note = "nothing new"
    mark.archive[key] = dict(sorted(taken.items()))
    return (pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()), counts


def _drop_known(table: pa.Table, known: pa.Array, counts: SourceCounts) -> tuple[pa.Table, pa.Array]:
    """`table` without the event ids in `known` or repeated within it (the first is kept), and `known`
    with the kept ids added."""
    ids = table.column("event_id").combine_chunks()
    repeated = np.asarray(pc.is_in(ids, value_set=known).to_numpy(zero_copy_only=False), dtype=bool)
    repeated |= pd.Series(ids.to_numpy(zero_copy_only=False)).duplicated(keep="first").to_numpy()
    kept = table.filter(pa.array(~repeated))
    counts.duplicates = int(repeated.sum())
    counts.added = kept.num_rows
    return kept, pa.concat_arrays([known, kept.column("event_id").combine_chunks()])


def _millis(events: pa.Table) -> np.ndarray:
    values: np.ndarray = pc.cast(events.column("timestamp"), pa.int64()).to_numpy()
    return values


def _write_watermark(out_dir: Path, mark: Watermark) -> None:
    """Written whole under a temporary name, then renamed: a reader sees the old or the new watermark."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{WATERMARK_FILE}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(mark.as_dict(), indent=2) + "\n")
        os.chmod(name, _FILE_MODE)
        os.replace(name, watermark_path(out_dir))
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
