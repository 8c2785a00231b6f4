"""Offline ranking metrics over many users at once (NumPy, no per-user Python loop).

Conventions, those of the data set README's reference table:
- a ranking is one row of item indices per user, best first, padded with -1 when shorter;
- gains are binary (an item is in the user's target set or not);
- Recall@K divides the hits in the top K by the size of the whole target set (items that cannot be
  recommended, such as items never seen in training, still count), so a perfect ranker scores below
  1 when a user bought more than K items;
- NDCG@K divides DCG@K = sum of 1 / log2(rank + 1) over the hits by the DCG of an ideal ranking
  of min(|target|, K) hits;
- HR@K (hit rate) is 1 when at least one of the top K is a target;
- every figure is the mean over users, each user weighing the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

METRIC_NAMES = ("HR", "Recall", "NDCG")


def hit_matrix(ranked: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """Boolean (users x positions): whether the item at each position is in that user's targets.

    `ranked` holds item indices (columns of `targets`), -1 for an empty position; `targets` is a
    users x items 0/1 matrix with the same users in the same order."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (users x positions), got shape {ranked.shape}")
    n_users, n_items = targets.shape
    if ranked.shape[0] != n_users:
        raise ValueError(f"ranked has {ranked.shape[0]} users but targets has {n_users}")
    if ranked.size and int(ranked.max()) >= n_items:
        raise ValueError(f"ranked holds item index {int(ranked.max())}, beyond the {n_items} items")
    coo = targets.tocoo()
    if not coo.nnz:
        return np.zeros(ranked.shape, dtype=bool)
    # Each (user, item) becomes one integer, so membership is one sorted search for all users.
    target_keys = np.sort(coo.row.astype(np.int64) * n_items + coo.col)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + ranked
    found = np.minimum(np.searchsorted(target_keys, keys), len(target_keys) - 1)
    # -1 padding would otherwise read as the previous user's last item.
    hits: np.ndarray = (target_keys[found] == keys) & (ranked >= 0)
    return hits


def _check(hits: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return np.asarray(hits, dtype=bool)[:, :k]


def _check_targets(hits: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    counts = np.asarray(n_targets)
    if counts.shape != (hits.shape[0],):
        raise ValueError(f"n_targets has shape {counts.shape}, expected ({hits.shape[0]},)")
    if (counts < 1).any():
        raise ValueError(f"{int((counts < 1).sum())} user(s) have no target item: leave them out of the "
                         "evaluation (the protocol only evaluates users with a purchase in the test window)")
    return counts


def hit_rate(hits: np.ndarray, k: int) -> np.ndarray:
    """Per user: 1.0 if any of the top k is a target."""
    return np.asarray(_check(hits, k).any(axis=1), dtype=np.float64)


def precision(hits: np.ndarray, k: int) -> np.ndarray:
    """Per user: hits in the top k divided by k (an empty position counts as a miss)."""
    return np.asarray(_check(hits, k).sum(axis=1) / k, dtype=np.float64)


def recall(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Per user: hits in the top k divided by the size of the target set."""
    top = _check(hits, k)
    return np.asarray(top.sum(axis=1) / _check_targets(top, n_targets), dtype=np.float64)


def discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k."""
    return np.asarray(1.0 / np.log2(np.arange(2, k + 2)), dtype=np.float64)


def ndcg(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Per user: DCG of the top k over the DCG of min(|target|, k) hits at the top."""
    top = _check(hits, k)
    counts = _check_targets(top, n_targets)
    gains = discounts(k)
    dcg = top.astype(np.float64) @ gains[: top.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(gains)])[np.minimum(counts, k)]
    return np.asarray(dcg / ideal, dtype=np.float64)


def ranking_metrics(hits: np.ndarray, n_targets: np.ndarray, ks: Iterable[int] = (10, 20)
                    ) -> dict[str, float]:
    """Mean HR, Recall and NDCG at each k, keyed like "Recall@20"."""
    figures: dict[str, float] = {}
    for k in ks:
        figures[f"HR@{k}"] = float(hit_rate(hits, k).mean())
        figures[f"Recall@{k}"] = float(recall(hits, n_targets, k).mean())
        figures[f"NDCG@{k}"] = float(ndcg(hits, n_targets, k).mean())
    return figures


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative
    (ties count one half). NaN when only one class is present."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} must be equal 1-D shapes")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks, which is what gives ties one half.
    from scipy.stats import rankdata  # scipy.stats costs ~1 s to import; only AUC needs it

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def grouped_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, weighted: bool = True) -> float:
    """AUC within each group (e.g. each user's candidates), averaged over the groups that have both
    classes; weighted by group size (the usual GAUC) or each group equally."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    groups = np.asarray(groups)
    if not (scores.shape == positive.shape == groups.shape) or scores.ndim != 1:
        raise ValueError("scores, labels and groups must be 1-D arrays of the same length")
    if not len(scores):
        return float("nan")
    _, group = np.unique(groups, return_inverse=True)
    # Average ranks within each group: rank the scores per group by offsetting each group's block.
    order = np.lexsort((scores, group))
    sorted_group, sorted_scores = group[order], scores[order]
    new_value = np.ones(len(order), dtype=bool)
    new_value[1:] = (sorted_group[1:] != sorted_group[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
    run = np.cumsum(new_value) - 1
    run_start = np.flatnonzero(new_value)
    run_end = np.append(run_start[1:], len(order))
    group_start = np.searchsorted(sorted_group, sorted_group, side="left")
    ranks_sorted = (run_start[run] + run_end[run] + 1) / 2 - group_start
    ranks = np.empty(len(order))
    ranks[order] = ranks_sorted
    n_groups = int(group.max()) + 1
    n_pos = np.bincount(group, weights=positive, minlength=n_groups)
    size = np.bincount(group, minlength=n_groups).astype(np.float64)
    n_neg = size - n_pos
    rank_sum = np.bincount(group, weights=ranks * positive, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    per_group = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    weights = size[valid] if weighted else np.ones(int(valid.sum()))
    return float(np.average(per_group, weights=weights))
