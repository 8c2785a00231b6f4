"""The event archive on object storage: the sidecar's batch writer appends to an S3 bucket (a real
S3-protocol server, `tests/integration/object_store.py`), a replayed micro-batch adds nothing, and the
nightly ingest reads the bucket into the same canonical events as from a local folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from cli import app
from finegrain.data.replay import replay_events
from finegrain.data.retail import read_events
from finegrain.dates import data_end
from finegrain.events.archive import EventArchive
from finegrain.events.validation import validate_event
from finegrain.schemas import BehaviorEvent, EventType
from finegrain.settings import Settings
from spark_jobs.stream.batch import BatchProcessor, Record
from tests.integration.object_store import CREDENTIALS, archive_uri, s3_server

BATCH = 400


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # pyarrow's S3 client reads them, as in production
    try:
        with s3_server(tmp_path_factory.mktemp("s3") / "server.log") as address:
            yield address
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def last_day_events(retail_data: Path) -> list[BehaviorEvent]:
    """The data's last day, replayed as the API would have accepted it (purchases with synthetic views
    and clicks), validated as the API validates."""
    events = read_events(retail_data)
    end = data_end(events)
    planned = replay_events(events, end - timedelta(days=1), end)
    now_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    checked = [validate_event(raw, index, now_ms) for index, raw in enumerate(planned)]
    assert all(isinstance(event, BehaviorEvent) for event in checked)
    return checked  # type: ignore[return-value]


def records(events: list[BehaviorEvent], first_offset: int) -> list[Record]:
    return [Record(0, first_offset + index, event.SerializeToString()) for index, event in enumerate(events)]


def run_batches(settings: Settings, archive: EventArchive, events: list[BehaviorEvent]) -> None:
    """The sidecar's foreachBatch work, micro-batch by micro-batch, with the last batch replayed (what
    Spark does after a crash between the sinks' writes and the checkpoint's commit)."""
    processor = BatchProcessor(settings, archive)
    try:
        starts = list(range(0, len(events), BATCH))
        for batch_id, start in enumerate(starts):
            processor.process(batch_id, records(events[start:start + BATCH], start))
        processor.process(len(starts) - 1, records(events[starts[-1]:], starts[-1]))
    finally:
        processor.close()


def test_the_sidecar_archives_to_a_bucket_and_the_ingest_reads_it(
        s3: str, settings: Settings, retail_data: Path, last_day_events: list[BehaviorEvent],
        tmp_path: Path) -> None:
    uri = archive_uri(s3, "finegrain-events", "shop/archive")
    in_bucket = EventArchive.at(uri)
    assert not in_bucket.is_local and in_bucket.name == "s3://finegrain-events/shop/archive"
    in_bucket.filesystem.create_dir("finegrain-events")  # the operator creates the bucket
    in_folder = EventArchive.at(tmp_path / "archive")
    run_batches(settings, in_bucket, last_day_events)
    run_batches(settings, in_folder, last_day_events)

    # One object per micro-batch and event date, written in place (no staging object left behind),
    # and the replayed batch replaced its object instead of adding rows.
    batches = -(-len(last_day_events) // BATCH)
    objects = in_bucket.filesystem.get_file_info(pafs.FileSelector(in_bucket.root, recursive=True))
    names = sorted(Path(info.path).name for info in objects if info.type == pafs.FileType.File)
    assert names == [f"batch-{batch:012d}.parquet" for batch in range(batches)]
    archived = in_bucket.read()
    assert archived.column("event_id").to_pylist() == [event.event_id for event in last_day_events]
    assert archived.equals(in_folder.read())

    # The nightly ingest of the next day, through the CLI, from the bucket and from the folder.
    next_day = data_end(read_events(retail_data)).isoformat()
    outcomes = {}
    for name, location in (("bucket", uri), ("folder", in_folder.root)):
        result = CliRunner().invoke(app, ["data", "ingest", "--as-of", next_day, "--no-source", "--archive",
                                          location, "--out", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
        outcomes[name] = json.loads(result.output.strip().splitlines()[-1])
        assert outcomes[name]["sources"][0]["source"] == (in_bucket if name == "bucket" else in_folder).name
    purchases = sum(1 for event in last_day_events if event.type == EventType.PURCHASE)
    assert outcomes["bucket"]["sources"][0]["added"] == purchases
    assert read_events(tmp_path / "bucket").equals(read_events(tmp_path / "folder"))

    # Run again: the watermark knows the bucket's batches, nothing is read twice.
    again = CliRunner().invoke(app, ["data", "ingest", "--as-of", next_day, "--no-source", "--archive", uri,
                                     "--out", str(tmp_path / "bucket"), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output.strip().splitlines()[-1])["sources"][0]["files"] == 0


def test_an_unreachable_or_malformed_archive_is_a_clear_error(s3: str, tmp_path: Path) -> None:
    host, _, port = s3.rpartition(":")
    closed = archive_uri(f"{host}:{int(port) + 1 if int(port) < 65535 else 1}", "finegrain-events", "x")
    for location, message in ((closed, "cannot be listed"), ("nosuch://bucket/x", "event archive 'nosuch")):
        result = CliRunner().invoke(app, ["data", "ingest", "--as-of", "2020-01-01", "--no-source",
                                          "--archive", location, "--out", str(tmp_path / "out")])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
