"""Load the Online Retail II CSV (gzip) into canonical purchase events and an item catalogue.

The clean purchase view is the data set README's: Customer ID present, invoice not a "C"
cancellation, Quantity > 0, Price > 0, StockCode starting with 5 digits. Every other row is counted
once, under the first reason it fails in `REJECT_REASONS` order, so the counts always add up with the
clean rows to the rows read and a rule change shows up as a shift between reasons.

Output folder layout (shared with `finegrain.data.synthetic`, so later jobs take either):
- `events.parquet`: one row per clean purchase line (`EVENTS_SCHEMA`), in file order;
- `catalog.parquet`: one row per item (`CATALOG_SCHEMA`), sorted by `item_id`;
- `report.json`: the counts of the run.

Everything is vectorised in Arrow and NumPy: the 525k-row file loads in a few seconds.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from finegrain.data.layout import CATALOG_FILE, EVENTS_FILE, REPORT_FILE
from finegrain.errors import DataError

REQUIRED_COLUMNS: tuple[str, ...] = (
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
)

# The order matters: a row is counted under the first reason it fails.
REJECT_REASONS: tuple[str, ...] = (
    "unparseable",  # a malformed CSV row, or Invoice/Quantity/Price/InvoiceDate/Customer ID unusable
    "missing_customer",
    "cancellation",
    "non_positive_quantity",
    "non_positive_price",
    "non_product_code",
)

EVENT_TYPE_PURCHASE = "purchase"
INVOICE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# InvoiceDate is naive UK local time. We store it as if it were UTC, unshifted, so a timestamp reads
# back as the wall-clock time printed on the invoice; the shop's hours and the Christmas peak stay
# where they are, and no BST-change hour is duplicated or lost. The label only makes the stored
# instant unambiguous for Spark and for the protobuf `timestamp_ms` (epoch ms, UTC).
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("invoice", pa.string(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("description", pa.string()),
    ]
)

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("first_seen", TIMESTAMP_TYPE, nullable=False),
        pa.field("last_seen", TIMESTAMP_TYPE, nullable=False),
        pa.field("lines", pa.int64(), nullable=False),
    ]
)

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER_BYTES = 1 << 16
# mkstemp creates owner-only files; data sets are read by other users too (Spark, Airflow workers).
_FILE_MODE = 0o644
_INT32_MAX = 2**31 - 1
_QUANTITY_PATTERN = r"^[+-]?\d+(\.0*)?$"
_PRICE_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# Spreadsheet exports often turn the ID into "13085.0"; more than 15 digits would not survive float64.
_CUSTOMER_PATTERN = r"^\d{1,15}(\.0*)?$"
_PRODUCT_CODE_PATTERN = r"^\d{5}"

Progress = Callable[[str], None]


class DatasetReport(Protocol):
    """What `write_dataset` needs of a run's report: its figures as a JSON-ready dict."""

    def as_dict(self) -> dict[str, Any]: ...


ReportT = TypeVar("ReportT", bound=DatasetReport)


@dataclass(frozen=True)
class LoadReport:
    """What one load read, kept and rejected; also written as `report.json` beside the Parquet files."""

    source: Path
    rows_read: int
    clean_rows: int
    users: int
    items: int
    baskets: int
    user_item_pairs: int
    countries: int
    first_timestamp: datetime
    last_timestamp: datetime
    rejected: dict[str, int]
    events_path: Path
    catalog_path: Path
    report_path: Path
    seconds: float
    dataset: str = field(default="online_retail_ii")

    def as_dict(self) -> dict[str, Any]:
        return report_dict(self)


def report_dict(report: Any) -> dict[str, Any]:
    """A report dataclass as `report.json` holds it: dataset first, paths as text, times in ISO 8601."""
    figures: dict[str, Any] = {"dataset": report.dataset}
    for item in fields(report):
        value = getattr(report, item.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, dict):
            value = dict(value)
        figures[item.name] = round(value, 3) if item.name == "seconds" else value
    return figures


