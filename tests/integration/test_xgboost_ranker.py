"""The training set and the XGBoost ranker on the real data: a small model trained on the month before
the README's test window beats the item-to-item channel alone on the README split, labels are what
the users really bought, and nothing from after a cut-off can reach its features."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finegrain.dates import as_of_ms
from finegrain.evaluation.protocol import build_split, load_events
from finegrain.features.history import epoch_ms
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import CutoffInputs, PointInTime, TrainingSet
from models.evaluate_rankers import i2i_scores, split_metrics
from models.training_set import build_cutoff, build_training_set
from models.xgboost_ranker import RankerConfig, XGBoostRanker, train_ranker
from tests.integration.sample import SPLIT_DATE

pytestmark = pytest.mark.integration

TRAIN_CUTOFF = date(2010, 10, 11)  # labels in [2010-10-11, 2010-11-10): before the test window
SMALL = RankerConfig(rounds=60, learning_rate=0.15)
USERS = 700


@pytest.fixture(scope="module")
def events(retail_data: Path) -> pd.DataFrame:
    return load_events(retail_data)


@pytest.fixture(scope="module")
def train_rows(events: pd.DataFrame) -> TrainingSet:
    return build_training_set(events, [TRAIN_CUTOFF], as_of=SPLIT_DATE, max_users=USERS)


@pytest.fixture(scope="module")
def test_rows(events: pd.DataFrame) -> TrainingSet:
    return build_cutoff(events, SPLIT_DATE)


@pytest.fixture(scope="module")
def ranker(train_rows: TrainingSet) -> XGBoostRanker:
    model, facts = train_ranker(train_rows, SMALL)
    assert facts["train_rows"] == len(train_rows.labels) and facts["train_seconds"] < 60
    return model


def test_training_set_shape_and_hand_checked_labels(train_rows: TrainingSet, events: pd.DataFrame) -> None:
    assert len(train_rows.group_sizes) == USERS
    assert train_rows.features.shape == (len(train_rows.labels), len(RANKING_FEATURE_NAMES))
    assert 150 <= train_rows.group_sizes.mean() <= 260  # item-to-item top 200 + popular fill
    assert 0.4 < train_rows.candidate_recall() < 0.8
    # One user, checked against the raw events: labels = the candidates bought in the 30 days after.
    user = str(train_rows.group_users[0])
    start, end = as_of_ms(TRAIN_CUTOFF), as_of_ms(TRAIN_CUTOFF + timedelta(days=30))
    ts = epoch_ms(events["timestamp"])
    bought = set(events.loc[(events["user_id"] == user) & (ts >= start) & (ts < end), "item_id"].astype(str))
    rows = slice(0, int(train_rows.group_sizes[0]))
    labelled = set(train_rows.item_ids[rows][train_rows.labels[rows] == 1].tolist())
    assert labelled == bought & set(train_rows.item_ids[rows].tolist())
    assert train_rows.n_targets[0] == len(bought)
    # Every candidate's times_bought is what the user bought before the cut-off (distinct invoices).
    before = events[(events["user_id"] == user) & (ts < start)]
    invoices = before.groupby("item_id")["invoice"].nunique()
    column = RANKING_FEATURE_NAMES.index("times_bought")
    for item_id, value in zip(train_rows.item_ids[rows], train_rows.features[rows, column], strict=True):
        assert value == invoices.get(item_id, 0), item_id


def test_ranker_beats_item_to_item_on_the_readme_split(ranker: XGBoostRanker, test_rows: TrainingSet,
                                                      events: pd.DataFrame) -> None:
    split = build_split(events, SPLIT_DATE)
    assert len(split.users) == len(test_rows.group_sizes) == 1291
    alone = split_metrics(test_rows, i2i_scores(test_rows), split)
    ranked = split_metrics(test_rows, ranker.score(test_rows.features), split)
    # The channel alone on these candidates is the committed channel's figure (README protocol).
    assert alone["NDCG@20"] == pytest.approx(0.357, abs=0.003)
    assert alone["Recall@20"] == pytest.approx(0.266, abs=0.003)
    assert ranked["NDCG@20"] > alone["NDCG@20"] + 0.015
    assert ranked["Recall@20"] > alone["Recall@20"] + 0.01
    assert ranked["AUC"] > alone["AUC"]
    assert ranked["NDCG@20"] > 0.344  # the README's best reference row


def test_artifact_bytes_round_trip(ranker: XGBoostRanker, test_rows: TrainingSet) -> None:
    artifact = ranker.artifact({"NDCG@20": 0.1})
    assert artifact.model[:1] == b"{" and artifact.feature_names == RANKING_FEATURE_NAMES
    assert artifact.manifest()["sha256"] == artifact.sha256 and len(artifact.sha256) == 64
    loaded = XGBoostRanker.from_bytes(artifact.model, list(artifact.feature_names), artifact.config)
    sample = test_rows.features[:2000]
    np.testing.assert_array_equal(loaded.score(sample), ranker.score(sample))
    with pytest.raises(ValueError, match="feature layout"):
        XGBoostRanker.from_bytes(artifact.model, list(reversed(artifact.feature_names)))


def test_features_cannot_see_after_the_cut_off(events: pd.DataFrame) -> None:
    """Rewrite everything at or after the cut-off (prices, quantities, extra purchases): the features
    of every row stay bit-identical; only labels may change."""
    cutoff = date(2010, 9, 11)
    ts = epoch_ms(events["timestamp"])
    later = ts >= as_of_ms(cutoff)
    changed = events.copy()
    changed.loc[later, "quantity"] = changed.loc[later, "quantity"] * 50
    changed.loc[later, "price"] = changed.loc[later, "price"] * 3.0
    # Every later line bought again by the user who bought most before the cut-off.
    extra = events[later].assign(user_id=str(events.loc[~later, "user_id"].value_counts().index[0]),
                                 invoice=lambda f: "X" + f["invoice"].astype(str))
    changed = pd.concat([changed, extra], ignore_index=True)
    original = build_cutoff(events, cutoff, max_users=300, seed=1)
    rewritten = build_cutoff(changed, cutoff, max_users=300, seed=1)
    assert np.array_equal(original.group_users, rewritten.group_users)
    np.testing.assert_array_equal(original.item_ids, rewritten.item_ids)
    np.testing.assert_array_equal(original.features, rewritten.features)


def test_point_in_time_guards(events: pd.DataFrame) -> None:
    point = PointInTime.split(events, TRAIN_CUTOFF)
    assert int(epoch_ms(point.history["timestamp"]).max()) < as_of_ms(TRAIN_CUTOFF)
    with pytest.raises(ValueError, match="before the cut-off only"):
        CutoffInputs.build(events, TRAIN_CUTOFF)
    # A label window running into the evaluation window is refused.
    with pytest.raises(ValueError, match="past the as-of date"):
        build_training_set(events, [date(2010, 10, 20)], as_of=SPLIT_DATE)
    with pytest.raises(ValueError, match="no cut-off"):
        build_training_set(events, [], as_of=SPLIT_DATE)
    with pytest.raises(Exception, match="pick a date inside"):
        PointInTime.split(events, date(2011, 6, 1))


def test_trained_set_must_match_the_serving_layout(train_rows: TrainingSet) -> None:
    other = replace(train_rows, feature_names=(*RANKING_FEATURE_NAMES[:-1], "something_else"))
    with pytest.raises(ValueError, match="another feature layout"):
        train_ranker(other, SMALL)
    with pytest.raises(ValueError, match="objective"):
        RankerConfig(objective="reg:squarederror")
