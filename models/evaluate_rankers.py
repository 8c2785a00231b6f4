"""Train the rankers (XGBoost, TensorFlow) as of a date and evaluate them on the data set README's protocol.

    python -m models.evaluate_rankers [--ranker xgboost|tf|all] [--as-of D] [--test-days 30]
        [--events PATH] [--out var/reports/ranker] [--training-set PATH] [--tf-validate]

Every date comes from the as-of date through `finegrain.training.plan.TrainingPlan` (each a midnight
UTC; without --as-of, the README's split, the data's last 30 days):
1. Choose the objective on data before the evaluation split S only: train on the cut-offs
   `plan.validation_train_cutoffs`, rank the candidates at `plan.validation_cutoff` (features before it,
   labels in the window after) with each objective, keep the best NDCG@20.
2. Train with that objective on `plan.scored_cutoffs` (label windows ending by S), rank the candidates
   of the protocol's users at S (features before it) and compute HR / Recall / NDCG @10 and @20 with
   `EvaluationSplit.evaluate` (targets: everything bought in the test window, unseen items included),
   AUC over all candidate rows and per-user AUC (GAUC); next to it, the item-to-item channel alone on
   the same candidates and, on the README's own split, its reference rows.
3. When S is before the as-of date (a backtest: the model as of D has learnt from the test window),
   train the model that is kept on `plan.train_cutoffs` with the same settings; otherwise it is the
   model of step 2.
The test window is read for the metrics only, after the scored model is trained.
With `--ranker tf` or `all`, the TensorFlow ranker (`models.tf_ranker`) is trained on the same training
set and ranked on the same candidates (step 1 is XGBoost's; `--tf-validate` compares the TF
architectures on the validation cut-off instead). `--training-set PATH` trains on a set the Spark
training-set job wrote instead of building one here (cut-offs it lacks are built here).
Outputs (with --out): model.ubj (the artifact bytes), manifest.json (feature list, config, metrics,
sha256), evaluation.md; for the TF ranker tf_ranker/<version>/ (the SavedModel) and tf_evaluation.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from finegrain.console import fail
from finegrain.dates import as_of_ms, parse_as_of
from finegrain.errors import DataError
from finegrain.evaluation.metrics import auc, grouped_auc, ranking_metrics
from finegrain.evaluation.protocol import TEST_DAYS, EvaluationSplit, build_split, load_events, readme_split
from finegrain.evaluation.protocol import reference_rows as readme_reference
from finegrain.features.history import epoch_ms
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.settings import get_settings
from finegrain.training.plan import TrainingPlan
from finegrain.training.training_set import LABEL_DAYS, TrainingSet, check_cutoffs
from models.training_set import build_cutoff, build_training_set
from models.xgboost_ranker import (
    OBJECTIVES,
    RankerArtifact,
    RankerConfig,
    XGBoostRanker,
    artifact_json,
    feature_importance,
    train_ranker,
)

if TYPE_CHECKING:  # TensorFlow takes seconds to import: only the TF paths load it
    from models.tf_ranker import TFRanker, TFRankerConfig

KS = (10, 20)
DEPTH = 20
COLUMNS = ("HR@10", "Recall@10", "NDCG@10", "HR@20", "Recall@20", "NDCG@20", "AUC", "GAUC")
RANKERS = ("xgboost", "tf", "all")


def top_rows(rows: TrainingSet, scores: np.ndarray, k: int = DEPTH) -> np.ndarray:
    """Groups x k row indices of each group's k best scores (ties: earlier row), -1 padded.
    A row scored NaN is left out (a channel that did not recall the item)."""
    group = rows.group_of_row
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf), group))
    starts = np.concatenate([[0], np.cumsum(rows.group_sizes)[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, rows.group_sizes)
    keep = (position < k) & ~np.isnan(scores[order])
    out = np.full((len(rows.group_sizes), k), -1, dtype=np.int64)
    out[group[order][keep], position[keep]] = order[keep]
    return out


def group_metrics(rows: TrainingSet, scores: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR/Recall/NDCG of each group's ranking against its labels (targets outside the candidates count
    in Recall's denominator through `n_targets`), and AUC / GAUC over the rows."""
    top = top_rows(rows, scores, max(ks))
    hits = np.where(top >= 0, rows.labels[np.maximum(top, 0)] > 0, False)
    figures = ranking_metrics(hits, rows.n_targets, ks)
    return {**figures, **auc_figures(rows, scores)}


