"""A synthetic data set N times the size of the clean Online Retail II data, with the same shape.

Why replay instead of sampling from fitted distributions: a wholesaler's data has structure that is
hard to model and easy to lose (large baskets, heavy repeat buying of the same items, a Christmas
peak, no Saturday trading). Replaying the real baskets keeps all of it by construction; the
perturbations below only make the copies distinct and connected.

How copy k of N is made (copy 0 is the real data, unchanged, so `scale=1` gives back the input and
every real id still exists in the synthetic set):
- ids: users, items, invoices and event ids get the suffix "~k" ("13085~3"); an item copy keeps the
  description and price of its original, so the catalogue has N look-alike items per real one.
- time: each user of the copy is shifted by a whole number of weeks, drawn uniformly from
  [-max_shift_weeks, +max_shift_weeks]. Whole weeks keep the weekday pattern (the shop barely trades
  on Saturdays) and one shift per user keeps the user's purchase order and gaps, which the repeat
  rate depends on. A basket that would leave the data's time range stays where it is, so the range,
  and with it the last-30-days window, is the same. (Sending it the other way instead would empty
  the first and last week twice as fast as they fill up.) The jitter smooths the Christmas peak a
  little: at scale 10, month shares move by at most about half a percentage point.
- links between copies: for `swap_fraction` of each copy's (user, item) pairs, the item is replaced,
  on every line of that pair, by an item drawn from the popularity distribution of the whole
  synthetic catalogue (a random line's item, in a random copy). Swapping whole pairs rather than
  single lines keeps a user's repeat purchases repeats; swapping lines would break them and lower
  the repeat rate. A swapped line takes the catalogue description and price of its new item.
- another calendar: `move_weeks` moves the whole data set by that many weeks (whole weeks again, so
  the weekdays stay), e.g. 156 for a shop three years later: data of the same schema and shape whose
  dates are none of the sample data's, to run every job, model and evaluation on.

Rows are written copy by copy, each in the order of the input. Everything is vectorised (NumPy and
Arrow kernels, Python loops only over copies and over the few thousand distinct ids), and each copy
draws from its own generator seeded with (seed, k), so a copy does not depend on how many follow it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finegrain.data.retail import (
    EVENTS_SCHEMA,
    build_catalog,
    dataset_counts,
    report_dict,
    write_dataset,
)
from finegrain.dates import DAY_MS
from finegrain.errors import DataError

DEFAULT_SWAP_FRACTION = 0.1
DEFAULT_MAX_SHIFT_WEEKS = 1
REPEAT_WINDOW_DAYS = 30
COPY_SEPARATOR = "~"

_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_SHAPE_COLUMNS = ("user_id", "item_id", "invoice", "timestamp")
_MS_TIMESTAMP = EVENTS_SCHEMA.field("timestamp").type


@dataclass(frozen=True)
class SyntheticReport:
    """What one generation produced; also written as `report.json` beside the Parquet files."""

    source: str
    scale: int
    seed: int
    swap_fraction: float
    max_shift_weeks: int
    clean_rows: int
    move_weeks: int
    users: int
    items: int
    baskets: int
    user_item_pairs: int
    countries: int
    first_timestamp: datetime
    last_timestamp: datetime
    swapped_lines: int
    shape: dict[str, Any]
    source_shape: dict[str, Any]
    events_path: Path
    catalog_path: Path
    report_path: Path
    seconds: float
    dataset: str = field(default="synthetic")

    def as_dict(self) -> dict[str, Any]:
        return report_dict(self)


def generate_synthetic(
    events: pd.DataFrame,
    catalog: pd.DataFrame,
    scale: int,
    seed: int,
    out_dir: Path,
    *,
    swap_fraction: float = DEFAULT_SWAP_FRACTION,
    max_shift_weeks: int = DEFAULT_MAX_SHIFT_WEEKS,
    move_weeks: int = 0,
    source: str = "",
    progress: Callable[[str], None] | None = None,
) -> SyntheticReport:
    """Write `scale` copies of `events` (see the module docstring) as a data set into `out_dir`.

    `events` and `catalog` are what `read_events` / `read_catalog` return (DataFrames or pyarrow
    Tables). `source` is only recorded in the report.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= swap_fraction < 1.0:
        raise ValueError(f"swap_fraction must be in [0, 1), got {swap_fraction}")
    if max_shift_weeks < 0:
        raise ValueError(f"max_shift_weeks must be >= 0, got {max_shift_weeks}")
    say = progress or (lambda _: None)
    started = time.perf_counter()
    base = _events_table(events, EVENTS_SCHEMA.names, "events")
    try:
        base = base.cast(EVENTS_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"the events do not have the canonical column types: {exc}") from exc
    if base.num_rows == 0:
        raise DataError("the source data set has no events to replay")
    replay = _Replay(base, catalog, scale)

    copies = []
    swapped_lines = 0
    for copy in range(scale):
        say(f"building copy {copy + 1} of {scale}")
        table, swapped = replay.copy(copy, seed, swap_fraction, max_shift_weeks)
        copies.append(table)
        swapped_lines += swapped
    synthetic = pa.concat_tables(copies)
    if move_weeks:
        moved = pc.add(pc.cast(synthetic.column("timestamp"), pa.int64()), move_weeks * 7 * DAY_MS)
        synthetic = synthetic.set_column(synthetic.schema.get_field_index("timestamp"), "timestamp",
                                         pc.cast(moved, _MS_TIMESTAMP))

    say("building the catalogue")
    synthetic_catalog = build_catalog(synthetic)
    counts = dataset_counts(synthetic)
    say("measuring the shape")
    shape = shape_summary(synthetic)
    source_shape = shape_summary(base)
    say(f"writing Parquet files into {out_dir}")

    def finish(paths: tuple[Path, Path, Path]) -> SyntheticReport:
        return SyntheticReport(
            source=source,
            scale=scale,
            seed=seed,
            swap_fraction=swap_fraction,
            max_shift_weeks=max_shift_weeks,
            clean_rows=synthetic.num_rows,
            move_weeks=move_weeks,
            **counts,
            swapped_lines=swapped_lines,
            shape=shape,
            source_shape=source_shape,
            events_path=paths[0],
            catalog_path=paths[1],
            report_path=paths[2],
            seconds=time.perf_counter() - started,
        )

    return write_dataset(Path(out_dir), synthetic, synthetic_catalog, finish)


