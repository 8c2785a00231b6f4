"""The dates of one model training run, all derived from its as-of date and the end of the data.

A model "as of D" learns from everything before D: its training cut-offs are `train_cutoffs(D)`
(three, a label window apart, the last label window ending by D). It is scored on the README
protocol with a `test_days` window starting at the evaluation split S, which is the latest date
whose whole window lies inside the data and not after D:

    S = min(D, data_end - test_days)        (data_end: the midnight after the last event)

- Offline evaluation (`finegrain evaluate all --as-of 2010-11-10` on data running a month past it):
  S = D, the model itself is scored on the window after D.
- Production (the nightly run as of the day after the last event): S = D - test_days. The model as
  of D has learnt from that window, so it cannot be scored on it; the same recipe is trained as of S
  instead (a backtest: cut-offs `train_cutoffs(S)`), scored on [S, D), and its figures stand for the
  model as of D, which is trained next with the same settings.
Model selection (the XGBoost objective, the TF architecture) looks only at data before S: train on
`train_cutoffs(V)`, score at the validation cut-off V = S - label window.

So a run needs `HISTORY_DAYS` of data before S. The gate compares versions evaluated the same way
(`evaluation`: the protocol and its window length), whatever their dates: yesterday's model and
today's are scored on windows one day apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from finegrain.dates import data_end, data_start
from finegrain.errors import DataError
from finegrain.evaluation.protocol import TEST_DAYS
from finegrain.training.training_set import LABEL_DAYS, train_cutoffs, validation_cutoff

# Model selection trains on three cut-offs a label window apart before the validation cut-off, which is
# itself a label window before the split: its oldest cut-off is this many days before the split.
HISTORY_DAYS = 4 * LABEL_DAYS


@dataclass(frozen=True)
class TrainingPlan:
    as_of: date  # the model learns from everything before it
    split: date  # its figures come from the test window [split, split + test_days)
    test_days: int = TEST_DAYS

    @classmethod
    def for_events(cls, events: pd.DataFrame, as_of: date, test_days: int = TEST_DAYS) -> TrainingPlan:
        """The plan of a model as of `as_of` on these events."""
        return cls.within(as_of, data_start(events), data_end(events), test_days)

    @classmethod
    def within(cls, as_of: date, first: date, end: date, test_days: int = TEST_DAYS) -> TrainingPlan:
        """The plan of a model as of `as_of` on data from `first` to `end` (exclusive); refused with
        the dates when the data cannot give it a test window or enough history."""
        if test_days < 1:
            raise DataError(f"bad test window of {test_days} days: at least 1")
        split = min(as_of, end - timedelta(days=test_days))
        plan = cls(as_of=as_of, split=split, test_days=test_days)
        if split - timedelta(days=HISTORY_DAYS) < first:
            raise DataError(
                f"a model as of {as_of} is scored from {split} (the last {test_days}-day window inside "
                f"the data, {first} to {end - timedelta(days=1)}) and needs {HISTORY_DAYS} days of history "
                f"before that, from {split - timedelta(days=HISTORY_DAYS)}: pick a later --as-of or a "
                "shorter --test-days")
        if plan.train_cutoffs[-1] >= end:
            raise DataError(f"the data ends on {end - timedelta(days=1)}: a model as of {as_of} would have "
                            f"no label after its last cut-off {plan.train_cutoffs[-1]}; pick an --as-of by "
                            f"{end + timedelta(days=LABEL_DAYS - 1)}")
        return plan

    @property
    def backtest(self) -> bool:
        """The figures come from the same recipe trained as of the split, not from the model itself."""
        return self.split < self.as_of

    @property
    def train_cutoffs(self) -> tuple[date, ...]:
        """The cut-offs of the model that is served."""
        return train_cutoffs(self.as_of)

    @property
    def scored_cutoffs(self) -> tuple[date, ...]:
        """The cut-offs of the model whose figures are reported (the served one unless a backtest)."""
        return train_cutoffs(self.split)

    @property
    def cutoffs(self) -> tuple[date, ...]:
        """Every training cut-off the run needs, oldest first (a training set built for the run)."""
        return tuple(sorted(set(self.train_cutoffs) | set(self.scored_cutoffs)))

    @property
    def validation_cutoff(self) -> date:
        return validation_cutoff(self.split)

    @property
    def validation_train_cutoffs(self) -> tuple[date, ...]:
        return train_cutoffs(self.validation_cutoff)

    @property
    def evaluation(self) -> str:
        """What the gate compares on: versions scored on the same protocol and window length."""
        return f"readme-protocol-{self.test_days}d"

    def describe(self) -> str:
        how = (f"scored by a backtest as of {self.split}" if self.backtest
               else f"scored on {self.split} + {self.test_days} days")
        return f"as of {self.as_of}, {how}"

    def as_dict(self) -> dict[str, str | int | bool]:
        return {"as_of": self.as_of.isoformat(), "split": self.split.isoformat(),
                "test_days": self.test_days, "backtest": self.backtest}