def auc_figures(rows: TrainingSet, scores: np.ndarray) -> dict[str, float]:
    filled = np.nan_to_num(scores, nan=-1e30)
    return {"AUC": auc(filled, rows.labels), "GAUC": grouped_auc(filled, rows.labels, rows.group_of_row)}


def split_metrics(rows: TrainingSet, scores: np.ndarray, split: EvaluationSplit) -> dict[str, float]:
    """The README protocol's figures through the shared split (its users, targets and metrics)."""
    if not np.array_equal(rows.group_users.astype(str), split.users.astype(str)):
        raise ValueError("the evaluation rows are not the protocol's users in its order")
    top = top_rows(rows, scores, max(KS))
    indices = split.item_index(rows.item_ids[np.maximum(top, 0)].ravel()).reshape(top.shape)
    ranked = np.where(top >= 0, indices, -1)
    return {**split.evaluate(ranked, KS), **auc_figures(rows, scores)}


def i2i_scores(rows: TrainingSet) -> np.ndarray:
    """The item-to-item channel alone: its own score, NaN for candidates it did not recall."""
    values = rows.features[:, RANKING_FEATURE_NAMES.index("recall_item_to_item")].astype(np.float64)
    return np.where(values > 0, values, np.nan)


def reference(events: pd.DataFrame, plan: TrainingPlan) -> dict[str, dict[str, float]]:
    """The data set README's rows, labelled, when the plan is scored on the README's own split."""
    if plan.test_days != TEST_DAYS:
        return {}
    return {f"{name} (README)": figures for name, figures in readme_reference(events, plan.split).items()}


def _table(title: str, rows: dict[str, dict[str, float]]) -> list[str]:
    return [title, "", "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS),
            *[f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS) + " |"
              for name, values in rows.items()], ""]


@dataclass
class RankerEvaluation:
    plan: TrainingPlan
    objective: str
    validation: dict[str, dict[str, float]]
    table: dict[str, dict[str, float]]
    artifact: RankerArtifact
    training_set: dict[str, Any]
    users: int
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    importance: list[tuple[str, float]] = field(default_factory=list)

    @property
    def test(self) -> dict[str, float]:
        figures: dict[str, float] = self.artifact.metrics["test"]
        return figures

    def markdown(self) -> str:
        plan = self.plan
        lines = [f"# XGBoost ranker {plan.describe()}", "",
                 f"Objective `{self.objective}` (chosen on the validation cut-off {plan.validation_cutoff}). "
                 f"Training set: {self.training_set}. Seconds: {self.seconds}.", ""]
        lines += _table(f"## Validation (cut-off {plan.validation_cutoff}, labels before the test window)",
                        self.validation)
        lines += _table(f"## Test (README protocol from {plan.split}, {plan.test_days} days, {self.users:,} "
                        "users)", {**self.table, **self.reference})
        lines += ["## Feature importance (share of total gain)", ""]
        lines += [f"- {name}: {share}" for name, share in self.importance]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _dates(dates: Sequence[date]) -> str:
    return ", ".join(map(str, dates))


def _round(figures: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in figures.items()}


def before_split(events: pd.DataFrame, plan: TrainingPlan) -> pd.DataFrame:
    """What model selection may read: nothing from the evaluation split on."""
    return events.loc[epoch_ms(events["timestamp"]) < as_of_ms(plan.split)]


def validation_rows(events: pd.DataFrame, plan: TrainingPlan, max_users: int | None
                    ) -> tuple[TrainingSet, TrainingSet]:
    """(training rows, validation rows) of model selection, from the events before the split."""
    earlier = before_split(events, plan)
    train = build_training_set(earlier, plan.validation_train_cutoffs, as_of=plan.validation_cutoff,
                               max_users=max_users)
    return train, build_cutoff(earlier, plan.validation_cutoff)


