"""`finegrain evaluate all` on the real data against the local stack: every channel alone from the
datasets the jobs wrote to Redis, the merged recall, the report and its plots (rankers skipped: they
have their own tests and take minutes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from cli import evaluate as evaluate_cli
from finegrain.evaluation.protocol import REFERENCE
from finegrain.settings import Settings
from spark_jobs.ensure import RECALL_DATASET_JOBS, ensure_datasets
from tests.integration.sample import SPLIT_DATE

pytestmark = pytest.mark.integration

TOLERANCE = 0.005
PNG = b"\x89PNG\r\n\x1a\n"


def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *arguments: str) -> Any:
    monkeypatch.setattr(evaluate_cli, "get_settings", lambda: settings)
    root = typer.Typer()
    root.add_typer(evaluate_cli.app, name="evaluate")
    return CliRunner().invoke(root, ["evaluate", "all", *arguments])


@pytest.fixture(scope="module")
def datasets(settings: Settings, spark: SparkSession, retail_data: Path) -> dict[str, str]:
    """Popularity, similarity and the content index as of the split, built once with the shared session
    (other modules may have built some as of a later date: replace them here)."""
    versions, _ = ensure_datasets(settings, SPLIT_DATE, retail_data / "events.parquet", spark=spark,
                                  replace_newer=True, dataset_jobs=RECALL_DATASET_JOBS)
    return versions


@pytest.fixture(scope="module")
def run(datasets: dict[str, str], settings: Settings, retail_data: Path,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    folder = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = cli(settings, monkeypatch, "--events", str(retail_data / "events.parquet"), "--skip-rankers",
                     "--out", str(folder), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1]), folder, result.output


def test_reuses_the_datasets_built_as_of_the_split(run: tuple[dict[str, Any], Path, str],
                                                   datasets: dict[str, str]) -> None:
    figures, _, _ = run
    assert figures["rebuilt"] == []
    assert figures["versions"] == datasets
    assert set(datasets) == {"popularity", "similarity", "index"}
    assert all(v.startswith("20101110-") for v in datasets.values())
    assert figures["users"] == 1291


def test_most_pop_reproduces_the_readme_row(run: tuple[dict[str, Any], Path, str]) -> None:
    figures, _, output = run
    measured = figures["channels"]["popular"]
    for metric, expected in REFERENCE["standard"]["MostPop"].items():
        assert measured[metric] == pytest.approx(expected, abs=TOLERANCE), metric
    assert "MostPop (popular)" in output and "README repeat" in output


def test_every_channel_is_measured_and_content_beats_popularity(
        run: tuple[dict[str, Any], Path, str]) -> None:
    figures, _, _ = run
    channels = figures["channels"]
    assert set(channels) == {"popular", "content", "item_to_item:cosine", "item_to_item:swing", "embedding"}
    for name, values in channels.items():
        curve = [values[f"Recall@{k}"] for k in (10, 20, 50, 100, 200, 500, 1000)]
        assert curve == sorted(curve), name
        assert 0 < values["NDCG@20"] <= 1
    assert channels["content"]["Recall@20"] > 2 * channels["popular"]["Recall@20"]
    # The item-to-item channel keeps the level of `evaluate channels` (repeats plus neighbours).
    assert channels["item_to_item:swing"]["Recall@20"] > REFERENCE["standard"]["ItemKNN"]["Recall@20"]


def test_merged_recall_holds_at_least_what_each_channel_holds_at_its_quota(
        run: tuple[dict[str, Any], Path, str]) -> None:
    figures, _, _ = run
    merge = figures["merge"]
    assert merge["total"] == 1000
    assert merge["mean_candidates"] == pytest.approx(1000, abs=1)
    merged = merge["figures"]
    assert merged["Recall@200"] <= merged["Recall@500"] <= merged["Recall@1000"]
    assert set(merge["channel_recall_at_quota"]) == set(merge["quotas"])
    for channel, recall_at_quota in merge["channel_recall_at_quota"].items():
        assert merged["Recall@1000"] >= recall_at_quota, channel
    # The merge is worth its channels: more of the target than any of them alone at the same depth.
    assert merged["Recall@1000"] > max(values["Recall@1000"] for values in figures["channels"].values())
    assert sum(merge["brought_by"].values()) >= 1000


def test_writes_the_report_and_both_plots(run: tuple[dict[str, Any], Path, str]) -> None:
    figures, folder, _ = run
    markdown = (folder / "report.md").read_text()
    assert "| MostPop (popular) | channel | 0.532 |" in markdown
    assert "| merged recall (1,000 candidates, merge order) | merge |" in markdown
    assert "rankers skipped (--skip-rankers)" in markdown
    for name in ("channels.png", "recall_at_k.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
    assert json.loads((folder / "report.json").read_text())["merge"] == figures["merge"]
    assert set(figures["report"]) == {"markdown", "channels_plot", "recall_plot", "json"}


@pytest.mark.parametrize(("arguments", "message"), [
    (["--rankers", "lightgbm"], "unknown ranker(s) lightgbm"),
    (["--quotas", "swing=300"], "bad quota 'swing=300'"),
    (["--merge-i2i", "jaccard"], "unknown similarity algorithm 'jaccard'"),
    (["--as-of", "2010-02-30"], "expected a date"),
])
def test_bad_options_fail_fast_with_the_reason(arguments: list[str], message: str, settings: Settings,
                                                retail_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(settings, monkeypatch, "--events", str(retail_data / "events.parquet"), *arguments)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_missing_events_file_fails_with_the_reason(settings: Settings, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(settings, monkeypatch, "--events", str(tmp_path / "none.parquet"), "--skip-rankers")
    assert result.exit_code == 2
    assert "no events at" in result.output
