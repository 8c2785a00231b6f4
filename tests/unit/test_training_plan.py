"""Every date of a training run comes from its as-of date and the data's end
(`finegrain.training.plan.TrainingPlan`), on any data: these events are made up, a year other than the
sample data's."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from finegrain.dates import data_end, data_start
from finegrain.errors import DataError
from finegrain.training.plan import HISTORY_DAYS, TrainingPlan


def events(first: str, last: str) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": pd.to_datetime([f"{first} 09:30", f"{last} 17:45"], utc=True)})


DATA = events("2031-01-05", "2031-12-20")  # data_end: 2031-12-21


def test_the_data_bounds_are_days() -> None:
    assert data_start(DATA) == date(2031, 1, 5)
    assert data_end(DATA) == date(2031, 12, 21)
    with pytest.raises(DataError, match="no events"):
        data_end(DATA.iloc[:0])


def test_a_date_with_a_whole_window_after_it_is_scored_on_that_window() -> None:
    plan = TrainingPlan.for_events(DATA, date(2031, 10, 1))
    assert plan.split == date(2031, 10, 1) and not plan.backtest
    assert plan.train_cutoffs == (date(2031, 7, 3), date(2031, 8, 2), date(2031, 9, 1))
    assert plan.scored_cutoffs == plan.train_cutoffs == plan.cutoffs
    assert plan.validation_cutoff == date(2031, 9, 1)
    assert plan.validation_train_cutoffs == (date(2031, 6, 3), date(2031, 7, 3), date(2031, 8, 2))


def test_the_day_after_the_data_is_scored_by_a_backtest_on_its_last_window() -> None:
    plan = TrainingPlan.for_events(DATA, data_end(DATA))
    assert plan.as_of == date(2031, 12, 21) and plan.split == date(2031, 11, 21) and plan.backtest
    assert plan.train_cutoffs[-1] == date(2031, 11, 21)  # its labels are the data's last 30 days
    assert plan.scored_cutoffs[-1] == date(2031, 10, 22)  # labels end at the split
    assert plan.cutoffs == tuple(sorted(set(plan.train_cutoffs) | set(plan.scored_cutoffs)))
    assert len(plan.cutoffs) == 4
    assert plan.as_dict() == {"as_of": "2031-12-21", "split": "2031-11-21", "test_days": 30, "backtest": True}
    assert "backtest as of 2031-11-21" in plan.describe()


def test_a_shorter_window_moves_the_split() -> None:
    plan = TrainingPlan.for_events(DATA, data_end(DATA), test_days=7)
    assert plan.split == date(2031, 12, 14) and plan.evaluation == "readme-protocol-7d"
    assert TrainingPlan.for_events(DATA, data_end(DATA)).evaluation == "readme-protocol-30d"


def test_too_little_history_or_no_label_is_refused_with_the_dates() -> None:
    earliest = date(2031, 1, 5) + timedelta(days=HISTORY_DAYS)
    assert TrainingPlan.for_events(DATA, earliest).split == earliest
    with pytest.raises(DataError, match=f"needs {HISTORY_DAYS} days of history") as refused:
        TrainingPlan.for_events(DATA, earliest - timedelta(days=1))
    assert "2031-01-05" in str(refused.value)
    with pytest.raises(DataError, match="no label after its last cut-off"):
        TrainingPlan.for_events(DATA, date(2032, 3, 1))
    with pytest.raises(DataError, match="test window"):
        TrainingPlan.for_events(DATA, date(2031, 10, 1), test_days=0)
