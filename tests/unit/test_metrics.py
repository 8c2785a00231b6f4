"""Ranking metrics on hand-computed cases, AUC against brute force, and the protocol on a tiny data set."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from finegrain.evaluation.metrics import (
    auc,
    grouped_auc,
    hit_matrix,
    hit_rate,
    ndcg,
    precision,
    ranking_metrics,
    recall,
)
from finegrain.evaluation.protocol import build_split, drop_items, most_popular


def targets(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    users, items = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(data)), (users, items)), shape=(len(rows), n_items))


# User 0 wants {1, 3}; user 1 wants {2} plus one item that cannot be ranked (counted in n_targets).
RANKED = np.array([[3, 0, 1, -1], [0, 1, 4, 2]])
TARGETS = targets([[1, 3], [2]], n_items=5)
N_TARGETS = np.array([2, 2])


def test_hit_matrix_marks_targets_and_never_padding() -> None:
    hits = hit_matrix(RANKED, TARGETS)
    assert hits.tolist() == [[True, False, True, False], [False, False, False, True]]


def test_padding_does_not_read_as_the_previous_users_last_item() -> None:
    # -1 in row 1 is key 1*5 - 1 = 4 = (user 0, item 4): a naive key lookup would count it.
    hits = hit_matrix(np.array([[0], [-1]]), targets([[4], [0]], n_items=5))
    assert hits.tolist() == [[False], [False]]


def test_hand_computed_metrics_at_2_and_4() -> None:
    hits = hit_matrix(RANKED, TARGETS)
    assert hit_rate(hits, 2).tolist() == [1.0, 0.0]
    assert recall(hits, N_TARGETS, 2).tolist() == [0.5, 0.0]
    assert precision(hits, 2).tolist() == [0.5, 0.0]
    ideal_two = 1 + 1 / math.log2(3)
    assert ndcg(hits, N_TARGETS, 2) == pytest.approx([1 / ideal_two, 0.0])
    # At 4: user 0 hits at ranks 1 and 3; user 1 at rank 4, with two targets (one unrankable).
    assert recall(hits, N_TARGETS, 4).tolist() == [1.0, 0.5]
    assert ndcg(hits, N_TARGETS, 4) == pytest.approx(
        [(1 + 1 / math.log2(4)) / ideal_two, (1 / math.log2(5)) / ideal_two])
    figures = ranking_metrics(hits, N_TARGETS, ks=(2, 4))
    assert figures["HR@4"] == 1.0
    assert figures["Recall@4"] == pytest.approx(0.75)
    assert set(figures) == {f"{m}@{k}" for m in ("HR", "Recall", "NDCG") for k in (2, 4)}


def test_ideal_dcg_is_capped_at_k() -> None:
    # Ten targets and a perfect top 2: NDCG@2 is 1 even though recall is 0.2.
    hits = np.array([[True, True]])
    assert ndcg(hits, np.array([10]), 2) == pytest.approx([1.0])
    assert recall(hits, np.array([10]), 2) == pytest.approx([0.2])


def test_users_without_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="no target"):
        recall(np.zeros((2, 3), dtype=bool), np.array([1, 0]), 3)
    with pytest.raises(ValueError, match="k must be"):
        hit_rate(np.zeros((1, 3), dtype=bool), 0)
    with pytest.raises(ValueError, match="users"):
        hit_matrix(np.zeros((3, 2), dtype=int), TARGETS)


def test_auc_hand_cases_and_ties() -> None:
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert auc(np.array([0.1, 0.8, 0.9]), np.array([1, 0, 0])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    # Positives 0.8 and 0.4 against negatives 0.6 and 0.4: 2 wins, 1 tie, 1 loss of 4 pairs.
    assert auc(np.array([0.8, 0.4, 0.6, 0.4]), np.array([1, 1, 0, 0])) == pytest.approx(2.5 / 4)
    assert math.isnan(auc(np.array([0.3, 0.2]), np.array([1, 1])))


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auc_and_grouped_auc_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=300).astype(float)  # many ties on purpose
    labels = (rng.random(300) < 0.3).astype(int)
    groups = rng.integers(0, 12, size=300)
    assert auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))
    per_group, sizes = [], []
    for g in np.unique(groups):
        mask = groups == g
        if 0 < labels[mask].sum() < mask.sum():
            per_group.append(brute_force_auc(scores[mask], labels[mask]))
            sizes.append(mask.sum())
    assert grouped_auc(scores, labels, groups) == pytest.approx(np.average(per_group, weights=sizes))
    assert grouped_auc(scores, labels, groups, weighted=False) == pytest.approx(np.mean(per_group))


def test_grouped_auc_skips_one_class_groups() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.4])
    labels = np.array([1, 0, 1, 1])
    assert grouped_auc(scores, labels, np.array(["a", "a", "b", "b"])) == 1.0


def test_drop_items_keeps_order_and_pads() -> None:
    excluded = targets([[3], []], n_items=5)
    assert drop_items(RANKED, excluded).tolist() == [[0, 1, -1, -1], [0, 1, 4, 2]]


def _events(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "invoice", "timestamp"])
    frame["quantity"] = 1
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
    return frame


def test_protocol_split_targets_and_explore_variant() -> None:
    events = _events([
        ("u1", "a", "1", "2010-11-01 10:00"), ("u1", "b", "1", "2010-11-01 10:00"),
        ("u1", "a", "2", "2010-11-05 09:00"),
        ("u2", "a", "3", "2010-11-02 10:00"),
        ("u3", "c", "4", "2010-11-03 10:00"),  # no test purchase: not evaluated
        ("u1", "a", "5", "2010-11-10 00:00"),  # the split instant belongs to test
        ("u1", "new", "5", "2010-11-10 00:00"),  # never seen in train: a target nobody can rank
        ("u2", "a", "6", "2010-11-20 10:00"),
        ("u2", "b", "6", "2010-11-20 10:00"),
        ("u2", "c", "7", "2010-12-10 10:00"),  # 30 days after the split: outside the window
    ])
    split = build_split(events, date(2010, 11, 10))
    assert split.users.tolist() == ["u1", "u2"]
    assert split.items.tolist() == ["a", "b", "c"]
    assert split.n_targets.tolist() == [2, 2]
    assert split.targets.toarray().tolist() == [[1, 0, 0], [1, 1, 0]]
    history = split.purchase_history(0)
    assert list(history.item_ids) == ["a", "b"]
    assert list(history.times_bought) == [2, 1]
    assert history.last_bought_day[0] == (date(2010, 11, 5) - date(1970, 1, 1)).days
    assert most_popular(split) == ["a", "b", "c"]  # 2 buyers, then ties by id
    # Everyone gets [a, b, c]: u1 hits a (1 of 2 targets), u2 hits a and b.
    assert split.evaluate(split.global_ranking(["a", "b", "c"]), ks=(2,))["Recall@2"] == pytest.approx(0.75)

    explore = build_split(events, date(2010, 11, 10), explore=True)
    # u1's only rankable target was bought before, so only "new" is left; u2 keeps b (a is removed).
    assert explore.users.tolist() == ["u1", "u2"]
    assert explore.n_targets.tolist() == [1, 1]
    figures = explore.evaluate(explore.global_ranking(["a", "b", "c"]), ks=(1,))
    # u2's ranking without a becomes [b, c]: a hit at rank 1; u1 cannot hit "new".
    assert figures["HR@1"] == 0.5


def test_protocol_refuses_a_split_outside_the_data() -> None:
    events = _events([("u1", "a", "1", "2010-11-01 10:00")])
    with pytest.raises(ValueError, match="pick a date inside"):
        build_split(events, date(2010, 11, 10))
