"""Dates and instants, defined once: an as-of date means the instant of its midnight UTC.

Every job, training run, evaluation and serving snapshot is "as of" a date and reads only what
happened strictly before that instant. Event timestamps may arrive timezone-aware (Parquet read by
pandas: `datetime64[ms, UTC]`) or naive (Spark's Arrow conversion gives naive times in the session
time zone, which `finegrain.spark` sets to UTC); naive times are read as UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TypeAlias

import numpy as np
import pandas as pd

from finegrain.errors import DataError

DAY_MS = 86_400_000

AsOf: TypeAlias = date | datetime | pd.Timestamp


def parse_as_of(text: str, option: str = "--as-of") -> date:
    """A date given on a command line or as a DAG param, refused with the option's name if malformed."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise DataError(f"bad {option} {text!r}: expected a date as YYYY-MM-DD") from None


def midnight_utc(day: date) -> datetime:
    """The as-of instant of a date (timezone-aware, so Spark and pandas read it the same everywhere)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def as_of_ms(as_of: AsOf) -> int:
    """Epoch milliseconds of an as-of instant; a date means its midnight UTC, a naive time is UTC."""
    if isinstance(as_of, pd.Timestamp):
        as_of = as_of.to_pydatetime()
    if not isinstance(as_of, datetime):
        as_of = midnight_utc(as_of)
    elif as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return int(as_of.timestamp() * 1000)


def utc_timestamps(timestamps: pd.Series) -> pd.Series:
    """A datetime column as timezone-aware UTC (naive values are UTC already)."""
    return timestamps.dt.tz_localize("UTC") if timestamps.dt.tz is None else timestamps


def rows_before(events: pd.DataFrame, day: date) -> np.ndarray:
    """Mask of the events strictly before the as-of date's midnight UTC."""
    return np.asarray(utc_timestamps(events["timestamp"]) < pd.Timestamp(midnight_utc(day)))


def data_end(events: pd.DataFrame) -> date:
    """The day after the data's last event: its exclusive end, as an as-of date."""
    if events.empty:
        raise DataError("no events: nothing to train or evaluate on")
    last: date = utc_timestamps(events["timestamp"]).max().date()
    return last + timedelta(days=1)


def data_start(events: pd.DataFrame) -> date:
    """The day of the data's first event."""
    if events.empty:
        raise DataError("no events: nothing to train or evaluate on")
    first: date = utc_timestamps(events["timestamp"]).min().date()
    return first
