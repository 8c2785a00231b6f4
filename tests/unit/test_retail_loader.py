"""The Online Retail II loader on small hand-written gzip CSVs, and `finegrain data load | synth` errors."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from finegrain.data.retail import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    REJECT_REASONS,
    REPORT_FILE,
    load_online_retail,
    read_catalog,
    read_events,
)
from finegrain.errors import DataError

HEADER = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]


def row(
    invoice: str = "500001",
    code: str = "85123A",
    description: str = "WHITE HANGING HEART T-LIGHT HOLDER",
    quantity: str = "6",
    date: str = "2010-01-04 10:00:00",
    price: str = "2.55",
    customer: str = "13085",
    country: str = "United Kingdom",
) -> list[str]:
    return [invoice, code, description, quantity, date, price, customer, country]


def write_csv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# Each line: the row, and the reason it must be rejected for (None: clean). Several rows fail more
# than one rule, to show that the first failing rule in REJECT_REASONS order wins.
CASES: list[tuple[list[str], str | None]] = [
    (row(invoice="500001"), None),
    (row(quantity="six"), "unparseable"),
    (row(price="2,55"), "unparseable"),
    (row(date="2010-13-45 10:00:00"), "unparseable"),
    (row(customer="13O85"), "unparseable"),
    (row(quantity="x", customer=""), "unparseable"),
    (row(invoice=""), "unparseable"),
    (row(customer=""), "missing_customer"),
    (row(invoice="C500002", customer="", quantity="-6"), "missing_customer"),
    (row(invoice="C500003", quantity="-6"), "cancellation"),
    (row(invoice="C500004", code="POST", price="0"), "cancellation"),
    (row(quantity="0"), "non_positive_quantity"),
    (row(quantity="-3", price="0", code="POST"), "non_positive_quantity"),
    (row(price="0"), "non_positive_price"),
    (row(price="-11062.06", code="B"), "non_positive_price"),
    (row(code="POST"), "non_product_code"),
    (row(code="gift_0001_20"), "non_product_code"),
    (row(code="1234A"), "non_product_code"),
    (row(code=""), "non_product_code"),
    # A clean row whose values need normalising.
    (
        row(invoice=" 500005 ", code=" 79323w ", description=" WHITE CHERRY LIGHTS  ", customer="13086.0"),
        None,
    ),
]


@pytest.fixture
def cases_csv(tmp_path: Path) -> Path:
    rows = [case for case, _ in CASES]
    # A malformed CSV row (one field too many) just before the last clean row.
    rows.insert(-1, [*row(), "extra"])
    return write_csv(tmp_path / "cases.csv.gz", rows)


def test_each_rejected_row_is_counted_once_under_its_first_failing_reason(
    cases_csv: Path, tmp_path: Path
) -> None:
    report = load_online_retail(cases_csv, tmp_path / "out")

    expected = dict.fromkeys(REJECT_REASONS, 0)
    for _, reason in CASES:
        if reason is not None:
            expected[reason] += 1
    expected["unparseable"] += 1  # the malformed row
    assert report.rejected == expected
    assert report.rows_read == len(CASES) + 1
    assert report.clean_rows == 2
    assert report.clean_rows + sum(report.rejected.values()) == report.rows_read
    assert list(report.rejected) == list(REJECT_REASONS)


def test_clean_rows_are_normalised_and_numbered_by_their_row_in_the_file(
    cases_csv: Path, tmp_path: Path
) -> None:
    load_online_retail(cases_csv, tmp_path / "out")
    events = read_events(tmp_path / "out")

    assert pq.read_schema(tmp_path / "out" / EVENTS_FILE).equals(EVENTS_SCHEMA)
    first, last = events.iloc[0], events.iloc[1]
    assert first["event_id"] == "500001-1"
    # Data row 21: the malformed row 20 still counts, so an id does not depend on other rows parsing.
    assert last["event_id"] == "500005-21"
    assert last["invoice"] == "500005"
    assert last["user_id"] == "13086"
    assert last["item_id"] == "79323W"
    assert last["description"] == "WHITE CHERRY LIGHTS"
    assert first["user_id"] == "13085"
    assert first["event_type"] == "purchase"
    assert first["quantity"] == 6
    assert first["price"] == pytest.approx(2.55)
    # Naive UK local time kept as the same wall-clock time, labelled UTC.
    assert first["timestamp"] == pd.Timestamp("2010-01-04 10:00:00", tz="UTC")
    assert str(events["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert str(events["quantity"].dtype) == "int32"


def test_catalogue_takes_the_most_frequent_description_and_the_median_price(tmp_path: Path) -> None:
    cake = "REGENCY CAKESTAND 3 TIER"
    rows = [
        row(code="22423", description=cake, price="12.75", date="2010-03-15 13:55:00"),
        row(code="22423", description=cake + "  ", price="10.95"),  # same name once stripped
        row(code="22423", description=cake, price="12.75"),
        row(code="22423", description="CAKESTAND DAMAGED", price="1.00"),
        row(code="22423", description="CAKESTAND DAMAGED", price="15.00", date="2010-12-09 16:53:00"),
        # More missing descriptions than any name: a missing one never wins.
        row(code="22423", description="", price="11.00"),
        row(code="22423", description="", price="12.00"),
        row(code="22423", description="", price="12.75"),
        row(code="22423", description="", price="10.95"),
        # Rejected rows do not vote and do not count towards the price.
        *[row(invoice="C500009", code="22423", description="ZZ RETURNED", quantity="-1", price="0.01")] * 5,
        # A tie goes to the alphabetically first name (" " sorts before ",").
        row(code="22868", description="NUMBER TILE COTTAGE GARDEN, 0", price="1.95"),
        row(code="22868", description="NUMBER TILE COTTAGE GARDEN 0", price="2.10"),
        row(code="21232", description="", price="1.25"),
    ]
    load_online_retail(write_csv(tmp_path / "catalog.csv.gz", rows), tmp_path / "out")
    catalog = read_catalog(tmp_path / "out").set_index("item_id")

    assert pq.read_schema(tmp_path / "out" / CATALOG_FILE).equals(CATALOG_SCHEMA)
    assert list(catalog.index) == ["21232", "22423", "22868"]
    cakestand = catalog.loc["22423"]
    assert cakestand["description"] == cake
    # Prices 1.00 10.95 10.95 11.00 12.00 12.75 12.75 12.75 15.00: the middle one.
    assert cakestand["price"] == pytest.approx(12.00)
    assert cakestand["lines"] == 9
    assert cakestand["first_seen"] == pd.Timestamp("2010-01-04 10:00:00", tz="UTC")
    assert cakestand["last_seen"] == pd.Timestamp("2010-12-09 16:53:00", tz="UTC")
    assert catalog.loc["22868", "description"] == "NUMBER TILE COTTAGE GARDEN 0"
    assert catalog.loc["22868", "price"] == pytest.approx((1.95 + 2.10) / 2)
    assert pd.isna(catalog.loc["21232", "description"])


def test_report_json_has_the_figures_of_the_run(cases_csv: Path, tmp_path: Path) -> None:
    report = load_online_retail(cases_csv, tmp_path / "out")

    written = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert written["clean_rows"] == 2
    assert written["users"] == 2
    assert written["baskets"] == 2
    assert written["rejected"] == report.rejected
    assert written["first_timestamp"] == "2010-01-04T10:00:00+00:00"


def test_a_failed_write_keeps_the_previous_data_set_and_leaves_no_temporary_file(
    cases_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    load_online_retail(cases_csv, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    other = write_csv(tmp_path / "other.csv.gz", [row(code="21232", customer="12346")])
    real_write = pq.write_table
    calls: list[Any] = []

    def disk_full_on_catalogue(table: Any, where: Any, **kwargs: Any) -> None:
        calls.append(where)
        if len(calls) == 1:
            real_write(table, where, **kwargs)
            return
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full_on_catalogue)
    with pytest.raises(OSError, match="No space left"):
        load_online_retail(other, out)

    assert len(calls) == 2  # the events were fully written before the catalogue failed
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_failed_first_write_leaves_an_empty_folder(
    cases_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(table: Any, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        load_online_retail(cases_csv, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def _plain_csv(path: Path) -> Path:
    path.write_text(",".join(HEADER) + "\n" + ",".join(row()) + "\n")
    return path


def _without_price(path: Path) -> Path:
    header = [name for name in HEADER if name != "Price"]
    return write_csv(
        path, [[value for name, value in zip(HEADER, row(), strict=True) if name != "Price"]], header
    )


def _header_only(path: Path) -> Path:
    return write_csv(path, [])


def _empty_gzip(path: Path) -> Path:
    path.write_bytes(gzip.compress(b""))
    return path


def _zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _truncated(path: Path) -> Path:
    data = gzip.compress((",".join(HEADER) + "\n" + (",".join(row()) + "\n") * 2000).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def _latin1(path: Path) -> Path:
    body = (",".join(row()) + "\n") * 50_000  # past the header check's first read
    path.write_bytes(
        gzip.compress((",".join(HEADER) + "\n" + body).encode() + b"500001,85123A,CAF\xc9,1,x,1,1,UK\n")
    )
    return path


def _no_clean_row(path: Path) -> Path:
    return write_csv(path, [row(customer=""), row(invoice="C1")])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_plain_csv, "is not gzip-compressed"),
        (_without_price, "missing required column 'Price'"),
        (_header_only, "has a header but no data rows"),
        (_empty_gzip, "is empty: no header row"),
        (_zero_bytes, r"is empty \(0 bytes\)"),
        (_truncated, "truncated|not a readable gzip CSV"),
        (_latin1, "is not a UTF-8 CSV file"),
        (_no_clean_row, "no clean purchase row .*missing_customer 1, cancellation 1"),
    ],
)
def test_bad_input_raises_a_data_error_naming_the_file_and_the_problem(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    source = make(tmp_path / "input.csv.gz")
    with pytest.raises(DataError, match=message) as raised:
        load_online_retail(source, tmp_path / "out")
    assert str(source) in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert not (tmp_path / "out").exists()


def test_a_missing_file_raises_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"source file .*nope\.csv\.gz does not exist"):
        load_online_retail(tmp_path / "nope.csv.gz", tmp_path / "out")


def test_reading_a_folder_without_data_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"no events file at {tmp_path / EVENTS_FILE}"):
        read_events(tmp_path)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_load_with_a_bad_source_exits_2_with_a_one_line_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv.gz"
    result = CliRunner().invoke(
        app, ["data", "load", "--source", str(missing), "--out", str(tmp_path / "out")]
    )

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0]
    assert "does not exist" in lines[0]
    assert "Traceback" not in result.output


def test_cli_load_json_prints_the_figures_as_the_last_line(cases_csv: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "load", "--source", str(cases_csv), "--out", str(tmp_path / "out"), "--json"]
    )

    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["clean_rows"] == 2
    assert figures["rows_read"] == len(CASES) + 1
    assert figures["rejected"]["non_product_code"] == 4
    assert figures["events_path"] == str(tmp_path / "out" / EVENTS_FILE)


def test_cli_synth_rejects_a_scale_below_one_naming_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "synth", "--scale", "0", "--out", str(tmp_path / "out")])

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: --scale must be at least 1, got 0"]


def test_cli_synth_json_on_loaded_data(cases_csv: Path, tmp_path: Path) -> None:
    load_online_retail(cases_csv, tmp_path / "loaded")
    args = [
        "data",
        "synth",
        "--scale",
        "3",
        "--source",
        str(tmp_path / "loaded"),
        "--out",
        str(tmp_path / "x3"),
    ]
    result = CliRunner().invoke(app, [*args, "--json"])

    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["clean_rows"] == 6
    assert figures["users"] == 6
    assert figures["scale"] == 3
    assert read_events(tmp_path / "x3")["event_id"].is_unique


def test_cli_synth_without_loaded_data_names_the_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["data", "synth", "--scale", "2", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
    )

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no events file at {tmp_path / 'empty'}: run `finegrain data load` (or `synth`) first"
    ]