def load_online_retail(source: Path, out_dir: Path, progress: Progress | None = None) -> LoadReport:
    """Read the gzip CSV at `source`, write events, catalogue and report into `out_dir`.

    Raises DataError naming the problem when the file is missing, empty, not gzip, not a UTF-8 CSV,
    lacks a required column or has no clean purchase row. Files already in `out_dir` are only
    replaced once every new file is completely written.
    """
    say = progress or _silent
    started = time.perf_counter()
    source = Path(source)
    out_dir = Path(out_dir)
    cleaned = clean_online_retail(source, say)
    events, rows_read, rejected = cleaned.events, cleaned.rows_read, cleaned.rejected
    say("building the catalogue")
    catalog = build_catalog(events)
    counts = dataset_counts(events)
    say(f"writing Parquet files into {out_dir}")

    def finish(events_path: Path, catalog_path: Path, report_path: Path) -> LoadReport:
        return LoadReport(
            source=source,
            rows_read=rows_read,
            clean_rows=events.num_rows,
            **counts,
            rejected=rejected,
            events_path=events_path,
            catalog_path=catalog_path,
            report_path=report_path,
            seconds=time.perf_counter() - started,
        )

    return write_dataset(out_dir, events, catalog, lambda paths: finish(*paths))


@dataclass(frozen=True)
class CleanRows:
    """The clean purchase lines of one CSV (`EVENTS_SCHEMA`, in file order) and what was rejected."""

    events: Any
    rows_read: int
    rejected: dict[str, int]


def clean_online_retail(source: Path, progress: Progress | None = None) -> CleanRows:
    """The clean purchase view of the CSV at `source`, without writing anything: what `data load`
    writes and what the nightly ingest merges (`finegrain.data.ingest`). Raises DataError like
    `load_online_retail`."""
    say = progress or _silent
    source = Path(source)
    say(f"checking {source}")
    _check_source(source)
    say("reading the CSV")
    raw, malformed_rows = _read_csv(source)
    rows_read = raw.num_rows + len(malformed_rows)
    if rows_read == 0:
        raise DataError(f"source file {source} has a header but no data rows")
    say("cleaning rows")
    events, reasons = _clean(raw, _row_numbers(raw.num_rows, malformed_rows))
    rejected = dict(zip(REJECT_REASONS, reasons, strict=True))
    rejected["unparseable"] += len(malformed_rows)
    if events.num_rows == 0:
        raise DataError(
            f"source file {source} has no clean purchase row (rejected: {_describe_counts(rejected)})"
        )
    return CleanRows(events, rows_read, rejected)


# ----------------------------------------------------------------------------------------- reading


