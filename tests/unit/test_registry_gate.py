"""The quality gate and the registry's pure helpers (versions, deterministic tars, names)."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from finegrain.schemas import ModelManifest
from models.publishing import DEFAULT_GATE_METRIC, evaluate_gate, gate_metric, metric_value
from models.registry import (
    RegistryError,
    artifact_bytes,
    check_name,
    model_version,
    sha256_hex,
    tar_directory,
    untar_artifact,
)


def manifest(version: str, metrics: dict[str, float], **params: str) -> ModelManifest:
    return ModelManifest(name="ranker_xgboost", version=version, metrics=metrics, params=params)


def test_first_version_passes_when_it_has_the_metric() -> None:
    decision = evaluate_gate(manifest("v1", {"ndcg@20": 0.3}), None)
    assert decision.passed and decision.metric == DEFAULT_GATE_METRIC
    assert "first published version" in decision.reason


def test_better_equal_and_slightly_worse_pass_within_the_tolerance() -> None:
    current = manifest("v1", {"ndcg@20": 0.400})
    for value in (0.45, 0.400, 0.391, 0.390):
        decision = evaluate_gate(manifest("v2", {"ndcg@20": value}), current)
        assert decision.passed, (value, decision.reason)
        assert (decision.candidate, decision.current) == (value, 0.400)


def test_worse_beyond_the_tolerance_is_refused_naming_the_metric_and_both_values() -> None:
    decision = evaluate_gate(manifest("v2", {"ndcg@20": 0.385}), manifest("v1", {"ndcg@20": 0.400}))
    assert not decision.passed
    assert "ndcg@20" in decision.reason and "0.3850" in decision.reason and "0.4000" in decision.reason
    assert "v1" in decision.reason and "0.0150" in decision.reason


def test_tolerance_is_configurable() -> None:
    candidate, current = manifest("v2", {"ndcg@20": 0.385}), manifest("v1", {"ndcg@20": 0.400})
    assert evaluate_gate(candidate, current, tolerance=0.02).passed
    assert not evaluate_gate(candidate, current, tolerance=0.0).passed
    assert not evaluate_gate(manifest("v2", {"ndcg@20": 0.3999}), current, tolerance=0.0).passed
    with pytest.raises(ValueError, match="tolerance"):
        evaluate_gate(candidate, current, tolerance=-0.1)


def test_gate_metric_comes_from_params_and_matches_without_case() -> None:
    candidate = manifest("v2", {"AUC": 0.70, "ndcg@20": 0.1}, gate_metric="auc")
    current = manifest("v1", {"auc": 0.75, "ndcg@20": 0.5})
    assert gate_metric(candidate) == ("auc", "max")
    assert metric_value(candidate, "auc") == 0.70
    decision = evaluate_gate(candidate, current)
    assert not decision.passed and decision.metric == "auc"
    # On AUC alone the ndcg drop does not matter.
    assert evaluate_gate(manifest("v3", {"auc": 0.745, "ndcg@20": 0.0}, gate_metric="auc"), current).passed


def test_lower_is_better_metrics() -> None:
    current = manifest("v1", {"logloss": 0.30})
    better = manifest("v2", {"logloss": 0.25}, gate_metric="logloss", gate_direction="min")
    worse = manifest("v3", {"logloss": 0.35}, gate_metric="logloss", gate_direction="min")
    assert evaluate_gate(better, current).passed
    refused = evaluate_gate(worse, current)
    assert not refused.passed and "higher by 0.0500" in refused.reason
    with pytest.raises(RegistryError, match="gate_direction"):
        evaluate_gate(manifest("v4", {"logloss": 0.2}, gate_direction="up"), current)


def test_missing_or_not_finite_metric_or_other_evaluation_is_refused() -> None:
    current = manifest("v1", {"ndcg@20": 0.4})
    assert "has no finite ndcg@20" in evaluate_gate(manifest("v2", {"auc": 0.9}), current).reason
    assert not evaluate_gate(manifest("v2", {"ndcg@20": float("nan")}), None).passed
    no_metric = evaluate_gate(manifest("v2", {"ndcg@20": 0.5}), manifest("v1", {"auc": 0.7}))
    assert not no_metric.passed and "has no ndcg@20 to compare" in no_metric.reason
    other = evaluate_gate(manifest("v2", {"ndcg@20": 0.5}, evaluation="split-2010-11-10"),
                          manifest("v1", {"ndcg@20": 0.4}, evaluation="split-2010-10-01"))
    assert not other.passed and "not comparable" in other.reason
    same = evaluate_gate(manifest("v2", {"ndcg@20": 0.5}, evaluation="split-2010-11-10"),
                         manifest("v1", {"ndcg@20": 0.4}, evaluation="split-2010-11-10"))
    assert same.passed


def test_model_versions_sort_by_time_to_the_millisecond() -> None:
    early = model_version(datetime(2026, 11, 27, 8, 0, 0, 5_000, tzinfo=UTC))
    late = model_version(datetime(2026, 11, 27, 8, 0, 0, 6_000, tzinfo=UTC))
    assert early == "20261127T080000.005" and early < late
    assert model_version(datetime(2026, 11, 27, 8, 0, 1, tzinfo=UTC)) > late


def test_names_are_checked() -> None:
    assert check_name("ranker_xgboost") == "ranker_xgboost"
    for bad in ("", "Ranker", "a/b", "../x", "x" * 65):
        with pytest.raises(RegistryError, match="bad model name"):
            check_name(bad)


def _write_tree(root: Path) -> None:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"\x08\x01graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(64))


def test_directory_tar_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _write_tree(first)
    second.mkdir()
    # Same content, created in another order and at another time, with other modes.
    (second / "variables").mkdir()
    (second / "variables" / "variables.data-00000-of-00001").write_bytes(
        (first / "variables" / "variables.data-00000-of-00001").read_bytes())
    (second / "variables" / "variables.index").write_bytes(b"index")
    (second / "saved_model.pb").write_bytes(b"\x08\x01graph")
    os.utime(second / "saved_model.pb", (1_000_000, 1_000_000))
    (second / "saved_model.pb").chmod(0o600)
    assert tar_directory(first) == tar_directory(second)
    data, suffix = artifact_bytes(first)
    assert suffix == ".tar" and sha256_hex(data) == sha256_hex(tar_directory(second))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == ["saved_model.pb", "variables",
                                      "variables/variables.data-00000-of-00001", "variables/variables.index"]
    out = untar_artifact(data, tmp_path / "out")
    assert (out / "variables" / "variables.index").read_bytes() == b"index"
    (first / "saved_model.pb").write_bytes(b"\x08\x02graph")
    assert tar_directory(first) != tar_directory(second)


def test_artifact_bytes_of_bytes_a_file_and_nothing(tmp_path: Path) -> None:
    assert artifact_bytes(b"abc") == (b"abc", "")
    (tmp_path / "model.ubj").write_bytes(b"booster")
    assert artifact_bytes(tmp_path / "model.ubj") == (b"booster", ".ubj")
    with pytest.raises(RegistryError, match="no artifact"):
        artifact_bytes(tmp_path / "missing")


def test_versions_scored_the_same_way_compare_whatever_their_dates() -> None:
    """Today's and yesterday's nightly versions (one window length, splits a day apart) compare; a
    version named by its split date before windows were named is the 30-day protocol; another window
    length is not comparable."""
    today = manifest("v2", {"ndcg@20": 0.395}, evaluation="readme-protocol-30d",
                     evaluation_split="2031-11-21")
    yesterday = manifest("v1", {"ndcg@20": 0.39}, evaluation="readme-protocol-30d",
                         evaluation_split="2031-11-20")
    assert evaluate_gate(today, yesterday).passed
    older = manifest("v0", {"ndcg@20": 0.39}, evaluation="readme-protocol-2031-10-01")
    assert evaluate_gate(today, older).passed
    week = manifest("v1", {"ndcg@20": 0.39}, evaluation="readme-protocol-7d")
    assert "not comparable" in evaluate_gate(today, week).reason
