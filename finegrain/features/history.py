"""Purchase lines as every feature definition reads them, and the as-of cut-off they all apply.

A feature is defined once, as a function of a pandas frame of purchase lines and an as-of time, and
the Spark jobs, the training-set builder and serving all call that function: the only thing that
differs between them is where the frame comes from. The cut-off is applied inside the definitions
(not only by the caller), so a frame that holds later lines can never leak them into a feature.

Timestamps may arrive timezone-aware (Parquet read by pandas: `datetime64[ms, UTC]`) or naive
(Spark's Arrow conversion gives naive times in the session time zone, which `finegrain.spark` sets to
UTC); naive times are read as UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

# The columns the definitions read; other columns are ignored.
LINE_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "invoice", "quantity", "price", "timestamp", "country")

Int64Array = npt.NDArray[np.int64]


def epoch_ms(timestamps: pd.Series) -> Int64Array:
    """Epoch milliseconds of a datetime column, whatever its unit and whether it carries a time zone."""
    if not pd.api.types.is_datetime64_any_dtype(timestamps.dtype):
        timestamps = pd.to_datetime(timestamps, utc=True)
    # asi8 counts from the Unix epoch in UTC for zoned and (read as UTC) naive times alike.
    return np.asarray(timestamps.array.as_unit("ms").asi8, dtype=np.int64)


def columns_before(lines: pd.DataFrame, cutoff_ms: int, names: Sequence[str]
                   ) -> tuple[dict[str, npt.NDArray[Any]], Int64Array]:
    """The named columns (those present) of the lines strictly before the cut-off, as NumPy arrays,
    with the lines' epoch-ms timestamps; per-user definitions run thousands of times per job, and
    arrays avoid pandas' per-call overhead."""
    timestamps = epoch_ms(lines["timestamp"])
    keep = timestamps < cutoff_ms
    everything = bool(keep.all())
    columns = {name: (lines[name].to_numpy() if everything else lines[name].to_numpy()[keep])
               for name in names if name in lines}
    return columns, (timestamps if everything else timestamps[keep])