class _Replay:
    """The source events reduced to integer codes, computed once and shared by every copy."""

    def __init__(self, base: Any, catalog: Any, scale: int) -> None:
        self.base = base
        self.scale = scale
        self.rows = base.num_rows
        user = base.column("user_id").combine_chunks().dictionary_encode()
        item = base.column("item_id").combine_chunks().dictionary_encode()
        basket = base.column("invoice").combine_chunks().dictionary_encode()
        self.user_names: list[str] = user.dictionary.to_pylist()
        self.item_names: list[str] = item.dictionary.to_pylist()
        self.user = user.indices.to_numpy().astype(np.int64)
        self.item = item.indices.to_numpy().astype(np.int64)
        basket_codes = basket.indices.to_numpy().astype(np.int64)
        self.basket = basket_codes
        self.timestamp = pc.cast(base.column("timestamp"), pa.int64()).to_numpy()
        self.first_ms = int(self.timestamp.min())
        self.last_ms = int(self.timestamp.max())
        self.price = base.column("price").to_numpy()

        # A basket moves as one block, so its span decides whether a shift keeps it inside the range.
        per_basket = pd.Series(self.timestamp).groupby(basket_codes).agg(["min", "max"])
        self.basket_first = per_basket["min"].to_numpy()
        self.basket_last = per_basket["max"].to_numpy()
        self.basket_user = np.zeros(len(per_basket), dtype=np.int64)
        self.basket_user[basket_codes] = self.user

        n_items = len(self.item_names)
        self.pair, self.pairs = _codes(self.user * n_items + self.item)

        described = _events_table(catalog, ("item_id", "description", "price"), "catalogue")
        position = pd.Index(described.column("item_id").to_pylist()).get_indexer(self.item_names)
        if (position < 0).any():
            missing = [name for name, at in zip(self.item_names, position, strict=True) if at < 0]
            raise DataError(
                f"the catalogue lacks {len(missing)} item(s) of the events, e.g. {', '.join(missing[:5])}"
            )
        self.catalog_price = described.column("price").to_numpy()[position]
        self.catalog_description = described.column("description").combine_chunks().take(pa.array(position))

        # Item code c is real item c % n_items in copy c // n_items; the ids of all copies, once.
        all_item_ids = list(self.item_names)
        for copy in range(1, scale):
            all_item_ids.extend(f"{name}{COPY_SEPARATOR}{copy}" for name in self.item_names)
        self.all_item_ids = pa.array(all_item_ids, pa.string())

    def copy(self, copy: int, seed: int, swap_fraction: float, max_shift_weeks: int) -> tuple[Any, int]:
        """Copy number `copy` as an events table, and how many of its lines had their item swapped."""
        base = self.base
        n_users, n_items = len(self.user_names), len(self.item_names)
        if copy == 0:
            return base, 0
        rng = np.random.default_rng([seed, copy])

        weeks = rng.integers(-max_shift_weeks, max_shift_weeks + 1, size=n_users)
        shift = weeks[self.basket_user] * _WEEK_MS
        shift = np.where(self._leaves_range(shift), 0, shift)
        timestamp = self.timestamp + shift[self.basket]

        swap_pair = rng.random(self.pairs) < swap_fraction
        donor_line = rng.integers(0, self.rows, size=self.pairs)
        donor_copy = rng.integers(0, self.scale, size=self.pairs)
        swapped = swap_pair[self.pair]
        new_item = self.item[donor_line][self.pair]
        item_code = np.where(swapped, donor_copy[self.pair] * n_items + new_item, copy * n_items + self.item)
        swapped_mask = pa.array(swapped)
        suffix = f"{COPY_SEPARATOR}{copy}"
        table = pa.table(
            {
                "event_id": pc.binary_join_element_wise(base.column("event_id"), suffix, ""),
                "user_id": pa.array([name + suffix for name in self.user_names]).take(pa.array(self.user)),
                "item_id": self.all_item_ids.take(pa.array(item_code)),
                "event_type": base.column("event_type"),
                "quantity": base.column("quantity"),
                "price": np.where(swapped, self.catalog_price[new_item], self.price),
                "timestamp": pa.array(timestamp).cast(_MS_TIMESTAMP),
                "invoice": pc.binary_join_element_wise(base.column("invoice"), suffix, ""),
                "country": base.column("country"),
                "description": pc.if_else(
                    swapped_mask,
                    self.catalog_description.take(pa.array(new_item)),
                    base.column("description").combine_chunks(),
                ),
            }
        )
        return table.cast(EVENTS_SCHEMA), int(swapped.sum())

    def _leaves_range(self, shift: Any) -> Any:
        return (self.basket_first + shift < self.first_ms) | (self.basket_last + shift > self.last_ms)


