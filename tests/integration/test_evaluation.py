"""The offline evaluation on the real data: the protocol reproduces the README's MostPop row, and the
item-to-item channel, scored from the lists the similarity job wrote to Redis, beats its ItemKNN row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from cli import evaluate as evaluate_cli
from finegrain.evaluation.protocol import REFERENCE, build_split, load_events, most_popular, readme_split
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset
from finegrain.storage.redis_versions import RedisVersions
from models.evaluate_channels import ChannelEvaluation, evaluate_channels
from spark_jobs.ensure import ensure_datasets
from tests.integration.sample import SPLIT_DATE

pytestmark = pytest.mark.integration

TOLERANCE = 0.005


@pytest.fixture(scope="module")
def evaluation(settings: Settings, spark: SparkSession, retail_data: Path) -> ChannelEvaluation:
    # Other modules of the session may have built these datasets as of a later date.
    events = retail_data / "events.parquet"
    versions, _ = ensure_datasets(settings, SPLIT_DATE, events, spark=spark, replace_newer=True)
    return evaluate_channels(settings, SPLIT_DATE, events, versions)


def test_the_protocol_alone_reproduces_most_pop(retail_data: Path) -> None:
    """From the events only (pandas), without any job: the protocol and the metrics are right."""
    events = load_events(retail_data)
    assert readme_split(events) == SPLIT_DATE  # derived from the data: its last 30 days
    split = build_split(events, readme_split(events))
    assert len(split.users) == 1291
    figures = split.evaluate(split.global_ranking(most_popular(split)))
    for metric, expected in REFERENCE["standard"]["MostPop"].items():
        assert figures[metric] == pytest.approx(expected, abs=TOLERANCE), metric
    explore = build_split(events, SPLIT_DATE, explore=True)
    assert len(explore.users) == 1190
    figures = explore.evaluate(explore.global_ranking(most_popular(explore)))
    for metric, expected in REFERENCE["explore"]["MostPop"].items():
        assert figures[metric] == pytest.approx(expected, abs=TOLERANCE), metric


def test_datasets_evaluated_were_built_as_of_the_split(evaluation: ChannelEvaluation,
                                                        settings: Settings) -> None:
    versions = RedisVersions(redis_client(settings))
    assert evaluation.versions == {"popularity": versions.current(Dataset.POPULARITY),
                                   "similarity": versions.current(Dataset.SIMILARITY)}
    assert all(v.startswith("20101110-") for v in evaluation.versions.values())
    assert evaluation.users == {"standard": 1291, "explore": 1190}


def test_most_pop_from_redis_matches_the_readme(evaluation: ChannelEvaluation) -> None:
    for variant in ("standard", "explore"):
        figures = evaluation.figures[variant]["MostPop"]
        for metric, expected in REFERENCE[variant]["MostPop"].items():
            assert figures[metric] == pytest.approx(expected, abs=TOLERANCE), (variant, metric)


@pytest.mark.parametrize("algorithm", ["cosine", "swing"])
def test_item_to_item_beats_the_readme_item_knn(evaluation: ChannelEvaluation, algorithm: str) -> None:
    figures = evaluation.figures["standard"][f"item_to_item:{algorithm}"]
    knn = REFERENCE["standard"]["ItemKNN"]
    assert figures["Recall@20"] >= knn["Recall@20"]
    assert figures["NDCG@20"] >= knn["NDCG@20"]
    assert figures["HR@10"] >= knn["HR@10"]
    # Without repeats the channel still finds new items better than popularity does.
    explore = evaluation.figures["explore"][f"item_to_item:{algorithm}"]
    assert explore["Recall@20"] > REFERENCE["explore"]["MostPop"]["Recall@20"] * 2


def test_command_reuses_the_datasets_and_writes_the_report(
        evaluation: ChannelEvaluation, settings: Settings, retail_data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_cli, "get_settings", lambda: settings)
    root = typer.Typer()
    root.add_typer(evaluate_cli.app, name="evaluate")
    report = tmp_path / "report"
    events = str(retail_data / "events.parquet")
    arguments = ["evaluate", "channels", "--events", events, "--report-dir", str(report), "--json"]
    result = CliRunner().invoke(root, arguments)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["rebuilt"] == []  # versions built as of 2010-11-10 exist already
    assert figures["versions"] == evaluation.versions
    for variant, channels in evaluation.figures.items():
        for channel, values in channels.items():
            assert figures["channels"][variant][channel] == pytest.approx(values), (variant, channel)
    assert "README ItemKNN" in result.output
    markdown = (report / "evaluation.md").read_text()
    assert "| item_to_item:swing | measured |" in markdown
    assert (report / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "evaluation.json").read_text())["users"]["standard"] == 1291


def test_command_refuses_a_bad_date_and_a_missing_events_file(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_cli, "get_settings", lambda: settings)
    root = typer.Typer()
    root.add_typer(evaluate_cli.app, name="evaluate")
    bad_date = CliRunner().invoke(root, ["evaluate", "channels", "--as-of", "2010-11-31"])
    assert bad_date.exit_code == 2
    assert "expected a date" in bad_date.output
    missing = CliRunner().invoke(root, ["evaluate", "channels", "--events", str(tmp_path / "none.parquet")])
    assert missing.exit_code == 2
    assert "no events at" in missing.output


def test_an_earlier_split_refuses_to_replace_newer_datasets(
        evaluation: ChannelEvaluation, settings: Settings, retail_data: Path) -> None:
    from datetime import date

    from spark_jobs.base import JobError

    before = dict(evaluation.versions)
    with pytest.raises(JobError, match="built as of a later date than 2010-10-01"):
        ensure_datasets(settings, date(2010, 10, 1), retail_data / "events.parquet")
    versions = RedisVersions(redis_client(settings))
    assert {str(d): versions.current(d) for d in (Dataset.POPULARITY, Dataset.SIMILARITY)} == before