def choose_objective(events: pd.DataFrame, plan: TrainingPlan, config: RankerConfig,
                     objectives: tuple[str, ...] = OBJECTIVES, max_users: int | None = None
                     ) -> tuple[str, dict[str, dict[str, float]]]:
    """Best objective by NDCG@20 on the validation cut-off, from the events before the split."""
    train, valid = validation_rows(events, plan, max_users)
    figures = {"item_to_item alone": _round(group_metrics(valid, i2i_scores(valid)))}
    for objective in objectives:
        ranker, _ = train_ranker(train, replace(config, objective=objective))
        figures[objective] = _round(group_metrics(valid, ranker.score(valid.features)))
    best = max(objectives, key=lambda name: figures[name]["NDCG@20"])
    return best, figures


@dataclass(frozen=True)
class TestRows:
    """The protocol users' candidates at the plan's split (features before it) and the split itself."""

    rows: TrainingSet
    split: EvaluationSplit

    @classmethod
    def build(cls, events: pd.DataFrame, plan: TrainingPlan) -> TestRows:
        return cls(build_cutoff(events, plan.split, label_days=plan.test_days),
                   build_split(events, plan.split, test_days=plan.test_days))

    def summary(self) -> dict[str, Any]:
        return {"rows": len(self.rows.labels), "candidate_recall": round(self.rows.candidate_recall(), 4)}


def scored_cutoffs(train: TrainingSet, plan: TrainingPlan) -> list[date]:
    """The cut-offs of the set the scored model may learn from: label windows ending by the split."""
    return [c for c in train.cutoff_dates() if c + timedelta(days=LABEL_DAYS) <= plan.split]


def training_rows(events: pd.DataFrame, plan: TrainingPlan, max_users: int | None, say: Any,
                  have: TrainingSet | None = None) -> tuple[TrainingSet, float]:
    """The rows of a run: built here for `plan.cutoffs`, or `have` (a pre-built set, checked, its own
    cut-offs honoured) with the plan's scored cut-offs built here if it holds none before the split.
    The model kept learns from every cut-off of the set, the scored one from those before the split."""
    started = time.perf_counter()
    if have is None:
        missing, parts = list(plan.cutoffs), []
    else:
        have = check_training_set(have, plan)
        missing = [] if scored_cutoffs(have, plan) else list(plan.scored_cutoffs)
        parts = [have]
    if missing:
        say(f"building the training set (cut-offs {', '.join(map(str, missing))})")
        parts.append(build_training_set(events, missing, as_of=plan.as_of, max_users=max_users))
    train = parts[0] if len(parts) == 1 else TrainingSet.concat(parts)
    say(f"  {train.summary()}")
    return train, round(time.perf_counter() - started, 2)


def check_training_set(train: TrainingSet, plan: TrainingPlan) -> TrainingSet:
    """A pre-built set (the Spark job's) must use the serving layout and end by the as-of date."""
    if tuple(train.feature_names) != RANKING_FEATURE_NAMES:
        raise DataError("the training set was built with another feature layout than the serving code's")
    try:
        check_cutoffs(train.cutoff_dates(), plan.as_of)
    except ValueError as exc:
        raise DataError(f"the training set does not fit a model as of {plan.as_of}: {exc}") from None
    return train


