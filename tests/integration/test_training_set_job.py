"""The Spark training-set job (spark_jobs/training_set.py) on the real data: for a sample of users at one
cut-off it gives the same rows as the pandas builder (candidates, labels, features), writes a set that
`read_training_set` reads back, and refuses bad dates and cut-offs without touching an existing set."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from finegrain.dates import as_of_ms
from finegrain.evaluation.protocol import load_events
from finegrain.features.history import epoch_ms
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.settings import Settings
from finegrain.training.training_set import TrainingSet
from models.training_set import build_cutoff
from models.training_set_io import read_manifest, read_training_set
from spark_jobs.base import JobError
from spark_jobs.training_set import TrainingSetBuild, TrainingSetRequest, build_training_set_spark, main

pytestmark = pytest.mark.integration

AS_OF = date(2010, 11, 10)
CUTOFF = date(2010, 10, 11)  # its 30-day label window ends exactly at the as-of date
USERS = 200


@pytest.fixture(scope="module")
def events(retail_data: Path) -> pd.DataFrame:
    return load_events(retail_data)


@pytest.fixture(scope="module")
def built(spark: SparkSession, settings: Settings, retail_data: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> TrainingSetBuild:
    out = tmp_path_factory.mktemp("sets") / "spark_set"
    return build_training_set_spark(spark, settings, TrainingSetRequest(
        as_of=AS_OF, cutoffs=(CUTOFF,), out=out, events_path=retail_data / "events.parquet", max_users=USERS))


@pytest.fixture(scope="module")
def spark_rows(built: TrainingSetBuild) -> TrainingSet:
    return read_training_set(built.out)


@pytest.fixture(scope="module")
def pandas_rows(events: pd.DataFrame) -> TrainingSet:
    return build_cutoff(events, CUTOFF, max_users=USERS)


def test_spark_rows_equal_the_pandas_builder(spark_rows: TrainingSet, pandas_rows: TrainingSet) -> None:
    assert len(spark_rows.group_sizes) == USERS
    np.testing.assert_array_equal(spark_rows.group_users.astype(str), pandas_rows.group_users.astype(str))
    assert set(spark_rows.group_cutoffs.tolist()) == {CUTOFF.isoformat()}
    np.testing.assert_array_equal(spark_rows.group_sizes, pandas_rows.group_sizes)
    np.testing.assert_array_equal(spark_rows.n_targets, pandas_rows.n_targets)
    # Same candidates in the same order, same labels.
    np.testing.assert_array_equal(spark_rows.item_ids.astype(str), pandas_rows.item_ids.astype(str))
    np.testing.assert_array_equal(spark_rows.labels, pandas_rows.labels)
    np.testing.assert_allclose(spark_rows.features, pandas_rows.features, rtol=1e-6, atol=1e-6,
                               equal_nan=True)
    # The comparison is not vacuous: real candidates, positives, and unknown (NaN) values on both sides.
    assert len(spark_rows.labels) > 150 * USERS and spark_rows.labels.sum() > 1000
    assert np.isnan(spark_rows.features).any()
    assert spark_rows.candidate_recall() == pytest.approx(pandas_rows.candidate_recall())


def test_labels_are_what_the_users_bought_after_the_cutoff(spark_rows: TrainingSet, events: pd.DataFrame
                                                          ) -> None:
    ts = epoch_ms(events["timestamp"])
    start = as_of_ms(CUTOFF)
    window = events.loc[(ts >= start) & (ts < as_of_ms(AS_OF))]
    user = str(spark_rows.group_users[0])
    bought = set(window.loc[window["user_id"].astype(str) == user, "item_id"].astype(str))
    first = slice(0, int(spark_rows.group_sizes[0]))
    ids, labels = spark_rows.item_ids[first].astype(str), spark_rows.labels[first]
    assert set(ids[labels == 1].tolist()) == bought & set(ids.tolist())
    assert spark_rows.n_targets[0] == len(bought)
    # Features come from before the cut-off: a bought-before flag set means a purchase before it.
    before = set(events.loc[(ts < start) & (events["user_id"].astype(str) == user), "item_id"].astype(str))
    flag = spark_rows.features[first, RANKING_FEATURE_NAMES.index("bought_before")]
    assert set(ids[flag == 1].tolist()) == before & set(ids.tolist())


def test_manifest_and_layout(built: TrainingSetBuild, spark_rows: TrainingSet) -> None:
    manifest = read_manifest(built.out)
    assert manifest["feature_names"] == list(RANKING_FEATURE_NAMES)
    assert manifest["as_of"] == AS_OF.isoformat() and manifest["cutoffs"] == [CUTOFF.isoformat()]
    assert manifest["rows"] == len(spark_rows.labels) == built.rows
    assert manifest["groups"] == USERS and manifest["builder"] == "spark"
    assert manifest["candidate_recall"] == pytest.approx(spark_rows.candidate_recall(), abs=1e-6)
    assert manifest["build_seconds"] > 0
    assert sorted(p.name for p in built.out.parent.iterdir()) == [built.out.name]  # no staging left
    assert any(p.name.startswith("part-") for p in built.out.iterdir())


def test_bad_inputs_fail_clearly_and_leave_the_set(spark: SparkSession, settings: Settings, retail_data: Path,
                                                   built: TrainingSetBuild,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted((p.name, p.stat().st_size) for p in built.out.iterdir())
    events_path = retail_data / "events.parquet"
    late = r"2010-10-20: their 30-day label window runs past the as-of date 2010-11-10"
    with pytest.raises(JobError, match=late):
        build_training_set_spark(spark, settings, TrainingSetRequest(
            as_of=AS_OF, cutoffs=(CUTOFF, date(2010, 10, 20)), out=built.out, events_path=events_path))
    with pytest.raises(JobError, match="no events at"):
        build_training_set_spark(spark, settings, TrainingSetRequest(
            as_of=AS_OF, cutoffs=(CUTOFF,), out=built.out, events_path=retail_data / "missing.parquet"))
    with pytest.raises(JobError, match="--max-users 0: draw at least one user"):
        build_training_set_spark(spark, settings, TrainingSetRequest(
            as_of=AS_OF, cutoffs=(CUTOFF,), out=built.out, events_path=events_path, max_users=0))
    with pytest.raises(JobError, match="no purchase events before 2009-01-01"):
        build_training_set_spark(spark, settings, TrainingSetRequest(
            as_of=date(2009, 1, 1), cutoffs=(date(2008, 11, 1),), out=built.out, events_path=events_path))
    assert sorted((p.name, p.stat().st_size) for p in built.out.iterdir()) == before
    assert sorted(p.name for p in built.out.parent.iterdir()) == [built.out.name]

    # The command line: a bad date and a late cut-off end with a one-line reason, before Spark starts.
    assert main(["--as-of", "2010-13-01", "--out", str(built.out)]) != 0
    assert "bad --as-of '2010-13-01'" in capsys.readouterr().err
    assert main(["--as-of", "2010-11-10", "--cutoffs", "2010-10-11,2010-12-01", "--out", str(built.out)]) != 0
    assert "cut-off(s) 2010-12-01" in capsys.readouterr().err
    assert main(["--as-of", "2010-11-10", "--cutoffs", "2010-10-xx"]) != 0
    assert "bad --cutoffs entry '2010-10-xx'" in capsys.readouterr().err
