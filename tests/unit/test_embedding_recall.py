"""The embedding channel's scoring side on hand-made vectors (exact neighbours worked out by hand), the
ALS fold-in against its closed form, the artifact round trip, and the ALS solver on a tiny matrix."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from finegrain.recall.embedding import ConfidenceParams, EmbeddingIndex, build_index, confidence
from finegrain.recall.item_to_item import History
from finegrain.schemas import PurchaseHistory
from models.embeddings import AlsConfig, als, interactions, train_embeddings

TODAY = 15_000
PARAMS = ConfidenceParams(alpha=2.0, half_life_days=30.0, regularization=0.5)
# Four items on the axes and one on the diagonal of the first two: inner products are easy by hand.
# Deliberately not sorted: the row order is the id order.
ITEMS = np.array(["d", "a", "c", "b", "e"], dtype=object)
ITEM_VECTORS = np.array([[0.0, 0.0, 0.0, 1.0],
                         [1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 1.0, 0.0],
                         [0.0, 1.0, 0.0, 0.0],
                         [0.6, 0.6, 0.0, 0.0]], dtype=np.float32)
USERS = np.array(["u1", "u2"], dtype=object)
USER_VECTORS = np.array([[1.0, 0.5, 0.0, 0.1],   # a 1.0, e 0.9, b 0.5, d 0.1, c 0
                         [0.0, 0.0, 2.0, -1.0]], dtype=np.float32)  # c 2.0, then a/b/e 0, d -1


def model(index_type: str = "flat") -> EmbeddingIndex:
    return EmbeddingIndex(index=build_index(ITEM_VECTORS, index_type), item_ids=ITEMS, user_ids=USERS,
                          user_factors=USER_VECTORS, params=PARAMS, index_type=index_type)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_known_user_gets_exact_inner_product_neighbours(index_type: str) -> None:
    top = model(index_type).recommend(3, user_id="u1")
    assert top.item_ids == ["a", "e", "b"]
    np.testing.assert_allclose(top.scores, [1.0, 0.9, 0.5], rtol=1e-6)
    assert model(index_type).recommend(1, user_id="u2").item_ids == ["c"]


def test_k_beyond_the_catalogue_returns_every_item_once() -> None:
    top = model().recommend(10, user_id="u1")
    assert top.item_ids == ["a", "e", "b", "d", "c"]
    rows, scores = model().search(USER_VECTORS, 7)
    assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_unknown_user_without_history_gets_nothing() -> None:
    top = model().recommend(3, user_id="nobody")
    assert top.item_ids == [] and len(top.scores) == 0
    vectors, known = model().user_vectors(["u2", "nobody", "u1"])
    assert known.tolist() == [True, False, True]
    np.testing.assert_array_equal(vectors[0], USER_VECTORS[1])
    assert not vectors[1].any()


def test_fold_in_is_the_closed_form_als_user_step() -> None:
    history = PurchaseHistory(item_ids=["b", "zz-unknown", "a"], times_bought=[3, 1, 1],
                              last_bought_day=[TODAY, TODAY, TODAY - 30])
    vector = model().fold_in(history, TODAY)
    y = ITEM_VECTORS[[3, 1]].astype(np.float64)  # b, a (the unknown item is ignored)
    c = 1.0 + PARAMS.alpha * np.log1p(np.array([3.0, 0.5]))  # a is one half-life old
    gram = ITEM_VECTORS.astype(np.float64).T @ ITEM_VECTORS
    expected = np.linalg.solve(gram + (y.T * (c - 1)) @ y + PARAMS.regularization * np.eye(4), y.T @ c)
    np.testing.assert_allclose(vector, expected, rtol=1e-5)
    days = np.array([TODAY, TODAY - 30])
    np.testing.assert_allclose(confidence(np.array([3.0, 1.0]), days, TODAY, PARAMS), c)


def test_history_is_folded_in_and_bought_items_can_be_excluded() -> None:
    history = History(np.array(["b"], dtype=object), np.array([5.0]), np.array([TODAY]))
    # The user vector points along b (plus a little e, which shares b's direction).
    top = model().recommend(2, history=history, today=TODAY)
    assert top.item_ids == ["b", "e"]
    top = model().recommend(2, history=history, today=TODAY, exclude_bought=True)
    assert top.item_ids[0] == "e" and "b" not in top.item_ids and len(top.item_ids) == 2
    with pytest.raises(ValueError, match="today"):
        model().recommend(2, history=history)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_artifact_round_trip_gives_the_same_top_k(index_type: str) -> None:
    original = model(index_type)
    original.info = {"as_of": "2010-11-10"}
    restored = EmbeddingIndex.from_bytes(original.to_bytes())
    assert restored.index_type == index_type and restored.params == PARAMS
    assert restored.item_ids.tolist() == ITEMS.tolist() and restored.info == {"as_of": "2010-11-10"}
    for user in USERS:
        a, b = original.recommend(5, user_id=user), restored.recommend(5, user_id=user)
        assert a.item_ids == b.item_ids
        np.testing.assert_allclose(a.scores, b.scores)
    assert original.to_bytes() == restored.to_bytes()


def test_a_foreign_artifact_is_refused() -> None:
    with pytest.raises(ValueError, match="not an embedding artifact"):
        EmbeddingIndex.from_bytes(b"definitely not an npz")


def test_inconsistent_parts_are_refused() -> None:
    with pytest.raises(ValueError, match="item ids"):
        EmbeddingIndex(index=build_index(ITEM_VECTORS), item_ids=ITEMS[:3], user_ids=USERS,
                       user_factors=USER_VECTORS, params=PARAMS)
    with pytest.raises(ValueError, match="sorted"):
        EmbeddingIndex(index=build_index(ITEM_VECTORS), item_ids=ITEMS, user_ids=USERS[::-1],
                       user_factors=USER_VECTORS, params=PARAMS)
    with pytest.raises(ValueError, match="unknown index type"):
        build_index(ITEM_VECTORS, "ivf")


def test_als_matches_the_exact_solution_of_each_half_step() -> None:
    """With enough CG steps, the last half-step (the items) solves its normal equations exactly for the
    final user factors."""
    rng = np.random.default_rng(1)
    dense = (rng.random((12, 9)) < 0.35) * (1.0 + rng.integers(1, 4, (12, 9)))
    conf = sp.csr_matrix(dense)
    config = AlsConfig(factors=3, iterations=6, cg_steps=8, params=PARAMS)
    users, items = als(conf, config)
    x = users.astype(np.float64)
    by_item = conf.T.tocsr()
    for i in range(by_item.shape[0]):
        rows, c = by_item[i].indices, by_item[i].data
        a = x.T @ x + (x[rows].T * (c - 1)) @ x[rows] + PARAMS.regularization * np.eye(3)
        np.testing.assert_allclose(items[i], np.linalg.solve(a, x[rows].T @ c), rtol=1e-3, atol=1e-4)


def test_training_reads_only_purchases_before_the_as_of_date() -> None:
    events = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "item_id": ["a", "b", "a", "c", "z"],
        "invoice": ["1", "1", "2", "3", "4"],
        "timestamp": pd.to_datetime(["2010-01-01", "2010-01-01", "2010-01-02", "2010-01-03", "2010-02-01"],
                                    utc=True),
    })
    data = interactions(events, date(2010, 1, 10), PARAMS)
    assert data.user_ids.tolist() == ["u1", "u2"] and data.item_ids.tolist() == ["a", "b", "c"]
    trained = train_embeddings(events, date(2010, 1, 10), AlsConfig(factors=2, iterations=3, params=PARAMS))
    assert trained.model.item_ids.tolist() == ["a", "b", "c"] and trained.n_pairs == 4
    assert trained.model.recommend(3, user_id="u3").item_ids == []