def evaluate(events: pd.DataFrame, plan: TrainingPlan, *, config: RankerConfig | None = None,
             objective: str | None = None, max_users: int | None = None, say: Any = print,
             train: TrainingSet | None = None, test: TestRows | None = None) -> RankerEvaluation:
    """Choose the objective (unless given), train and score the plan's scored model, then the model kept.
    `train`: rows built already (shared with the TF ranker, or the Spark job's; cut-offs it lacks are
    built here); `test`: the test candidates, built already."""
    config = config or RankerConfig()
    seconds: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    say(f"XGBoost ranker {plan.describe()}")
    if objective is None:
        started = time.perf_counter()
        say(f"choosing the objective on the validation cut-off {plan.validation_cutoff}")
        objective, validation = choose_objective(events, plan, config, max_users=max_users)
        seconds["choose_objective"] = round(time.perf_counter() - started, 2)
        say(f"  {json.dumps(validation)}\n  -> {objective}")
    config = replace(config, objective=objective)
    train, seconds["training_set"] = training_rows(events, plan, max_users, say, have=train)

    say(f"training ({objective}, {config.rounds} rounds, nthread={config.nthread}) on the cut-offs "
        f"{_dates(scored_cutoffs(train, plan))}")
    scored, facts = train_ranker(train.select(scored_cutoffs(train, plan)), config)
    seconds["train"] = facts["train_seconds"]
    started = time.perf_counter()
    say(f"ranking the protocol users' candidates at {plan.split}")
    test = test or TestRows.build(events, plan)
    rows, split = test.rows, test.split
    name = f"XGBoost ranker ({objective})"
    table = {name: _round(split_metrics(rows, scored.score(rows.features), split)),
             "item_to_item alone (same candidates)": _round(split_metrics(rows, i2i_scores(rows), split))}
    seconds["evaluate"] = round(time.perf_counter() - started, 2)
    kept = scored
    if plan.backtest:
        say(f"training the model as of {plan.as_of} (cut-offs {_dates(train.cutoff_dates())})")
        kept, final_facts = train_ranker(train, config)
        seconds["train_kept"] = final_facts["train_seconds"]
        facts = {**facts, "kept_train_seconds": final_facts["train_seconds"]}
    metrics = {"test": table[name], "validation": validation.get(objective, {}),
               "test_candidates": test.summary(), "plan": plan.as_dict(), **facts}
    summary = train.summary()
    return RankerEvaluation(plan=plan, objective=objective, validation=validation, table=table,
                            artifact=kept.artifact(metrics), users=len(split.users),
                            reference=reference(events, plan),
                            training_set={k: v for k, v in summary.items() if k != "seconds"},
                            seconds=seconds, importance=feature_importance(kept))


@dataclass
class TFEvaluation:
    """The TensorFlow ranker trained and ranked like the XGBoost one (same rows, same split)."""

    plan: TrainingPlan
    ranker: TFRanker
    table: dict[str, dict[str, float]]
    facts: dict[str, Any]
    history: dict[str, list[float]]
    training_set: dict[str, Any]
    users: int
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"TF ranker ({self.ranker.config.architecture})"

    @property
    def test(self) -> dict[str, float]:
        return self.table[self.name]

    def markdown(self) -> str:
        plan = self.plan
        lines = [f"# TensorFlow ranker ({self.ranker.config.architecture}) {plan.describe()}", "",
                 f"Config: {self.ranker.metadata['config']}. Training facts: {self.facts}. "
                 f"Training set: {self.training_set}. Seconds: {self.seconds}.", ""]
        if self.validation:
            lines += _table(f"## Validation (cut-off {plan.validation_cutoff}, labels before the test "
                            "window)", self.validation)
        lines += _table(f"## Test (README protocol from {plan.split}, {plan.test_days} days, {self.users:,} "
                        "users)", {**self.table, **self.reference})
        curve = ", ".join(f"{v:.4f}" for v in self.history.get("holdout_ndcg@20", []))
        lines += [f"Held-out NDCG@20 per epoch (early stopping): {curve}"]
        return "\n".join(lines) + "\n"


def compare_architectures(events: pd.DataFrame, plan: TrainingPlan, config: TFRankerConfig,
                          max_users: int | None = None, say: Any = print) -> dict[str, dict[str, float]]:
    """Each TF architecture (and XGBoost, for scale) on the validation cut-off, from the events before
    the split, like the objective choice."""
    from models.tf_ranker import ARCHITECTURES, train_tf_ranker

    train, valid = validation_rows(events, plan, max_users)
    figures = {"item_to_item alone": _round(group_metrics(valid, i2i_scores(valid)))}
    xgb_ranker, _ = train_ranker(train, RankerConfig())
    figures["XGBoost (binary:logistic)"] = _round(group_metrics(valid, xgb_ranker.score(valid.features)))
    for architecture in ARCHITECTURES:
        started = time.perf_counter()
        trained = train_tf_ranker(train, replace(config, architecture=architecture))
        scores = trained.ranker.score(valid.features, valid.item_ids)
        figures[f"TF {architecture}"] = {**_round(group_metrics(valid, scores)),
                                         "seconds": round(time.perf_counter() - started, 1)}
        say(f"  TF {architecture}: {figures[f'TF {architecture}']}")
    return figures


