"""The rankers' candidate context, defined once for training, evaluation and serving.

A ranker learns from the recall scores of its candidates (`finegrain.features.ranking`'s
`recall_*` and `user_candidates` features). Training sets draw their candidates from two channels,
item-to-item and the all-time MostPop list, each cut at a depth; serving ranks the merged candidates
of every channel. For a feature to mean at serving what it meant in training, both must read the
same lists at the same depths: `candidate_context` is that one reading, called by the training-set
builders (pandas and Spark, through `finegrain.training.training_set`) and by the API's ranking stage
(`serving.recommend`), and `training_candidates` is the candidate set a training group holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from finegrain.recall.item_to_item import ItemToItemConfig, NeighbourMatrix
from finegrain.storage.lists import RankedList

# The popularity job's list that the `recall_popularity` feature reads: distinct buyers over the whole
# history, global scope (what `CutoffInputs.popular` computes as of a past cut-off).
MOST_POPULAR_SCOPE = "global"
MOST_POPULAR_NAME = "all@all"
MOST_POPULAR_LIST = f"{MOST_POPULAR_SCOPE}:{MOST_POPULAR_NAME}"  # as `DataSnapshot.popular` keys it


@dataclass(frozen=True)
class CandidateConfig:
    """How deep the rankers' candidate context reads each list."""

    i2i_depth: int = 200
    """Item-to-item candidates per user (best first), and the depth `recall_item_to_item` scores."""
    popular_depth: int = 50
    """MostPop items added after them, and the depth `recall_popularity` scores."""
    item_to_item: ItemToItemConfig = field(default_factory=ItemToItemConfig)
    """The item-to-item channel's scoring (seed weights, half-life)."""


@dataclass(frozen=True)
class CandidateContext:
    """Per candidate, the recall scores the ranking features read, and the size of the candidate set a
    training group of this user would hold (`user_candidates`)."""

    recall: dict[str, np.ndarray]
    candidate_count: int


def training_candidates(item_to_item: RankedList, popular: RankedList, config: CandidateConfig
                        ) -> np.ndarray:
    """A training group's candidates: the item-to-item top `i2i_depth`, then the `popular_depth` most
    popular items it did not recall."""
    i2i_ids = np.asarray(item_to_item.item_ids[:config.i2i_depth]).astype(str)
    top_popular = np.asarray(popular.item_ids[:config.popular_depth]).astype(str)
    extra = ~np.isin(top_popular, i2i_ids)
    return np.concatenate([i2i_ids, top_popular[extra]]).astype(object)


def candidate_context(candidates: np.ndarray, item_to_item: RankedList, popular: RankedList,
                      recent: np.ndarray, realtime: np.ndarray, neighbours: NeighbourMatrix,
                      config: CandidateConfig) -> CandidateContext:
    """The recall scores of `candidates`: item-to-item and popularity from those lists cut at their
    depths (0 beyond), the recent item-to-item and the real-time scores from `recent` and `realtime`
    (one score per item of `neighbours`, the cosine matrix), and the training candidate count of the
    same lists."""
    position = pd.Index(np.asarray(candidates, dtype=object))

    def scored(listing: RankedList, depth: int) -> np.ndarray:
        values = np.zeros(len(position))
        where = position.get_indexer(np.asarray(listing.item_ids[:depth], dtype=object))
        found = where >= 0
        values[where[found]] = np.asarray(listing.scores[:depth], dtype=np.float64)[found]
        return values

    columns = neighbours.index(list(position))
    def per_item(values: np.ndarray) -> np.ndarray:
        return np.where(columns >= 0, values[np.maximum(columns, 0)], 0.0)

    recall = {"item_to_item": scored(item_to_item, config.i2i_depth),
              "popularity": scored(popular, config.popular_depth),
              "item_to_item_recent": per_item(recent), "realtime": per_item(realtime)}
    return CandidateContext(recall, len(training_candidates(item_to_item, popular, config)))
