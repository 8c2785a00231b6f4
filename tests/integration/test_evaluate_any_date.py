"""The rankers train and score for any as-of date with enough history, on any shop's data of the
sample's schema: another date of the sample data, and the synthetic generator's data moved three years
later through `finegrain evaluate all` (channels, merge, both rankers; quick training: 150 users a
cut-off, every protocol user evaluated). The README's own date: test_train_ranker / test_tf_ranker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import app as cli_app
from cli import evaluate as evaluate_cli
from finegrain.console import quiet
from finegrain.evaluation.protocol import build_split, load_events, most_popular, readme_split
from finegrain.settings import Settings
from finegrain.training.plan import HISTORY_DAYS, TrainingPlan
from models.evaluate_all import evaluate_rankers
from tests.integration.conftest import own_namespace
from tests.integration.sample import SPLIT_DATE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 150
MOVE_WEEKS = 156  # three years later, same weekdays


def most_pop_ndcg(events: Any, split_date: Any) -> float:
    split = build_split(events, split_date)
    return float(split.evaluate(split.global_ranking(most_popular(split)))["NDCG@20"])


def test_the_xgboost_ranker_at_an_earlier_date_of_the_sample_data(retail_data: Path) -> None:
    """XGBoost only (the TF ranker trains in the test below, on the same code path): a second date of
    the sample data, the README's being the train-ranker tests'."""
    events = load_events(retail_data)
    as_of = SPLIT_DATE - timedelta(days=56)  # 2010-09-15: a window inside the data, history before it
    plan = TrainingPlan.for_events(events, as_of)
    assert plan.split == as_of and not plan.backtest
    figures, notes = evaluate_rankers(events, plan, ["xgboost"], quiet, max_users=USERS)
    baseline = most_pop_ndcg(events, as_of)
    rankers = {name: values for name, values in figures.items() if "ranker" in name}
    assert len(rankers) == 1, figures
    for name, values in rankers.items():
        assert values["NDCG@20"] > baseline + 0.1, (name, values, baseline)
    assert any(str(plan.validation_cutoff) in note for note in notes)


@pytest.fixture(scope="module")
def moved_data(retail_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic-moved")
    result = CliRunner().invoke(cli_app, ["data", "synth", "--scale", "1", "--seed", "5", "--move-weeks",
                                          str(MOVE_WEEKS), "--source", str(retail_data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def moved_settings(settings: Settings) -> Iterator[Settings]:
    with own_namespace(settings) as own:
        yield own


def test_evaluate_all_on_another_years_data(moved_data: Path, moved_settings: Settings, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    events = load_events(moved_data)
    # Not the README's split and in another year: nothing of the sample data's calendar.
    as_of = readme_split(events) - timedelta(days=21)
    assert as_of.year == SPLIT_DATE.year + 3
    monkeypatch.setattr(evaluate_cli, "get_settings", lambda: moved_settings)
    root = typer.Typer()
    root.add_typer(evaluate_cli.app, name="evaluate")
    result = CliRunner().invoke(root, ["evaluate", "all", "--events", str(moved_data / "events.parquet"),
                                       "--as-of", as_of.isoformat(), "--rankers", "xgboost,tf",
                                       "--max-users", str(USERS), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["as_of"] == as_of.isoformat() and report["reference"] == {}  # not the README's split
    assert all(version.startswith(as_of.strftime("%Y%m%d")) for version in report["versions"].values())
    rankers = report["rankers"]
    assert len(rankers) == 2, rankers
    baseline = report["channels"]["popular"]["NDCG@20"]
    for name, values in rankers.items():
        assert values["NDCG@20"] > baseline + 0.1, (name, values, baseline)
    assert (tmp_path / "report.md").is_file()


def test_too_little_history_is_one_line(moved_data: Path, moved_settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events = load_events(moved_data)
    early = min(events["timestamp"]).date() + timedelta(days=HISTORY_DAYS - 7)
    monkeypatch.setattr(evaluate_cli, "get_settings", lambda: moved_settings)
    root = typer.Typer()
    root.add_typer(evaluate_cli.app, name="evaluate")
    result = CliRunner().invoke(root, ["evaluate", "all", "--events", str(moved_data / "events.parquet"),
                                       "--as-of", early.isoformat(), "--rankers", "xgboost"])
    assert result.exit_code == 2, result.output
    assert f"needs {HISTORY_DAYS} days of history" in " ".join(result.output.split())
