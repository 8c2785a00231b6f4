"""Offline evaluation: the data set README's protocol (`protocol`) and ranking metrics (`metrics`)."""

from finegrain.evaluation.metrics import auc, grouped_auc, hit_matrix, ranking_metrics
from finegrain.evaluation.protocol import SPLIT_DATE, EvaluationSplit, build_split, load_events, most_popular

__all__ = [
    "SPLIT_DATE",
    "EvaluationSplit",
    "auc",
    "build_split",
    "grouped_auc",
    "hit_matrix",
    "load_events",
    "most_popular",
    "ranking_metrics",
]