def evaluate_tf(events: pd.DataFrame, plan: TrainingPlan, *, config: TFRankerConfig | None = None,
                max_users: int | None = None, say: Any = print, train: TrainingSet | None = None,
                test: TestRows | None = None, validate: bool = False) -> TFEvaluation:
    """Train and score the TF ranker as the plan says (the scored model, then the model kept)."""
    from models.tf_ranker import TFRankerConfig, train_tf_ranker

    config = config or TFRankerConfig()
    seconds: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    say(f"TensorFlow ranker {plan.describe()}")
    if validate:
        started = time.perf_counter()
        say(f"comparing the TF architectures on the validation cut-off {plan.validation_cutoff}")
        validation = compare_architectures(events, plan, config, max_users=max_users, say=say)
        seconds["validate"] = round(time.perf_counter() - started, 2)
    train, seconds["training_set"] = training_rows(events, plan, max_users, say, have=train)
    say(f"training the TF ranker ({config.architecture}, at most {config.epochs} epochs, "
        f"{config.threads} threads) on the cut-offs {_dates(scored_cutoffs(train, plan))}")
    trained = train_tf_ranker(train.select(scored_cutoffs(train, plan)), config,
                              say=lambda line: say(f"  {line}"))
    seconds["train"] = trained.facts["train_seconds"]

    started = time.perf_counter()
    say(f"ranking the protocol users' candidates at {plan.split}")
    test = test or TestRows.build(events, plan)
    scoring = time.perf_counter()
    scores = trained.ranker.score(test.rows.features, test.rows.item_ids)
    seconds["score_rows"] = round(time.perf_counter() - scoring, 2)
    name = f"TF ranker ({config.architecture})"
    table = {name: _round(split_metrics(test.rows, scores, test.split)),
             "item_to_item alone (same candidates)": _round(split_metrics(test.rows, i2i_scores(test.rows),
                                                                          test.split))}
    seconds["evaluate"] = round(time.perf_counter() - started, 2)
    facts = {**trained.facts, "test_candidates": test.summary()}
    kept = trained
    if plan.backtest:
        # The kept model refits the scored model's recipe on every user for the epochs its early
        # stopping chose: measured on the backtest split (as of 2010-12-10 on the sample data) that
        # refit scored NDCG@20 0.4049 / Recall@20 0.2954 against 0.4007 / 0.2922 early-stopped on 90%
        # of the users, and it costs half the epochs the kept model's own early stopping ran.
        epochs = int(trained.facts["best_epoch"])
        say(f"training the model as of {plan.as_of} (cut-offs {_dates(train.cutoff_dates())}) on every "
            f"user for {epochs} epochs, the scored model's best")
        kept = train_tf_ranker(train, config, say=lambda line: say(f"  {line}"), fixed_epochs=epochs)
        seconds["train_kept"] = kept.facts["train_seconds"]
        facts["kept"] = kept.facts
    kept.ranker.metadata["metrics"] = {"test": table[name], "plan": plan.as_dict(), **trained.facts}
    summary = train.summary()
    # The early-stopping curve is the scored model's (the kept one, refitted for a fixed count, has none).
    return TFEvaluation(plan=plan, ranker=kept.ranker, table=table, facts=facts, history=trained.history,
                        training_set={k: v for k, v in summary.items() if k != "seconds"},
                        users=len(test.split.users), reference=reference(events, plan),
                        seconds=seconds, validation=validation)


def comparison_markdown(results: list[RankerEvaluation | TFEvaluation]) -> str:
    """One table of every ranker evaluated in this run, next to the README's reference rows."""
    rows: dict[str, dict[str, float]] = {}
    for result in results:
        rows.update(result.table)
    plan = results[0].plan
    lines = [f"# Rankers {plan.describe()} (same training set, same candidates)", "",
             "| model | " + " | ".join(COLUMNS) + " | train s |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    train_seconds = {name: result.seconds.get("train") for result in results for name in result.table
                     if "alone" not in name}
    lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS)
              + f" | {_seconds(train_seconds.get(name))} |"
              for name, values in {**rows, **results[0].reference}.items()]
    return "\n".join(lines) + "\n"


