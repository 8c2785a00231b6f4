"""Offline evaluation: the data set README's protocol (`protocol`) and ranking metrics (`metrics`)."""

from finegrain.evaluation.metrics import auc, grouped_auc, hit_matrix, ranking_metrics
from finegrain.evaluation.protocol import (
    EvaluationSplit,
    build_split,
    load_events,
    most_popular,
    readme_split,
)

__all__ = [
    "EvaluationSplit",
    "auc",
    "build_split",
    "grouped_auc",
    "hit_matrix",
    "load_events",
    "most_popular",
    "ranking_metrics",
    "readme_split",
]
