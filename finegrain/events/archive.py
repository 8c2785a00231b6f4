"""The event archive: every accepted behaviour event, appended once, as Parquet the batch jobs read.

Layout (`docs/storage.md`): `<archive>/event_date=YYYY-MM-DD/batch-<batch id, 12 digits>.parquet`,
one file per micro-batch and event date, in the canonical event schema
(`finegrain.data.retail.EVENTS_SCHEMA`: the loader's columns, `event_type` holding view / click /
add_to_cart / purchase), rows in topic order. `pyarrow.dataset` or Spark read the folder as one table
partitioned by `event_date`.

Exactly once: a file is named after the micro-batch that wrote it and written under a temporary name,
then renamed into place. Spark replays a micro-batch after a crash with the same batch id and the same
offsets, so a replay writes the same rows to the same names and replaces the file instead of adding a
second copy; a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from finegrain.data.retail import EVENTS_SCHEMA
from finegrain.events.schema import TYPE_NAMES
from finegrain.schemas import BehaviorEvent

EVENT_TYPE_NAMES = {number: name for name, number in TYPE_NAMES.items()}
PARTITION = "event_date"
_FILE_PATTERN = re.compile(rf"^{PARTITION}=(\d{{4}}-\d{{2}}-\d{{2}})/batch-(\d{{12}})\.parquet$")


@dataclass(frozen=True)
class ArchiveFile:
    """One file of the archive: the event date it holds and the micro-batch that wrote it."""

    path: Path
    event_date: date
    batch_id: int


def batch_file_name(batch_id: int) -> str:
    return f"batch-{batch_id:012d}.parquet"


def event_date(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).date().isoformat()


def events_table(events: Sequence[BehaviorEvent]) -> pa.Table:
    """The events as rows of the canonical schema. An event names no invoice: a purchase sent with
    `context.extra["invoice"]` keeps it, otherwise its session (or its own id) stands for the basket."""
    def invoice(event: BehaviorEvent) -> str:
        return (event.context.extra.get("invoice") or event.context.session_id or event.event_id)

    return pa.table({
        "event_id": [e.event_id for e in events],
        "user_id": [e.user_id for e in events],
        "item_id": [e.item_id for e in events],
        "event_type": [EVENT_TYPE_NAMES[e.type] for e in events],
        "quantity": pa.array([e.quantity or 1 for e in events], pa.int32()),
        "price": pa.array([e.price for e in events], pa.float64()),
        "timestamp": pa.array([e.timestamp_ms for e in events], pa.int64()).cast(EVENTS_SCHEMA.field(
            "timestamp").type),
        "invoice": [invoice(e) for e in events],
        "country": [e.context.country or None for e in events],
        "description": pa.nulls(len(events), pa.string()),
    }, schema=EVENTS_SCHEMA)


def write_batch(archive: Path, batch_id: int, events: Sequence[BehaviorEvent]) -> dict[str, int]:
    """Write one micro-batch's events, one file per event date; returns rows per date."""
    by_date: dict[str, list[BehaviorEvent]] = {}
    for event in events:
        by_date.setdefault(event_date(event.timestamp_ms), []).append(event)
    for day, day_events in by_date.items():
        folder = archive / f"{PARTITION}={day}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / batch_file_name(batch_id)
        staging = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(events_table(day_events), staging)
        os.replace(staging, final)  # atomic: a reader sees no file or the whole one
    return {day: len(day_events) for day, day_events in sorted(by_date.items())}


def archive_files(archive: Path) -> list[ArchiveFile]:
    """The archive's complete files, by event date then batch id. Staging files (hidden, `.tmp`) and
    anything not named like a batch file are not part of the archive."""
    found = []
    for path in archive.glob(f"{PARTITION}=*/batch-*.parquet"):
        match = _FILE_PATTERN.match(path.relative_to(archive).as_posix())
        if match is None:
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:  # a folder named like a partition but not a real date
            continue
        found.append(ArchiveFile(path, day, int(match.group(2))))
    return sorted(found, key=lambda file: (file.event_date, file.batch_id))


def read_archive(archive: Path) -> pa.Table:
    """Every archived event (empty with the canonical schema when nothing is archived yet)."""
    files = sorted(archive.glob(f"{PARTITION}=*/batch-*.parquet"))
    if not files:
        return EVENTS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(file, schema=EVENTS_SCHEMA) for file in files])
