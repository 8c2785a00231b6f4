"""The event archive: every accepted behaviour event, appended once, as Parquet the batch jobs read.

Layout (`docs/storage.md`): `<archive>/event_date=YYYY-MM-DD/batch-<batch id, 12 digits>.parquet`,
one file per micro-batch and event date, in the canonical event schema
(`finegrain.data.retail.EVENTS_SCHEMA`: the loader's columns, `event_type` holding view / click /
add_to_cart / purchase), rows in topic order. `pyarrow.dataset` or Spark read the folder as one table
partitioned by `event_date`.

Where: a local folder, or any URI `pyarrow.fs` opens (`s3://bucket/prefix`, `gs://bucket/prefix`,
`hdfs://namenode/path`, `file:///path`), so production points `FINEGRAIN_EVENT_ARCHIVE` at object
storage with no code change. An S3 URI takes pyarrow's options as query parameters (for instance
`?endpoint_override=host:port&scheme=http` for MinIO or another S3-compatible store); credentials
come from the usual AWS variables, never from the URI.

Exactly once: a file is named after the micro-batch that wrote it, and appears whole or not at all.
Spark replays a micro-batch after a crash with the same batch id and the same offsets, so a replay
writes the same rows to the same names and replaces the file instead of adding a second copy. On a
local or mounted file system the file is written under a hidden temporary name and renamed into place;
on an object store one PUT is already atomic (readers see the old object, the new one, or none), and a
rename would be a copy, so the file is written to its name directly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from finegrain.data.retail import EVENTS_SCHEMA
from finegrain.errors import DataError
from finegrain.events.schema import TYPE_NAMES
from finegrain.schemas import BehaviorEvent

EVENT_TYPE_NAMES = {number: name for name, number in TYPE_NAMES.items()}
PARTITION = "event_date"
_FILE_PATTERN = re.compile(rf"^{PARTITION}=(\d{{4}}-\d{{2}}-\d{{2}})/batch-(\d{{12}})\.parquet$")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class ArchiveFile:
    """One file of the archive: where it is on the archive's file system, the event date it holds and
    the micro-batch that wrote it."""

    path: str
    event_date: date
    batch_id: int


@dataclass(frozen=True)
class EventArchive:
    """The archive at one location: the file system that holds it and its root on that file system."""

    filesystem: pafs.FileSystem
    root: str
    # How the location is named in messages and in the ingest's watermark: the resolved folder for a
    # local archive, `<scheme>://<root>` (no query: options are not part of the identity) otherwise.
    name: str

    @classmethod
    def at(cls, location: str | Path) -> EventArchive:
        """The archive at a local folder or a `pyarrow.fs` URI; a malformed URI or an unknown scheme is
        a `DataError` naming it."""
        text = str(location)
        if not _URI_SCHEME.match(text):
            folder = Path(text).expanduser().resolve()
            return cls(pafs.LocalFileSystem(), folder.as_posix(), str(folder))
        try:
            filesystem, root = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise DataError(f"event archive {text!r}: {exc}") from None
        root = root.rstrip("/")
        if filesystem.type_name == "local":
            return cls(filesystem, root, root)
        return cls(filesystem, root, f"{text.split('://', 1)[0]}://{root}")

    @property
    def is_local(self) -> bool:
        return bool(self.filesystem.type_name == "local")

    def exists(self) -> bool:
        return bool(self.filesystem.get_file_info(self.root).type == pafs.FileType.Directory)

    def write_batch(self, batch_id: int, events: Sequence[BehaviorEvent]) -> dict[str, int]:
        """Write one micro-batch's events, one file per event date; returns rows per date."""
        by_date: dict[str, list[BehaviorEvent]] = {}
        for event in events:
            by_date.setdefault(event_date(event.timestamp_ms), []).append(event)
        for day, day_events in by_date.items():
            folder = f"{self.root}/{PARTITION}={day}"
            final = f"{folder}/{batch_file_name(batch_id)}"
            table = events_table(day_events)
            if not self.is_local:
                pq.write_table(table, final, filesystem=self.filesystem)
                continue
            self.filesystem.create_dir(folder, recursive=True)
            staging = f"{folder}/.{batch_file_name(batch_id)}.{uuid.uuid4().hex}.tmp"
            try:
                pq.write_table(table, staging, filesystem=self.filesystem)
                self.filesystem.move(staging, final)  # a rename: a reader sees no file or the whole one
            except BaseException:
                if _is_file(self.filesystem, staging):
                    self.filesystem.delete_file(staging)
                raise
        return {day: len(day_events) for day, day_events in sorted(by_date.items())}

    def files(self) -> list[ArchiveFile]:
        """The archive's complete files, by event date then batch id. Staging files (hidden, `.tmp`)
        and anything not named like a batch file are not part of the archive."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        found = []
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            match = _FILE_PATTERN.match(PurePosixPath(info.path).relative_to(self.root).as_posix())
            if match is None:
                continue
            try:
                day = date.fromisoformat(match.group(1))
            except ValueError:  # a folder named like a partition but not a real date
                continue
            found.append(ArchiveFile(info.path, day, int(match.group(2))))
        return sorted(found, key=lambda file: (file.event_date, file.batch_id))

    def read_file(self, file: ArchiveFile) -> pa.Table:
        return pq.read_table(file.path, schema=EVENTS_SCHEMA, filesystem=self.filesystem)

    def count_rows(self, file: ArchiveFile) -> int:
        with self.filesystem.open_input_file(file.path) as handle:
            return int(pq.ParquetFile(handle).metadata.num_rows)

    def read(self) -> pa.Table:
        """Every archived event (empty with the canonical schema when nothing is archived yet)."""
        tables = [self.read_file(file) for file in self.files()]
        return pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()


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


def _is_file(filesystem: pafs.FileSystem, path: str) -> bool:
    return bool(filesystem.get_file_info(path).type == pafs.FileType.File)
