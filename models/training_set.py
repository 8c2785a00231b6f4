"""The ranker training set built with pandas on one machine: the rows `finegrain.training.training_set`
defines, for the given cut-offs.

One cut-off takes a few seconds on the real data (406k lines), less than a Spark session takes to
start, so quick runs, tests and evaluations build here; `spark_jobs/training_set.py` builds the same
rows (bit for bit) with the per-user work spread over a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date

import pandas as pd

from finegrain.dates import as_of_ms
from finegrain.features.history import epoch_ms
from finegrain.training.candidates import CandidateConfig
from finegrain.training.training_set import (
    LABEL_DAYS,
    CutoffInputs,
    PointInTime,
    TrainingSet,
    check_cutoffs,
    cutoff_users,
    rows_for_users,
)


def build_cutoff(events: pd.DataFrame, cutoff: date, *, label_days: int = LABEL_DAYS,
                 config: CandidateConfig | None = None, max_users: int | None = None,
                 seed: int = 0) -> TrainingSet:
    """The training rows of one cut-off; `max_users` samples that many users (for quick runs)."""
    config = config or CandidateConfig()
    started = time.perf_counter()
    point = PointInTime.split(events, cutoff, label_days)
    users = cutoff_users(point, max_users, seed)
    inputs = CutoffInputs.build(point.history, cutoff, users)
    built = time.perf_counter()
    rows = rows_for_users(inputs, users.tolist(), point.labels, config)
    rows.seconds = {f"{cutoff}:inputs": round(built - started, 2),
                    f"{cutoff}:rows": round(time.perf_counter() - built, 2)}
    return rows


def build_training_set(events: pd.DataFrame, cutoffs: Iterable[date], *, as_of: date,
                       label_days: int = LABEL_DAYS, config: CandidateConfig | None = None,
                       max_users: int | None = None) -> TrainingSet:
    """Rows of every cut-off; each label window must end by `as_of` (the model's own as-of date), so
    nothing at or after it (the evaluation window) can reach training."""
    dates = check_cutoffs(cutoffs, as_of, label_days)
    events = events.loc[epoch_ms(events["timestamp"]) < as_of_ms(as_of)]
    return TrainingSet.concat([build_cutoff(events, d, label_days=label_days, config=config,
                                            max_users=max_users) for d in dates])

