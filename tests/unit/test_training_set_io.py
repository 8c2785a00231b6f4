"""Training sets on disk (models/training_set_io.py): exact round trip, NaN kept, part files in any
order, and the feature-name check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import TrainingSet
from models.training_set_io import (
    manifest_path,
    read_manifest,
    read_training_set,
    to_table,
    write_training_set,
)


def sample_set() -> TrainingSet:
    rng = np.random.default_rng(7)
    sizes = np.asarray([3, 1, 4], dtype=np.int64)
    n = int(sizes.sum())
    features = rng.normal(size=(n, len(RANKING_FEATURE_NAMES))).astype(np.float32)
    features[0, 1] = np.nan
    features[5, :4] = np.nan
    return TrainingSet(
        features=features,
        labels=np.asarray([1, 0, 0, 1, 0, 1, 0, 0], dtype=np.int8),
        item_ids=np.asarray(["85048", "22423", "POST", "21232", "85048", "84879", "22720", "a b"],
                            dtype=object),
        # Users deliberately out of sorted order: the set's own group order must survive.
        group_users=np.asarray(["17850", "12346", "17850"], dtype=object),
        group_cutoffs=np.asarray(["2010-09-11", "2010-09-11", "2010-10-11"], dtype=object),
        group_sizes=sizes,
        n_targets=np.asarray([2, 5, 1], dtype=np.int64),
        seconds={"2010-09-11:rows": 1.5},
    )


def assert_same(a: TrainingSet, b: TrainingSet) -> None:
    np.testing.assert_array_equal(a.features, b.features)  # NaN == NaN for assert_array_equal
    assert b.features.dtype == np.float32
    for name in ("labels", "item_ids", "group_users", "group_cutoffs", "group_sizes", "n_targets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert b.feature_names == RANKING_FEATURE_NAMES


@pytest.mark.parametrize("name", ["rows.parquet", "rows_dir"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    rows = sample_set()
    path = tmp_path / name
    write_training_set(rows, path, manifest={"as_of": "2010-11-10", "build_seconds": 3.2})
    back = read_training_set(path)
    assert_same(rows, back)
    assert np.isnan(back.features[0, 1]) and np.isnan(back.features[5, :4]).all()
    assert back.seconds == rows.seconds
    manifest = read_manifest(path)
    assert manifest["feature_names"] == list(RANKING_FEATURE_NAMES)
    assert manifest["as_of"] == "2010-11-10" and manifest["build_seconds"] == 3.2
    assert manifest["rows"] == 8 and manifest["groups"] == 3 and manifest["positives"] == 3
    assert manifest["cutoffs"] == ["2010-09-11", "2010-10-11"]
    assert manifest["candidate_recall"] == pytest.approx(rows.candidate_recall())
    # Nothing but the set and its manifest is left behind (no staging folder).
    left = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert left - {name} == {manifest_path(path).relative_to(tmp_path).as_posix()} | (
        {f"{name}/part-00000.parquet"} if path.is_dir() else set())


def test_manifest_always_names_as_of_and_build_seconds(tmp_path: Path) -> None:
    write_training_set(sample_set(), tmp_path / "set")
    manifest = read_manifest(tmp_path / "set")
    assert manifest["as_of"] is None and manifest["build_seconds"] == 1.5


def test_rewrite_replaces_the_old_set(tmp_path: Path) -> None:
    path = tmp_path / "set"
    write_training_set(sample_set(), path)
    smaller = sample_set()
    smaller.group_sizes = smaller.group_sizes[:1]
    smaller.group_users, smaller.group_cutoffs = smaller.group_users[:1], smaller.group_cutoffs[:1]
    smaller.n_targets = smaller.n_targets[:1]
    smaller.features, smaller.labels = smaller.features[:3], smaller.labels[:3]
    smaller.item_ids = smaller.item_ids[:3]
    write_training_set(smaller, path)
    assert_same(smaller, read_training_set(path))
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_part_files_in_any_order(tmp_path: Path) -> None:
    """A Spark output: several part files, rows shuffled, plus _SUCCESS and .crc files."""
    rows = sample_set()
    table = to_table(rows)
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    folder = tmp_path / "spark_out"
    folder.mkdir()
    pq.write_table(shuffled.slice(0, 5), folder / "part-00001-x.parquet")
    pq.write_table(shuffled.slice(5), folder / "part-00000-x.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000-x.parquet.crc").write_bytes(b"\x00\x01")
    assert_same(rows, read_training_set(folder))


def test_lost_part_file_is_refused(tmp_path: Path) -> None:
    table = to_table(sample_set())
    folder = tmp_path / "broken"
    folder.mkdir()
    keep = np.asarray([0, 2, 3, 4, 5, 6, 7])  # row 1 (group 0, position 1) lost
    pq.write_table(table.take(keep), folder / "part-0.parquet")
    with pytest.raises(ValueError, match="group 0 have missing or repeated positions"):
        read_training_set(folder)


def test_feature_names_must_match(tmp_path: Path) -> None:
    table = to_table(sample_set())
    names = ["price_ratio_v2" if n == "price_ratio" else n for n in table.column_names]
    renamed = table.rename_columns(names)
    renamed = renamed.append_column("extra_feature", table.column("item_price"))
    pq.write_table(renamed, tmp_path / "bad.parquet")
    expected = r"missing \['price_ratio'\]; unexpected \['price_ratio_v2', 'extra_feature'\]"
    with pytest.raises(ValueError, match=expected):
        read_training_set(tmp_path / "bad.parquet")

    pq.write_table(table.drop_columns(["item_trend"]), tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"missing \['item_trend'\]"):
        read_training_set(tmp_path / "short.parquet")


def test_manifest_with_other_features_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "set"
    write_training_set(sample_set(), path)
    manifest = json.loads(manifest_path(path).read_text())
    manifest["feature_names"] = list(reversed(RANKING_FEATURE_NAMES))
    manifest_path(path).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="same names in another order"):
        read_training_set(path)


def test_missing_set_and_empty_group_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no training set"):
        read_training_set(tmp_path / "nowhere")
    rows = sample_set()
    rows.group_sizes = np.asarray([3, 0, 5], dtype=np.int64)
    with pytest.raises(ValueError, match="group without rows"):
        write_training_set(rows, tmp_path / "x")
