"""The rankers' candidate context: one reading of the item-to-item and MostPop lists, the same for a
training group and for serving's larger merged candidate set."""

from __future__ import annotations

import numpy as np

from finegrain.recall.item_to_item import NeighbourMatrix
from finegrain.storage.lists import RankedList
from finegrain.training.candidates import CandidateConfig, candidate_context, training_candidates

CONFIG = CandidateConfig(i2i_depth=3, popular_depth=2)
# Item-to-item recalls five items; only the top three are in the context (depth 3).
I2I = RankedList(np.array(["a", "b", "c", "d", "e"], dtype=object), np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
# MostPop: "b" is already recalled by item-to-item; only the top two count (depth 2).
POPULAR = RankedList(np.array(["b", "p", "q"], dtype=object), np.array([30.0, 20.0, 10.0]))
NEIGHBOURS = NeighbourMatrix.from_lists({}, ["a", "b", "c", "d", "e", "p", "q", "x"])
# One recent score per item of the matrix, in its (sorted) id order: a b c d e p q x.
RECENT = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
REALTIME = RECENT * 10


def test_training_candidates_are_the_item_to_item_top_then_unseen_popular_items() -> None:
    assert training_candidates(I2I, POPULAR, CONFIG).tolist() == ["a", "b", "c", "p"]


def test_scores_stop_at_each_lists_depth() -> None:
    context = candidate_context(np.array(["d", "a", "p", "q", "x"], dtype=object), I2I, POPULAR, RECENT,
                                REALTIME, NEIGHBOURS, CONFIG)
    # "d" is recalled by item-to-item, but below the depth training reads; "q" is third in MostPop.
    np.testing.assert_array_equal(context.recall["item_to_item"], [0.0, 0.9, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(context.recall["popularity"], [0.0, 0.0, 20.0, 0.0, 0.0])
    np.testing.assert_array_equal(context.recall["item_to_item_recent"], [0.4, 0.1, 0.6, 0.7, 0.8])
    np.testing.assert_array_equal(context.recall["realtime"], [4.0, 1.0, 6.0, 7.0, 8.0])
    assert context.candidate_count == 4  # a, b, c from item-to-item, p from MostPop


def test_serving_reads_a_training_groups_candidates_as_training_does() -> None:
    """Serving's merged set holds more items than a training group; on the group's items every
    recall score and the candidate count are the ones training computed."""
    group = training_candidates(I2I, POPULAR, CONFIG)
    trained = candidate_context(group, I2I, POPULAR, RECENT, REALTIME, NEIGHBOURS, CONFIG)
    merged = np.array(["x", "c", "e", "p", "a", "q", "b"], dtype=object)
    served = candidate_context(merged, I2I, POPULAR, RECENT, REALTIME, NEIGHBOURS, CONFIG)
    rows = [merged.tolist().index(item) for item in group.tolist()]
    for channel, values in trained.recall.items():
        np.testing.assert_array_equal(served.recall[channel][rows], values, err_msg=channel)
    assert served.candidate_count == trained.candidate_count == len(group)


def test_no_item_to_item_list_leaves_the_popular_items() -> None:
    empty = RankedList(np.empty(0, dtype=object), np.empty(0))
    context = candidate_context(np.array(["p"], dtype=object), empty, POPULAR, RECENT, REALTIME, NEIGHBOURS,
                                CONFIG)
    assert context.candidate_count == 2
    np.testing.assert_array_equal(context.recall["item_to_item"], [0.0])
    np.testing.assert_array_equal(context.recall["popularity"], [20.0])