def shape_summary(events: pd.DataFrame) -> dict[str, Any]:
    """The figures that say whether two data sets look alike (`events`: DataFrame or pyarrow Table).

    - users, items, lines, baskets (distinct invoices) and mean_basket_size (lines per basket);
    - repeat_rate, as in the data set README: test window = the last 30 days (from midnight after the
      last event, minus 30 days); for each user who bought both before and in it (repeat_users), the
      share of the distinct items bought in it that the user had bought before; averaged over users;
    - month_share: share of lines per calendar month ("2010-11"), wall-clock time.
    """
    table = _events_table(events, _SHAPE_COLUMNS, "events")
    lines = table.num_rows
    if lines == 0:
        raise DataError("no events to summarise")
    user = table.column("user_id").combine_chunks().dictionary_encode()
    item = table.column("item_id").combine_chunks().dictionary_encode()
    users, items = len(user.dictionary), len(item.dictionary)
    baskets = int(pc.count_distinct(table.column("invoice")).as_py())
    # Whatever the input's resolution (pandas defaults to ns), work in epoch milliseconds.
    in_ms = pc.cast(table.column("timestamp"), _MS_TIMESTAMP, safe=False)
    timestamp = pc.cast(in_ms, pa.int64()).to_numpy()

    cutoff = (int(timestamp.max()) // _DAY_MS + 1 - REPEAT_WINDOW_DAYS) * _DAY_MS
    user_code = user.indices.to_numpy().astype(np.int64)
    pair = user_code * items + item.indices.to_numpy().astype(np.int64)
    in_window = timestamp >= cutoff
    before = _sorted_unique(pair[~in_window])
    window_pairs = _sorted_unique(pair[in_window])
    window_users = window_pairs // items
    evaluated = _contains(_sorted_unique(user_code[~in_window]), window_users)
    bought_before = _contains(before, window_pairs[evaluated])
    per_user_pairs = np.bincount(window_users[evaluated], minlength=users)
    per_user_repeats = np.bincount(window_users[evaluated], weights=bought_before, minlength=users)
    has_pairs = per_user_pairs > 0
    repeat_users = int(has_pairs.sum())
    repeat_rate = (
        float((per_user_repeats[has_pairs] / per_user_pairs[has_pairs]).mean()) if repeat_users else 0.0
    )

    month = timestamp.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    first_month = int(month.min())
    month_lines = np.bincount(month - first_month)
    month_share = {
        str(np.datetime64(first_month + offset, "M")): int(count) / lines
        for offset, count in enumerate(month_lines)
        if count
    }
    return {
        "users": users,
        "items": items,
        "lines": lines,
        "baskets": baskets,
        "mean_basket_size": lines / baskets,
        "repeat_rate": repeat_rate,
        "repeat_users": repeat_users,
        "month_share": month_share,
    }


def _events_table(frame: Any, columns: Any, what: str) -> Any:
    """`columns` of a DataFrame or pyarrow Table, as a Table, with a DataError naming a missing one."""
    names = list(frame.column_names) if isinstance(frame, pa.Table) else list(frame.columns)
    missing = [name for name in columns if name not in names]
    if missing:
        raise DataError(f"the {what} lack column(s) {', '.join(missing)}")
    events = frame
    if isinstance(events, pa.Table):
        return events.select(list(columns))
    return pa.Table.from_pandas(events[list(columns)], preserve_index=False)


# numpy 2's hash-based np.unique / np.isin took seconds on the 4-million-row pair codes of a x10
# data set; a plain sort is ten times faster there.
def _sorted_unique(values: Any) -> Any:
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _contains(sorted_unique: Any, values: Any) -> Any:
    """Whether each of `values` is in `sorted_unique` (an np.isin for an already sorted set)."""
    if len(sorted_unique) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return np.asarray(sorted_unique[at] == values, dtype=bool)


def _codes(values: Any) -> tuple[Any, int]:
    uniques, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64), len(uniques)