def write_tf_outputs(result: TFEvaluation, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"saved_model": result.ranker.export(folder / "tf_ranker"),
             "tf_markdown": folder / "tf_evaluation.md"}
    paths["tf_markdown"].write_text(result.markdown())
    return paths


def write_outputs(result: RankerEvaluation, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"model": folder / "model.ubj", "manifest": folder / "manifest.json",
             "markdown": folder / "evaluation.md"}
    paths["model"].write_bytes(result.artifact.model)
    paths["manifest"].write_text(artifact_json(result.artifact))
    paths["markdown"].write_text(result.markdown())
    return paths


def main(
    ranker: Annotated[str, typer.Option(help="xgboost, tf or all.")] = "xgboost",
    events_path: Annotated[Path | None, typer.Option(
        "--events", help="Canonical events Parquet (default: the loaded data, Settings.events_path).",
        show_default=False)] = None,
    as_of: Annotated[str, typer.Option(
        "--as-of", help="The models' as-of date (YYYY-MM-DD); default: the README's split, the data's last "
        "test window.", show_default=False)] = "",
    test_days: Annotated[int, typer.Option("--test-days", min=1, help="Length of the test window.")
                         ] = TEST_DAYS,
    out: Annotated[Path | None, typer.Option(help="Folder for the model, manifest and Markdown tables.",
                                             show_default=False)] = None,
    training_set: Annotated[Path | None, typer.Option(
        help="Train on this pre-built training set (the Spark job's) instead of building one.",
        show_default=False)] = None,
    objective: Annotated[str | None, typer.Option(
        help=f"Skip the validation choice and train with this objective ({', '.join(OBJECTIVES)}).",
        show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="XGBoost boosting rounds.")] = RankerConfig().rounds,
    epochs: Annotated[int | None, typer.Option(help="TF ranker: at most this many epochs.",
                                               show_default=False)] = None,
    architecture: Annotated[str | None, typer.Option(help="TF ranker: dcn or wide_deep.",
                                                     show_default=False)] = None,
    tf_validate: Annotated[bool, typer.Option(
        help="TF ranker: first compare the architectures on the validation split.")] = False,
) -> None:
    """Train and evaluate the rankers on the README protocol and print their tables."""
    if ranker not in RANKERS:
        raise fail(f"bad --ranker {ranker!r}: one of {', '.join(RANKERS)}")
    if objective is not None and objective not in OBJECTIVES:
        raise fail(f"bad --objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    started = time.perf_counter()
    try:
        events = load_events(events_path or get_settings().events_path)
        date_ = parse_as_of(as_of) if as_of else readme_split(events, test_days)
        plan = TrainingPlan.for_events(events, date_, test_days)
        have = None
        if training_set is not None:
            from models.training_set_io import read_training_set

            have = read_training_set(training_set)
        train, _ = training_rows(events, plan, None, print, have=have)
        test = TestRows.build(events, plan)
    except DataError as exc:
        raise fail(str(exc)) from None
    results: list[RankerEvaluation | TFEvaluation] = []
    if ranker in ("xgboost", "all"):
        result = evaluate(events, plan, config=RankerConfig(rounds=rounds), objective=objective,
                          train=train, test=test)
        result.seconds["total"] = round(time.perf_counter() - started, 2)
        print(result.markdown())
        if out:
            for name, path in write_outputs(result, out).items():
                print(f"{name}: {path}")
        # Reload the bytes as serving would, to prove the artifact stands on its own.
        XGBoostRanker.from_bytes(result.artifact.model, result.artifact.feature_names, result.artifact.config)
        results.append(result)
    if ranker in ("tf", "all"):
        from models.tf_ranker import TFRankerConfig

        changes: dict[str, Any] = {}
        if epochs is not None:
            changes["epochs"] = epochs
        if architecture is not None:
            changes["architecture"] = architecture
        tf_result = evaluate_tf(events, plan, config=TFRankerConfig(**changes), train=train, test=test,
                                validate=tf_validate)
        print(tf_result.markdown())
        if out:
            for name, path in write_tf_outputs(tf_result, out).items():
                print(f"{name}: {path}")
        results.append(tf_result)
    if len(results) > 1:
        print(comparison_markdown(results))
        if out:
            (out / "rankers.md").write_text(comparison_markdown(results))
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    typer.run(main)