def _check_source(source: Path) -> None:
    """Fail early, with a message naming the problem, before the bulk reader gives a vaguer one."""
    if not source.exists():
        raise DataError(f"source file {source} does not exist")
    if not source.is_file():
        raise DataError(f"source {source} is not a file")
    try:
        with source.open("rb") as handle:
            magic = handle.read(2)
    except OSError as exc:
        raise DataError(f"source file {source} cannot be read: {exc.strerror or exc}") from exc
    if not magic:
        raise DataError(f"source file {source} is empty (0 bytes)")
    if magic != _GZIP_MAGIC:
        raise DataError(f"source file {source} is not gzip-compressed (expected a .csv.gz file)")
    try:
        with gzip.open(source, "rb") as unzipped:
            first_line = unzipped.readline(_MAX_HEADER_BYTES)
        header = next(csv.reader([first_line.decode("utf-8-sig")]), None)
    except EOFError as exc:
        raise DataError(f"source file {source} is a truncated gzip file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"source file {source} is not a UTF-8 CSV file (header: {exc.reason})") from exc
    except (OSError, csv.Error) as exc:
        raise DataError(f"source file {source} is not a readable gzip CSV file: {exc}") from exc
    if not header:
        raise DataError(f"source file {source} is empty: no header row")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        found = ", ".join(repr(name) for name in header[:12])
        noun = "column" if len(missing) == 1 else "columns"
        raise DataError(
            f"source file {source} is missing required {noun} "
            f"{', '.join(repr(name) for name in missing)} (header has: {_shorten(found, 200)})"
        )


def _read_csv(source: Path) -> tuple[Any, list[int]]:
    """All required columns as nullable strings, plus the numbers of rows with the wrong field count.

    Values are parsed later, by us, so that a bad value rejects one row instead of failing the file.
    """
    malformed: list[int] = []

    def skip_row(row: Any) -> str:
        malformed.append(int(row.number))
        return "skip"

    # Single-threaded so that pyarrow can number the malformed rows, which keeps event ids stable.
    read_options = pcsv.ReadOptions(use_threads=False, block_size=1 << 24)
    parse_options = pcsv.ParseOptions(invalid_row_handler=skip_row)
    convert_options = pcsv.ConvertOptions(
        column_types={name: pa.string() for name in REQUIRED_COLUMNS},
        include_columns=list(REQUIRED_COLUMNS),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        # Only an empty field is missing: "NA" is a legitimate description or country code.
        null_values=[""],
    )
    try:
        with pa.input_stream(str(source), compression="gzip") as stream:
            table = pcsv.read_csv(
                stream,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
    except (pa.ArrowException, OSError, EOFError) as exc:
        if "UTF8" in str(exc):
            raise DataError(f"source file {source} is not a UTF-8 CSV file: {_one_line(exc)}") from exc
        raise DataError(f"source file {source} is not a readable gzip CSV file: {_one_line(exc)}") from exc
    return table, malformed


def _row_numbers(kept_rows: int, malformed: list[int]) -> Any:
    """1-based data-row number of each kept row (header excluded), as in event id "489434-1".

    pyarrow numbers records from the header (= 1) and does not count blank lines.
    """
    total = kept_rows + len(malformed)
    keep = np.ones(total, dtype=bool)
    keep[np.asarray(malformed, dtype=np.int64) - 2] = False
    return np.arange(1, total + 1, dtype=np.int64)[keep]


# ---------------------------------------------------------------------------------------- cleaning


def _clean(raw: Any, row_numbers: Any) -> tuple[Any, list[int]]:
    """The clean events table and, per reason in `REJECT_REASONS` order, the rows rejected for it."""
    invoice = _trimmed(raw.column("Invoice"))
    stock_code = pc.utf8_upper(_trimmed(raw.column("StockCode")))
    customer_text = _trimmed(raw.column("Customer ID"))
    quantity = _parse_number(raw.column("Quantity"), _QUANTITY_PATTERN)
    price = _parse_number(raw.column("Price"), _PRICE_PATTERN)
    customer = _parse_number(customer_text, _CUSTOMER_PATTERN)
    timestamp = pc.strptime(
        _trimmed(raw.column("InvoiceDate")), format=INVOICE_DATE_FORMAT, unit="ms", error_is_null=True
    )

    # Kleene logic: "not valid AND unknown" is False, so a null value never hides an unparseable row.
    parseable = [
        pc.is_valid(invoice),
        pc.is_valid(timestamp),
        pc.and_kleene(pc.is_valid(quantity), pc.less_equal(pc.abs(quantity), _INT32_MAX)),
        pc.and_kleene(pc.is_valid(price), pc.is_finite(price)),
        pc.or_kleene(pc.is_null(customer_text), pc.is_valid(customer)),
    ]
    unparseable = pc.invert(functools.reduce(pc.and_kleene, parseable))
    failures = [
        unparseable,
        pc.is_null(customer_text),
        pc.starts_with(invoice, "C", ignore_case=True),
        pc.less_equal(quantity, 0),
        pc.less_equal(price, 0),
        pc.invert(pc.match_substring_regex(stock_code, _PRODUCT_CODE_PATTERN)),
    ]
    # Nulls in a later test come from a row an earlier test already rejected; treat them as failing.
    masks = [_numpy_bool(mask, null_as=True) for mask in failures]
    reason = np.select(masks, np.arange(1, len(masks) + 1, dtype=np.int8), default=np.int8(0))
    per_reason = np.bincount(reason, minlength=len(masks) + 1)
    keep = pa.array(reason == 0)

    def kept(values: Any) -> Any:
        return pc.filter(values, keep)

    clean_invoice = kept(invoice)
    events = pa.table(
        {
            "event_id": pc.binary_join_element_wise(
                clean_invoice, pc.cast(pa.array(row_numbers[reason == 0]), pa.string()), "-"
            ),
            "user_id": pc.cast(pc.cast(kept(customer), pa.int64()), pa.string()),
            "item_id": kept(stock_code),
            "event_type": pa.repeat(EVENT_TYPE_PURCHASE, int(per_reason[0])),
            "quantity": pc.cast(kept(quantity), pa.int32()),
            "price": kept(price),
            # The cast labels the naive wall-clock values as UTC without shifting them (see TIMESTAMP_TYPE).
            "timestamp": pc.cast(kept(timestamp), TIMESTAMP_TYPE),
            "invoice": clean_invoice,
            "country": kept(_trimmed(raw.column("Country"))),
            "description": kept(_trimmed(raw.column("Description"))),
        }
    )
    return events.cast(EVENTS_SCHEMA), [int(count) for count in per_reason[1:]]


def _trimmed(values: Any) -> Any:
    """Whitespace-trimmed strings, with blank ones turned into nulls (a blank value is a missing one)."""
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _parse_number(values: Any, pattern: str) -> Any:
    """float64 of the values that match `pattern`, null for the rest (a cast alone fails the whole column)."""
    text = _trimmed(values)
    ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    return pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())


def _numpy_bool(mask: Any, null_as: bool) -> Any:
    return np.asarray(pc.fill_null(mask, null_as).to_numpy(zero_copy_only=False), dtype=bool)


# ------------------------------------------------------------------------------ catalogue and counts


def build_catalog(events: Any) -> Any:
    """One row per item of an events table (`EVENTS_SCHEMA`), sorted by item_id.

    `description` is the most frequent non-null description of the item's lines, ties going to the
    alphabetically first one so reruns agree; `price` is the median unit price over its lines.
    """
    item = events.column("item_id").combine_chunks().dictionary_encode()
    description = events.column("description").combine_chunks().dictionary_encode()
    item_names = item.dictionary
    description_names = description.dictionary
    frame = pd.DataFrame(
        {
            "item": item.indices.to_numpy(zero_copy_only=False),
            "description": pc.fill_null(description.indices, -1).to_numpy(zero_copy_only=False),
            "price": events.column("price").to_numpy(),
            "timestamp": pc.cast(events.column("timestamp"), pa.int64()).to_numpy(),
        }
    )
    per_item = frame.groupby("item", sort=True).agg(
        price=("price", "median"),
        first_seen=("timestamp", "min"),
        last_seen=("timestamp", "max"),
        lines=("price", "size"),
    )
    # Rank descriptions alphabetically once, so the tie-break is a cheap integer sort.
    alphabetical = np.empty(len(description_names), dtype=np.int64)
    alphabetical[np.argsort(np.asarray(description_names.to_pylist(), dtype=object), kind="stable")] = (
        np.arange(len(description_names))
    )
    described = frame[frame["description"] >= 0]
    votes = described.groupby(["item", "description"], sort=False).size().reset_index(name="votes")
    votes["rank"] = alphabetical[votes["description"].to_numpy()]
    winners = votes.sort_values(["item", "votes", "rank"], ascending=[True, False, True]).drop_duplicates(
        "item"
    )
    description_of_item = np.full(len(item_names), -1, dtype=np.int64)
    description_of_item[winners["item"].to_numpy()] = winners["description"].to_numpy()
    chosen = description_of_item[per_item.index.to_numpy()]
    catalog = pa.table(
        {
            "item_id": item_names.take(pa.array(per_item.index.to_numpy())),
            "description": description_names.take(pa.array(chosen, mask=chosen < 0)),
            "price": pa.array(per_item["price"].to_numpy(dtype=np.float64)),
            "first_seen": pa.array(per_item["first_seen"].to_numpy(dtype=np.int64)).cast(TIMESTAMP_TYPE),
            "last_seen": pa.array(per_item["last_seen"].to_numpy(dtype=np.int64)).cast(TIMESTAMP_TYPE),
            "lines": pa.array(per_item["lines"].to_numpy(dtype=np.int64)),
        }
    )
    return catalog.cast(CATALOG_SCHEMA).sort_by("item_id")


def dataset_counts(events: Any) -> dict[str, Any]:
    """The headline counts of an events table, as reported for both the real and the synthetic data."""
    timestamps = pc.min_max(events.column("timestamp"))
    return {
        "users": int(pc.count_distinct(events.column("user_id")).as_py()),
        "items": int(pc.count_distinct(events.column("item_id")).as_py()),
        "baskets": int(pc.count_distinct(events.column("invoice")).as_py()),
        "user_item_pairs": int(events.group_by(["user_id", "item_id"]).aggregate([]).num_rows),
        "countries": int(pc.count_distinct(events.column("country")).as_py()),
        "first_timestamp": timestamps["min"].as_py(),
        "last_timestamp": timestamps["max"].as_py(),
    }


# ----------------------------------------------------------------------------------------- writing


def write_dataset(
    out_dir: Path,
    events: Any,
    catalog: Any,
    make_report: Callable[[tuple[Path, Path, Path]], ReportT],
) -> ReportT:
    """Write events, catalogue and report into `out_dir` so that a reader never sees a partial set.

    Each file is written in full to a hidden temporary file in `out_dir` (same file system, so the
    rename is atomic) and fsynced; only when all three are complete are they renamed over the old
    ones, the report last, so a present `report.json` describes the Parquet files beside it.
    `make_report` is called after the Parquet files are staged so its timing includes the writes;
    its `as_dict()` becomes `report.json`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = (out_dir / EVENTS_FILE, out_dir / CATALOG_FILE, out_dir / REPORT_FILE)
    staged: list[Path] = []
    try:
        staged.append(_stage(out_dir, EVENTS_FILE, lambda path: pq.write_table(events, path)))
        staged.append(_stage(out_dir, CATALOG_FILE, lambda path: pq.write_table(catalog, path)))
        report = make_report(targets)
        # Unsorted: as_dict() lists the figures, and the rejection reasons, in their meaningful order.
        text = json.dumps(report.as_dict(), indent=2) + "\n"
        staged.append(_stage(out_dir, REPORT_FILE, lambda path: path.write_text(text, encoding="utf-8")))
        for temporary, target in zip(staged, targets, strict=True):
            os.replace(temporary, target)
        _fsync_directory(out_dir)
    finally:
        # After a successful run every temporary file has been renamed away; after a failure none stays.
        for temporary in staged:
            temporary.unlink(missing_ok=True)
    return report


def _stage(out_dir: Path, name: str, write: Callable[[Path], object]) -> Path:
    handle, temporary_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        os.chmod(temporary, _FILE_MODE)
        write(temporary)
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _fsync_directory(directory: Path) -> None:
    # Makes the renames themselves durable; some file systems refuse to open a directory, which is fine.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# ------------------------------------------------------------------------------- reading a data set


def read_events_table(path: Path) -> Any:
    """The events of a loaded (or synthetic) data set as a pyarrow Table; `path` is the folder or the file."""
    return _read_parquet(_resolve(Path(path), EVENTS_FILE), EVENTS_SCHEMA, "events")


def read_catalog_table(path: Path) -> Any:
    """The item catalogue as a pyarrow Table; `path` is the data set folder or the file."""
    return _read_parquet(_resolve(Path(path), CATALOG_FILE), CATALOG_SCHEMA, "catalogue")


def read_events(path: Path) -> pd.DataFrame:
    """The events as a DataFrame (`timestamp` is datetime64[ms, UTC]); `path` is the folder or the file."""
    return read_events_table(path).to_pandas()


def read_catalog(path: Path) -> pd.DataFrame:
    """The item catalogue as a DataFrame; `path` is the data set folder or the file."""
    return read_catalog_table(path).to_pandas()


def read_report(path: Path) -> dict[str, Any]:
    """The `report.json` of a data set folder."""
    file = _resolve(Path(path), REPORT_FILE)
    if not file.is_file():
        raise DataError(f"no {REPORT_FILE} in {file.parent}: load or generate the data set first")
    try:
        report: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{file} is not a readable report: {_one_line(exc)}") from exc
    return report


def _resolve(path: Path, file_name: str) -> Path:
    return path / file_name if path.is_dir() else path


def _read_parquet(file: Path, schema: Any, what: str) -> Any:
    if not file.is_file():
        raise DataError(f"no {what} file at {file}: run `finegrain data load` (or `synth`) first")
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file} is not a readable Parquet {what} file: {_one_line(exc)}") from exc
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(f"{what} file {file} lacks column(s) {', '.join(missing)}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"{what} file {file} has unexpected column types: {_one_line(exc)}") from exc


# ---------------------------------------------------------------------------------------- helpers


def _silent(_: str) -> None:
    return None


def _describe_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items() if count)


def _one_line(exc: BaseException) -> str:
    return _shorten(" ".join(str(exc).split()), 300)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
