"""The offline evaluation protocol of the data set README, on the canonical events (pandas).

- Global temporal split at a date's midnight (timestamps are the invoices' wall-clock times): train =
  every purchase before, test = the `test_days` (30) from that date. The README's own split is the
  last 30 days of the data (`readme_split`: 2010-11-10 on the sample data); any other date inside the
  data is the same protocol at another point in time.
- Evaluated users: customers with a purchase in train and in test (1,291 on the sample data).
- Target: the distinct items a user bought in the test window, including items never seen in train
  (they cannot be recommended but count in Recall's denominator).
- Candidates: every item seen in train.
- "Explore" variant: the items a user bought in train are removed from both the ranking and the
  target; users left without a target are dropped (1,190 users).
Every ranker is evaluated through `EvaluationSplit.evaluate`, so the variant's filtering and the
metric definitions (`finegrain.evaluation.metrics`) are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from finegrain.data.retail import read_events
from finegrain.dates import data_end, midnight_utc, utc_timestamps
from finegrain.errors import DataError
from finegrain.evaluation.metrics import hit_matrix, ranking_metrics
from finegrain.schemas import PurchaseHistory

TEST_DAYS = 30
DEFAULT_KS = (10, 20)
_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class TrainHistory:
    """The train purchases of the evaluated users, one row per (user, item), as parallel arrays.

    `user` indexes `EvaluationSplit.users`, `item` indexes `EvaluationSplit.items`."""

    user: np.ndarray
    item: np.ndarray
    times_bought: np.ndarray  # distinct invoices with the item
    last_bought_day: np.ndarray  # days since the Unix epoch of the last purchase
    quantity: np.ndarray


@dataclass(frozen=True)
class EvaluationSplit:
    split_date: date
    explore: bool
    users: np.ndarray  # evaluated user ids, sorted
    items: np.ndarray  # candidate item ids (seen in train), sorted
    targets: sp.csr_matrix  # users x items: targets among the candidates
    n_targets: np.ndarray  # per user: size of the whole target set
    history: TrainHistory
    train: pd.DataFrame  # train events of every user: user_id, item_id, invoice, quantity, timestamp

    @property
    def today(self) -> int:
        """The split date as days since the Unix epoch: "now" for recency features."""
        return (self.split_date - date(1970, 1, 1)).days

    def item_index(self, item_ids: Iterable[str]) -> np.ndarray:
        """Candidate index of each id; -1 for an item that is not a candidate."""
        ids = np.asarray(list(item_ids), dtype=object)
        if not len(ids):
            return np.empty(0, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.items, ids), len(self.items) - 1)
        return np.where(self.items[position] == ids, position, -1).astype(np.int64)

    def seen(self) -> sp.csr_matrix:
        """Users x items: 1 where the user bought the item in train."""
        h = self.history
        return sp.csr_matrix((np.ones(len(h.user), dtype=np.float32), (h.user, h.item)),
                             shape=(len(self.users), len(self.items)))

    def purchase_history(self, row: int) -> PurchaseHistory:
        """The train history of the evaluated user at `row`, as serving would read it from a profile."""
        h = self.history
        start, end = np.searchsorted(h.user, [row, row + 1])
        return PurchaseHistory(item_ids=self.items[h.item[start:end]].tolist(),
                               times_bought=h.times_bought[start:end].tolist(),
                               last_bought_day=h.last_bought_day[start:end].tolist(),
                               quantity=h.quantity[start:end].astype(np.float32).tolist())

    def global_ranking(self, item_ids: Sequence[str]) -> np.ndarray:
        """One list for every user (e.g. MostPop), as candidate indices; non-candidates dropped.

        Pass the whole list: in the explore variant each user's train items are removed from it
        before it is cut to K."""
        indices = self.item_index(item_ids)
        indices = indices[indices >= 0]
        return np.broadcast_to(indices, (len(self.users), len(indices)))

    def evaluate(self, ranked: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
        """Mean HR/Recall/NDCG at each k of rankings (users x positions of candidate indices, -1 pad)."""
        ranked = np.asarray(ranked)
        if self.explore:
            ranked = drop_items(ranked, self.seen())
        return ranking_metrics(hit_matrix(ranked, self.targets), self.n_targets, ks)


def drop_items(ranked: np.ndarray, excluded: sp.csr_matrix) -> np.ndarray:
    """Each row of `ranked` without its user's excluded items, order kept, -1 padded at the end."""
    keep = ~hit_matrix(ranked, excluded) & (ranked >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")
    compacted = np.take_along_axis(ranked, order, axis=1).copy()
    compacted[~np.take_along_axis(keep, order, axis=1)] = -1
    return compacted


def load_events(path: Path) -> pd.DataFrame:
    """The canonical events (a loaded or synthetic data set folder, or its events.parquet)."""
    return read_events(path)


def build_split(events: pd.DataFrame, split_date: date, *, explore: bool = False,
                test_days: int = TEST_DAYS) -> EvaluationSplit:
    missing = {"user_id", "item_id", "invoice", "quantity", "timestamp"} - set(events.columns)
    if missing:
        raise DataError(f"events lack column(s) {', '.join(sorted(missing))}")
    start = pd.Timestamp(midnight_utc(split_date))
    end = start + pd.Timedelta(timedelta(days=test_days))
    timestamps = utc_timestamps(events["timestamp"])
    columns = ["user_id", "item_id", "invoice", "quantity", "timestamp"]
    train = events.loc[timestamps < start, columns]
    test = events.loc[(timestamps >= start) & (timestamps < end), ["user_id", "item_id"]]
    if train.empty or test.empty:
        raise DataError(f"the split at {split_date} leaves {len(train):,} train and {len(test):,} test "
                        f"events (data from {timestamps.min()} to {timestamps.max()}): pick a date inside")

    items = np.sort(train["item_id"].unique()).astype(object)
    users = np.intersect1d(train["user_id"].unique(), test["user_id"].unique()).astype(object)
    train_pairs = (train[train["user_id"].isin(users)]
                   .groupby(["user_id", "item_id"], sort=True)
                   .agg(times_bought=("invoice", "nunique"), last=("timestamp", "max"),
                        quantity=("quantity", "sum"))
                   .reset_index())
    test_pairs = test[test["user_id"].isin(users)].drop_duplicates()
    if explore:
        bought = test_pairs.merge(train_pairs[["user_id", "item_id"]], how="left", indicator=True)
        test_pairs = test_pairs[(bought["_merge"] == "left_only").to_numpy()]
        users = np.sort(test_pairs["user_id"].unique()).astype(object)
        train_pairs = train_pairs[train_pairs["user_id"].isin(users)]
    if not len(users):
        raise DataError(f"no user bought both before and after {split_date}: nothing to evaluate")

    user_row = pd.Index(users)
    n_targets = np.bincount(user_row.get_indexer(test_pairs["user_id"]), minlength=len(users))
    known = test_pairs[test_pairs["item_id"].isin(items)]
    targets = sp.csr_matrix(
        (np.ones(len(known), dtype=np.float32),
         (user_row.get_indexer(known["user_id"]), np.searchsorted(items, known["item_id"].to_numpy()))),
        shape=(len(users), len(items)))
    last = train_pairs["last"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    history = TrainHistory(
        user=user_row.get_indexer(train_pairs["user_id"]).astype(np.int64),
        item=np.searchsorted(items, train_pairs["item_id"].to_numpy()).astype(np.int64),
        times_bought=train_pairs["times_bought"].to_numpy(np.int32),
        last_bought_day=((last - np.datetime64("1970-01-01")) // _DAY).astype(np.int32),
        quantity=train_pairs["quantity"].to_numpy(np.float64),
    )
    return EvaluationSplit(split_date=split_date, explore=explore, users=users, items=items, targets=targets,
                           n_targets=n_targets, history=history, train=train)


def most_popular(split: EvaluationSplit, depth: int | None = None) -> list[str]:
    """The README's MostPop: train items by number of distinct buyers (ties by item id)."""
    buyers = split.train.groupby("item_id")["user_id"].nunique()
    ranked = buyers.reset_index().sort_values(["user_id", "item_id"], ascending=[False, True])
    ids: list[str] = ranked["item_id"].tolist()
    return ids[:depth] if depth else ids


def readme_split(events: pd.DataFrame, test_days: int = TEST_DAYS) -> date:
    """The README protocol's split: the test window is the data's last `test_days` days."""
    return data_end(events) - timedelta(days=test_days)


def reference_rows(events: pd.DataFrame, split_date: date, variant: str = "standard"
                   ) -> dict[str, dict[str, float]]:
    """The data set README's rows, which apply to its own split only (the last 30 days)."""
    return REFERENCE[variant] if split_date == readme_split(events) else {}


# The data set README's reference rows (its split: the sample data's last 30 days); HR@20 is not given.
REFERENCE_NOTE = ("README rows: ItemKNN = cosine over the binary user x item matrix, EASE with lambda = 500, "
                  "repeat = the user's own repeat frequency with a popularity tie-break.")
REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    "standard": {
        "MostPop": {"HR@10": 0.532, "Recall@10": 0.039, "NDCG@10": 0.114, "Recall@20": 0.067,
                    "NDCG@20": 0.108},
        "ItemKNN": {"HR@10": 0.660, "Recall@10": 0.086, "NDCG@10": 0.202, "Recall@20": 0.136,
                             "NDCG@20": 0.195},
        "EASE": {"HR@10": 0.741, "Recall@10": 0.120, "NDCG@10": 0.270, "Recall@20": 0.195,
                              "NDCG@20": 0.266},
        "repeat": {"HR@10": 0.865, "Recall@10": 0.182, "NDCG@10": 0.354, "Recall@20": 0.260,
                             "NDCG@20": 0.344},
    },
    "explore": {
        "MostPop": {"Recall@20": 0.036, "NDCG@20": 0.041},
        "ItemKNN": {"Recall@20": 0.075, "NDCG@20": 0.080},
        "EASE": {"Recall@20": 0.113, "NDCG@20": 0.111},
    },
}
