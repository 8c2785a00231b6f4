"""The embedding recall channel on the real data: ALS trained on the purchases before the README split
beats MostPop on the protocol (Recall@20 and Recall@200), the artifact round-trips through bytes and
through the model registry (same top-K), and fold-in agrees with the learnt user vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finegrain.evaluation.protocol import EvaluationSplit, build_split, load_events, most_popular
from finegrain.recall.embedding import EmbeddingIndex
from finegrain.schemas import DataSnapshot
from finegrain.settings import Settings
from models.embeddings import (
    MODEL_NAME,
    AlsConfig,
    TrainedEmbeddings,
    channel_ranking,
    evaluate_channel,
    manifest_fields,
    train_embeddings,
)
from models.registry import ModelRegistry
from tests.integration.sample import SPLIT_DATE

pytestmark = pytest.mark.integration

KS = (10, 20, 100, 200)


@pytest.fixture(scope="module")
def split(retail_data: Path) -> EvaluationSplit:
    return build_split(load_events(retail_data), SPLIT_DATE)


@pytest.fixture(scope="module")
def trained(split: EvaluationSplit) -> TrainedEmbeddings:
    # The train events only: what the model may see is exactly what the protocol calls train.
    return train_embeddings(split.train, SPLIT_DATE, AlsConfig())


@pytest.fixture(scope="module")
def figures(trained: TrainedEmbeddings, split: EvaluationSplit) -> dict[str, float]:
    return evaluate_channel(trained.model, split, KS)


def test_training_is_quick_and_covers_the_train_items(trained: TrainedEmbeddings,
                                                      split: EvaluationSplit) -> None:
    assert trained.seconds < 40
    # Every candidate of the protocol is an item of the index, and every evaluated user has a vector.
    assert trained.model.item_ids.astype(str).tolist() == split.items.astype(str).tolist()
    assert trained.model.user_vectors(split.users)[1].all()
    assert trained.n_pairs == split.train.groupby(["user_id", "item_id"]).ngroups


def test_channel_beats_most_pop_on_recall(figures: dict[str, float], split: EvaluationSplit) -> None:
    most_pop = split.evaluate(split.global_ranking(most_popular(split)), KS)
    assert most_pop["Recall@20"] == pytest.approx(0.067, abs=0.005)  # the README's row: same protocol
    assert figures["Recall@20"] > most_pop["Recall@20"] + 0.05
    assert figures["Recall@200"] > most_pop["Recall@200"] + 0.1
    assert figures["NDCG@20"] > most_pop["NDCG@20"]
    assert figures["Recall@10"] <= figures["Recall@20"] <= figures["Recall@100"] <= figures["Recall@200"]


def test_ranking_holds_distinct_candidates(trained: TrainedEmbeddings, split: EvaluationSplit) -> None:
    ranked = channel_ranking(trained.model, split, 200)
    assert ranked.shape == (len(split.users), 200) and (ranked >= 0).all()
    assert all(len(np.unique(row)) == 200 for row in ranked[:50])


def test_fold_in_reproduces_the_learnt_user_vector(trained: TrainedEmbeddings,
                                                   split: EvaluationSplit) -> None:
    """A history folded in at the as-of date gives (nearly) the top-K of the user's learnt vector: the
    user step of ALS is what fold-in computes, up to the CG solver's few steps."""
    model = trained.model
    overlaps = []
    for row in range(0, len(split.users), 60):
        learnt = model.recommend(20, user_id=str(split.users[row]))
        folded = model.recommend(20, history=split.purchase_history(row), today=split.today)
        overlaps.append(len(set(learnt.item_ids) & set(folded.item_ids)) / 20)
    assert np.mean(overlaps) > 0.85


def test_artifact_round_trips_through_bytes_and_the_registry(
        trained: TrainedEmbeddings, split: EvaluationSplit, figures: dict[str, float],
        settings: Settings) -> None:
    data = trained.model.to_bytes()
    restored = EmbeddingIndex.from_bytes(data)
    users = [str(u) for u in split.users[:25]]
    vectors, _ = trained.model.user_vectors(users)
    rows, scores = trained.model.search(vectors, 100)
    rows_back, scores_back = restored.search(restored.user_vectors(users)[0], 100)
    np.testing.assert_array_equal(rows, rows_back)
    np.testing.assert_allclose(scores, scores_back)

    registry = ModelRegistry(settings)
    snapshot = DataSnapshot(as_of_date=SPLIT_DATE.isoformat(), rows=len(split.train))
    manifest = registry.register(MODEL_NAME, data, data_snapshot=snapshot,
                                 **manifest_fields(trained, figures))
    assert manifest.metrics["Recall@200"] == pytest.approx(figures["Recall@200"])
    assert manifest.params["factors"] == "64" and manifest.data_snapshot.as_of_date == "2010-11-10"
    loaded = EmbeddingIndex.from_bytes(registry.fetch_artifact(manifest))
    user = users[0]
    assert loaded.recommend(50, user_id=user).item_ids == trained.model.recommend(50, user_id=user).item_ids
    assert loaded.info["as_of"] == "2010-11-10"
