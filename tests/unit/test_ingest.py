"""The nightly ingest (`finegrain.data.ingest`, `finegrain data ingest | watermark`) on a small file drop
and an event archive written by the sidecar's own archive writer: what is taken before the as-of
date, duplicates dropped by event id (a purchase replayed from the CSV against its own row), views and
clicks left in the archive, the watermark, idempotent re-runs and late files."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from finegrain.data.ingest import ARCHIVE, FILE_DROP, ingest, read_watermark, watermark_path
from finegrain.data.layout import CATALOG_FILE, EVENTS_FILE, REPORT_FILE
from finegrain.data.retail import load_online_retail, read_catalog, read_events
from finegrain.errors import DataError
from finegrain.events.archive import EventArchive
from finegrain.schemas import BehaviorEvent, EventContext, EventType
from tests.unit.test_retail_loader import row, write_csv

AS_OF = date(2010, 1, 6)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def event(event_id: str, kind: int, when: str, *, user: str = "13085", item: str = "85123A",
          invoice: str = "") -> BehaviorEvent:
    extra = {"invoice": invoice} if invoice else {}
    return BehaviorEvent(event_id=event_id, user_id=user, item_id=item, type=kind, quantity=2, price=2.55,
                         timestamp_ms=ms(when), context=EventContext(session_id="s-1", extra=extra))


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """Three clean lines on 4 and 5 January (event ids 500001-1, 500002-2, 500003-3), one after the
    as-of date (500004-4) and a cancellation the loader rejects."""
    return write_csv(tmp_path / "drop.csv.gz", [
        row(invoice="500001", date="2010-01-04 10:00:00"),
        row(invoice="500002", code="22423", description="REGENCY CAKESTAND 3 TIER",
            date="2010-01-05 09:00:00", customer="12346"),
        row(invoice="500003", code="85123A", date="2010-01-05 11:30:00", customer="12347"),
        row(invoice="500004", date="2010-01-07 08:00:00"),
        row(invoice="C500005", date="2010-01-05 12:00:00"),
    ])


@pytest.fixture
def archive(tmp_path: Path) -> EventArchive:
    """What the sidecar would have archived: batch 0 replays invoice 500001 (same event id as the CSV
    line, no description) with a synthetic view before it; batch 1 has a client's new purchase and a
    click; batch 2 repeats that purchase (posted twice) and holds a purchase after the as-of date."""
    folder = EventArchive.at(tmp_path / "archive")
    write_batch = folder.write_batch
    write_batch(0, [event("500001-1:synthetic:0", EventType.VIEW, "2010-01-04 09:58:00"),
                            event("500001-1", EventType.PURCHASE, "2010-01-04 10:00:00", invoice="500001")])
    write_batch(1, [event("app-1", EventType.PURCHASE, "2010-01-05 15:00:00", user="99999",
                                  item="22423", invoice="web-1"),
                            event("app-2", EventType.CLICK, "2010-01-05 15:01:00", user="99999")])
    write_batch(2, [event("app-1", EventType.PURCHASE, "2010-01-05 15:00:00", user="99999",
                                  item="22423", invoice="web-1"),
                            event("app-3", EventType.PURCHASE, "2010-01-06 08:00:00", user="99999")])
    return folder


def by_kind(report: object) -> dict[str, dict[str, object]]:
    return {source["kind"]: source for source in report.as_dict()["sources"]}  # type: ignore[attr-defined]


def test_a_run_merges_the_file_drop_and_the_archive_before_the_as_of_date(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    report = ingest(AS_OF, out, sources=[drop], archive=archive)

    events = read_events(out)
    # The CSV's three lines before 6 January, then the client's purchase from the archive, once.
    assert events["event_id"].tolist() == ["500001-1", "500002-2", "500003-3", "app-1"]
    assert set(events["event_type"]) == {"purchase"}
    # The replayed purchase is dropped against the CSV's row, which keeps its description.
    assert events.loc[0, "description"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert events.loc[3, "invoice"] == "web-1" and events.loc[3, "user_id"] == "99999"
    sources = by_kind(report)
    assert sources[FILE_DROP] | {"source": ""} == {
        "source": "", "kind": FILE_DROP, "files": 1, "rows_in": 3, "rejected": 1, "later": 1,
        "other_types": 0, "duplicates": 0, "added": 3, "note": ""}
    # Archive: 5 events of dates before the as-of date in 3 files (the 6 January file waits), of which
    # a view and a click stay in the archive, 500001-1 and the second app-1 are duplicates.
    assert sources[ARCHIVE] | {"source": ""} == {
        "source": "", "kind": ARCHIVE, "files": 3, "rows_in": 5, "rejected": 0, "later": 1,
        "other_types": 2, "duplicates": 2, "added": 1, "note": ""}
    assert report.events_before == 0 and report.events_after == 4 and report.written
    # The catalogue and the report describe the merged events.
    assert read_catalog(out)["item_id"].tolist() == ["22423", "85123A"]
    written = json.loads((out / REPORT_FILE).read_text())
    assert written["dataset"] == "ingest" and written["events_after"] == 4
    assert written["counts"]["users"] == 4


def test_rerunning_a_date_reads_nothing_and_rewrites_nothing(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    ingest(AS_OF, out, sources=[drop], archive=archive)
    before = {name: (out / name).stat().st_mtime_ns for name in (EVENTS_FILE, CATALOG_FILE)}
    events = pq.read_table(out / EVENTS_FILE)

    again = ingest(AS_OF, out, sources=[drop], archive=archive)

    assert not again.written and again.added == 0 and not again.reread
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    assert pq.read_table(out / EVENTS_FILE).equals(events)
    sources = by_kind(again)
    assert sources[FILE_DROP]["files"] == 0 and "unchanged" in str(sources[FILE_DROP]["note"])
    assert sources[ARCHIVE]["files"] == 0 and sources[ARCHIVE]["rows_in"] == 0


def test_the_next_day_takes_what_was_later_and_what_arrived_late(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    ingest(AS_OF, out, sources=[drop], archive=archive)
    # The sidecar goes on: a purchase of the 5th arrives late (a higher batch id in an old date).
    archive.write_batch(3, [event("late-1", EventType.PURCHASE, "2010-01-05 23:59:00", user="77777")])

    report = ingest(date(2010, 1, 8), out, sources=[drop], archive=archive)

    events = read_events(out)
    assert events["event_id"].tolist() == ["500001-1", "500002-2", "500003-3", "app-1", "500004-4",
                                           "late-1", "app-3"]
    sources = by_kind(report)
    # Of the unchanged CSV only the rows from the previous as-of date on are read again.
    assert sources[FILE_DROP]["rows_in"] == 1 and sources[FILE_DROP]["added"] == 1
    assert sources[ARCHIVE]["files"] == 2 and sources[ARCHIVE]["added"] == 2
    mark = read_watermark(out)
    assert mark is not None and mark.as_of == "2010-01-08"
    assert mark.archive[archive.name] == {"2010-01-04": 0, "2010-01-05": 3, "2010-01-06": 2}
    assert mark.files[str(drop.resolve())]["before"] == "2010-01-08"
    assert mark.events["rows"] == 7


def test_an_earlier_date_after_a_later_one_keeps_the_events(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    """Re-running an old day (a backfill) removes nothing: jobs read only what is before their date."""
    out = tmp_path / "events"
    ingest(date(2010, 1, 8), out, sources=[drop], archive=archive)
    rows = read_events(out)

    report = ingest(AS_OF, out, sources=[drop], archive=archive)

    assert not report.written and read_events(out).equals(rows)
    mark = read_watermark(out)
    assert mark is not None and mark.as_of == "2010-01-08"


def test_events_rewritten_under_the_watermark_are_read_again_without_duplicates(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    ingest(AS_OF, out, sources=[drop], archive=archive)
    load_online_retail(drop, out)  # `data load` replaces the events with the whole CSV

    report = ingest(AS_OF, out, sources=[drop], archive=archive)

    assert "not the file the watermark describes" in report.reread
    events = read_events(out)
    assert events["event_id"].tolist() == ["500001-1", "500002-2", "500003-3", "500004-4", "app-1"]
    assert by_kind(report)[FILE_DROP]["duplicates"] == 3  # every CSV line before the date is there
    assert by_kind(report)[ARCHIVE]["duplicates"] == 2


def test_full_reads_every_source_again_and_adds_nothing_twice(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    ingest(AS_OF, out, sources=[drop], archive=archive)
    events = pq.read_table(out / EVENTS_FILE)

    report = ingest(AS_OF, out, sources=[drop], archive=archive, full=True)

    assert report.reread == "--full" and report.added == 0 and not report.written
    assert by_kind(report)[ARCHIVE]["duplicates"] == 3 and by_kind(report)[FILE_DROP]["duplicates"] == 3
    assert pq.read_table(out / EVENTS_FILE).equals(events)


def test_the_archive_alone_and_staging_files_are_ignored(archive: EventArchive, tmp_path: Path) -> None:
    staging = Path(archive.root) / "event_date=2010-01-05" / ".batch-000000000009.parquet.abc.tmp"
    staging.write_bytes(b"partial")
    out = tmp_path / "events"

    report = ingest(AS_OF, out, archive=archive)

    assert read_events(out)["event_id"].tolist() == ["500001-1", "app-1"]
    assert by_kind(report)[ARCHIVE]["files"] == 3


def test_errors_name_the_problem(drop: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file drop .*nope\.csv\.gz cannot be read"):
        ingest(AS_OF, tmp_path / "a", sources=[tmp_path / "nope.csv.gz"])
    nothing = r"nothing to ingest before 2009-06-01 \(file drop .*: 0 rows before it, 4 later; archive .*: no"
    with pytest.raises(DataError, match=nothing):
        ingest(date(2009, 6, 1), tmp_path / "b", sources=[drop],
               archive=EventArchive.at(tmp_path / "no-archive"))
    out = tmp_path / "c"
    ingest(AS_OF, out, sources=[drop])
    watermark_path(out).write_text("{not json")
    with pytest.raises(DataError, match=r"watermark .* is unreadable .*--full"):
        ingest(AS_OF, out, sources=[drop])


def test_cli_ingest_prints_rows_per_source_and_the_json_line(
        drop: Path, archive: EventArchive, tmp_path: Path) -> None:
    out = tmp_path / "events"
    args = ["data", "ingest", "--as-of", "2010-01-06", "--source", str(drop), "--archive", archive.root,
            "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "Ingest as of 2010-01-06" in result.stdout and "duplicates dropped" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["added"] == 4 and figures["events_after"] == 4

    shown = CliRunner().invoke(app, ["data", "watermark", "--out", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    mark = json.loads(shown.stdout.strip().splitlines()[-1])
    assert mark["as_of"] == "2010-01-06" and mark["events"]["rows"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--as-of", "2010-13-01"], "error: bad --as-of '2010-13-01': expected a date as YYYY-MM-DD"),
    (["--as-of", "2010-01-06", "--source", "x.csv.gz", "--no-source"],
     "error: --source and --no-source contradict each other: give one"),
    (["--as-of", "2010-01-06", "--no-source", "--archive", "a", "--no-archive"],
     "error: --archive and --no-archive contradict each other: give one"),
])
def test_cli_ingest_refuses_bad_options_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "ingest", *args, "--out", str(tmp_path / "out")])

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [message]


def test_cli_ingest_of_a_param_that_is_not_a_file_names_it(tmp_path: Path) -> None:
    """A DAG param holding shell code arrives as one argument: a file name that does not exist."""
    hostile = "'; touch injected; '"
    result = CliRunner().invoke(app, ["data", "ingest", "--as-of", "2010-01-06", "--source", hostile,
                                      "--no-archive", "--out", str(tmp_path / "out")])

    assert result.exit_code == 2
    assert hostile in result.stderr and "cannot be read" in result.stderr
    assert not Path("injected").exists() and not (tmp_path / "injected").exists()


def test_cli_watermark_without_an_ingest_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "watermark", "--out", str(tmp_path)])

    assert result.exit_code == 2
    assert "nothing was ingested" in result.stderr


def test_the_watermark_is_readable_json_with_world_read(drop: Path, tmp_path: Path) -> None:
    out = tmp_path / "events"
    ingest(AS_OF, out, sources=[drop])

    mode = os.stat(watermark_path(out)).st_mode & 0o777
    assert mode == 0o644
    assert json.loads(watermark_path(out).read_text())["format"] == 1


def test_an_archive_location_is_a_folder_or_a_uri(archive: EventArchive, tmp_path: Path) -> None:
    by_uri = EventArchive.at(f"file://{archive.root}")
    assert by_uri.is_local and by_uri.root == archive.root
    assert [file.batch_id for file in by_uri.files()] == [file.batch_id for file in archive.files()]
    assert by_uri.read().equals(archive.read())
    # A relative folder is resolved, so the watermark names one archive however it was spelled.
    assert EventArchive.at(os.path.relpath(archive.root)).name == archive.name
    with pytest.raises(DataError, match=r"event archive 'nosuch://bucket/x'"):
        EventArchive.at("nosuch://bucket/x")
    assert not EventArchive.at(tmp_path / "nothing-yet").exists()
    assert EventArchive.at(tmp_path / "nothing-yet").files() == []
