"""The TF ranker's exported graph on a small synthetic training set: preprocessing lives inside it (NaN and
inf read as missing, heavy tails logged), the signature is the one TF Serving is given, a save / load
round trip scores the same, and unknown item ids score through the out-of-vocabulary bucket."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from finegrain.evaluation.metrics import auc
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import TrainingSet

tf_ranker = pytest.importorskip("models.tf_ranker")
tf = pytest.importorskip("tensorflow")

WIDTH = len(RANKING_FEATURE_NAMES)
SIGNAL = RANKING_FEATURE_NAMES.index("recall_item_to_item")
HEAVY = RANKING_FEATURE_NAMES.index("user_total_spend")
GROUPS, PER_GROUP = 60, 40


def synthetic_set(seed: int = 0) -> TrainingSet:
    """Labels follow one feature (so a model can learn them); a tenth of the values are NaN."""
    rng = np.random.default_rng(seed)
    n = GROUPS * PER_GROUP
    features = rng.normal(size=(n, WIDTH)).astype(np.float32)
    features[:, HEAVY] = rng.lognormal(mean=3.0, sigma=2.0, size=n)  # spend-like: a long right tail
    features[:, SIGNAL] = rng.random(n)
    labels = (features[:, SIGNAL] + 0.2 * rng.normal(size=n) > 0.8).astype(np.int8)
    features[rng.random((n, WIDTH)) < 0.1] = np.nan
    features[:, SIGNAL] = np.where(np.isnan(features[:, SIGNAL]), 0.0, features[:, SIGNAL])
    items = np.asarray([f"item{i % 50}" for i in range(n)], dtype=object)
    return TrainingSet(features=features, labels=labels, item_ids=items,
                       group_users=np.asarray([f"u{g}" for g in range(GROUPS)], dtype=object),
                       group_cutoffs=np.full(GROUPS, "2010-10-11", dtype=object),
                       group_sizes=np.full(GROUPS, PER_GROUP, dtype=np.int64),
                       n_targets=np.maximum(labels.reshape(GROUPS, PER_GROUP).sum(axis=1), 1))


@pytest.fixture(scope="module")
def rows() -> TrainingSet:
    return synthetic_set()


@pytest.fixture(scope="module")
def trained(rows: TrainingSet) -> tf_ranker.TFTraining:
    config = tf_ranker.TFRankerConfig(epochs=3, batch_size=256, min_item_rows=30, holdout_share=0.2,
                                      hidden=(32,), embedding_dim=4, learning_rate=0.01)
    return tf_ranker.train_tf_ranker(rows, config)


@pytest.fixture(scope="module")
def exported(trained: tf_ranker.TFTraining, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tf_ranker")
    trained.ranker.export(folder, version=3)
    return folder


def test_the_export_is_laid_out_for_tf_serving(exported: Path) -> None:
    assert [p.name for p in exported.iterdir()] == ["3"]
    version = exported / "3"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables" / "variables.index").is_file()
    metadata = json.loads((version / "assets.extra" / tf_ranker.METADATA_FILE).read_text())
    assert metadata["feature_names"] == list(RANKING_FEATURE_NAMES)
    assert metadata["signature"]["inputs"]["features"]["shape"] == [None, WIDTH]


def test_the_serving_signature_names_dtypes_and_shapes(exported: Path) -> None:
    # Read with TensorFlow's own loader, as TF Serving would: no Finegrain code involved.
    loaded = tf.saved_model.load(str(exported / "3"))
    assert list(loaded.signatures) == ["serving_default"]
    function = loaded.signatures["serving_default"]
    _, inputs = function.structured_input_signature
    assert sorted(inputs) == ["features", "item_id"]
    assert inputs["features"].dtype == tf.float32 and inputs["features"].shape.as_list() == [None, WIDTH]
    assert inputs["item_id"].dtype == tf.string and inputs["item_id"].shape.as_list() == [None]
    outputs = function.structured_outputs
    assert list(outputs) == ["score"]
    assert outputs["score"].dtype == tf.float32 and outputs["score"].shape.as_list() == [None]
    out = function(features=tf.zeros([5, WIDTH]), item_id=tf.constant(["item1"] * 5))
    assert out["score"].shape == (5,)


def test_save_load_scores_the_same(trained: tf_ranker.TFTraining, exported: Path, rows: TrainingSet) -> None:
    before = trained.ranker.score(rows.features, rows.item_ids)
    after = tf_ranker.TFRanker.load(exported).score(rows.features, rows.item_ids)
    np.testing.assert_array_equal(before, after)
    assert ((after > 0) & (after < 1)).all()


def test_the_model_learned_the_signal(trained: tf_ranker.TFTraining, rows: TrainingSet) -> None:
    fresh = synthetic_set(seed=1)  # rows it never saw
    assert auc(trained.ranker.score(fresh.features, fresh.item_ids), fresh.labels) > 0.7
    assert 1 <= trained.facts["best_epoch"] <= trained.facts["epochs_run"] <= 3


def test_missing_values_are_handled_inside_the_graph(trained: tf_ranker.TFTraining) -> None:
    ranker = trained.ranker
    base = np.zeros((1, WIDTH), dtype=np.float32)
    nan_row, inf_row, all_nan = base.copy(), base.copy(), np.full((1, WIDTH), np.nan, dtype=np.float32)
    nan_row[0, 5] = np.nan
    inf_row[0, 5] = np.inf
    scores = ranker.score(np.concatenate([base, nan_row, inf_row, all_nan]), ["item1"] * 4)
    assert np.isfinite(scores).all()
    assert scores[1] == scores[2]  # NaN and inf both read as "unknown"
    # The missing indicator makes "unknown" differ from a real value at the fitted mean.
    layer = tf_ranker.RawFeatures([False, True], [1.0, 2.0], [2.0, 1.0])
    out = np.asarray(layer(np.asarray([[np.nan, 0.0], [3.0, np.e - 1]], dtype=np.float32)))
    np.testing.assert_allclose(out, [[0.0, -2.0, 1.0, 0.0], [1.0, -1.0, 0.0, 0.0]], atol=1e-6)


def test_heavy_tailed_columns_are_logged(rows: TrainingSet) -> None:
    fitted = tf_ranker.Preprocessing.fit(rows.features)
    assert fitted.log[HEAVY]
    assert not fitted.log[SIGNAL]  # uniform on [0, 1]: no tail
    assert not fitted.log[RANKING_FEATURE_NAMES.index("recall_popularity")]  # normal: has negatives


def test_unknown_item_ids_share_the_oov_bucket(trained: tf_ranker.TFTraining, rows: TrainingSet) -> None:
    features = np.repeat(rows.features[:1], 4, axis=0)
    scores = trained.ranker.score(features, ["never-seen", "", "item-x", "item1"])
    assert np.isfinite(scores).all()
    assert scores[0] == scores[1] == scores[2]
    assert trained.ranker.score(np.zeros((0, WIDTH), np.float32), []).shape == (0,)


def test_bad_inputs_are_refused(trained: tf_ranker.TFTraining, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected"):
        trained.ranker.score(np.zeros((2, WIDTH - 1), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="expected"):
        trained.ranker.score(np.zeros((2, WIDTH), np.float32), ["a"])
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        tf_ranker.TFRanker.load(tmp_path)
    with pytest.raises(ValueError, match="architecture"):
        tf_ranker.TFRankerConfig(architecture="transformer")


def test_a_model_of_another_feature_layout_is_refused(exported: Path, tmp_path: Path) -> None:
    ranker = tf_ranker.TFRanker.load(exported)
    ranker.metadata = {**ranker.metadata, "feature_names": [*RANKING_FEATURE_NAMES[:-1], "renamed"]}
    ranker.export(tmp_path)
    with pytest.raises(ValueError, match="do not match the serving feature layout"):
        tf_ranker.TFRanker.load(tmp_path)


def test_group_ndcg_agrees_with_the_evaluation_code(rows: TrainingSet) -> None:
    from models.evaluate_rankers import group_metrics

    scores = np.random.default_rng(3).random(len(rows.labels))
    expected = group_metrics(rows, scores)["NDCG@20"]
    ndcg = tf_ranker.group_ndcg(scores, rows.labels, rows.group_sizes, rows.n_targets)
    assert ndcg == pytest.approx(expected)


def test_training_is_deterministic(rows: TrainingSet) -> None:
    config = tf_ranker.TFRankerConfig(epochs=1, batch_size=512, min_item_rows=30, hidden=(16,),
                                      embedding_dim=4, seed=7)

    def scores(one: tf_ranker.TFRankerConfig) -> np.ndarray:
        return np.asarray(tf_ranker.train_tf_ranker(rows, one).ranker.score(rows.features, rows.item_ids))

    first = scores(config)
    np.testing.assert_array_equal(first, scores(config))
    assert not np.array_equal(first, scores(replace(config, seed=8)))


def test_a_refit_for_a_fixed_epoch_count_learns_from_every_user(rows: TrainingSet) -> None:
    """The kept model's refit: exactly the epochs given, on every group, no held-out users."""
    config = tf_ranker.TFRankerConfig(epochs=8, batch_size=256, min_item_rows=30, holdout_share=0.2,
                                      hidden=(32,), embedding_dim=4, learning_rate=0.01)
    refit = tf_ranker.train_tf_ranker(rows, config, fixed_epochs=2)
    assert refit.facts["epochs_run"] == refit.facts["best_epoch"] == 2
    assert refit.facts["holdout_groups"] == 0 and refit.facts["holdout_ndcg@20"] is None
    assert refit.facts["train_rows"] == len(rows.labels)
    assert "holdout_ndcg@20" not in refit.history and len(refit.history["loss"]) == 2
    with pytest.raises(ValueError, match="fixed_epochs"):
        tf_ranker.train_tf_ranker(rows, config, fixed_epochs=0)
