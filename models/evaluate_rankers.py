"""Train the rankers (XGBoost, TensorFlow) and evaluate them on the data set README's protocol.

    python -m models.evaluate_rankers [--ranker xgboost|tf|all] [--events PATH]
        [--out var/reports/ranker] [--training-set PATH] [--tf-validate]

Steps (every date a midnight UTC):
1. Choose the objective on a validation split that ends before the README's test window: train on the
   cut-offs `VALID_TRAIN_CUTOFFS` (labels up to 2010-10-11), rank the candidates at 2010-10-11
   (features before it, labels in the 30 days after) with each objective, keep the best NDCG@20.
2. Train the final model with that objective on `TRAIN_CUTOFFS` (label windows ending by 2010-11-10).
3. Rank the candidates of the README's users at 2010-11-10 (features before it) and compute HR /
   Recall / NDCG @10 and @20 with `EvaluationSplit.evaluate` (targets: everything bought in the test
   window, unseen items included), AUC over all candidate rows and per-user AUC (GAUC); next to it,
   the item-to-item channel alone on the same candidates and the README's reference rows.
The test window is read for the metrics only, after the model is trained.
With `--ranker tf` or `all`, the TensorFlow ranker (`models.tf_ranker`) is trained on the same training
set and ranked on the same README candidates (step 1 is XGBoost's; `--tf-validate` compares the TF
architectures on the validation split instead). `--training-set PATH` trains on a set the Spark
training-set job wrote instead of building one here.
Outputs (with --out): model.ubj (the artifact bytes), manifest.json (feature list, config, metrics,
sha256), evaluation.md; for the TF ranker tf_ranker/<version>/ (the SavedModel) and tf_evaluation.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from finegrain.console import fail
from finegrain.dates import as_of_ms
from finegrain.evaluation.metrics import auc, grouped_auc, ranking_metrics
from finegrain.evaluation.protocol import REFERENCE as README_REFERENCE
from finegrain.evaluation.protocol import SPLIT_DATE, EvaluationSplit, build_split, load_events
from finegrain.features.history import epoch_ms
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.settings import get_settings
from finegrain.training.training_set import LABEL_DAYS, TrainingSet, train_cutoffs, validation_cutoff
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

# Derived from the README protocol's split date, as for any as-of date: the final model trains on the
# three cut-offs before it, the objective is chosen on the cut-off one label window earlier.
VALID_CUTOFF = validation_cutoff(SPLIT_DATE)
VALID_TRAIN_CUTOFFS = train_cutoffs(VALID_CUTOFF)
TRAIN_CUTOFFS = train_cutoffs(SPLIT_DATE)
KS = (10, 20)
DEPTH = 20
REFERENCE = {f"{name} (README)": figures for name, figures in README_REFERENCE["standard"].items()}
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


@dataclass
class RankerEvaluation:
    objective: str
    validation: dict[str, dict[str, float]]
    table: dict[str, dict[str, float]]
    artifact: RankerArtifact
    training_set: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    importance: list[tuple[str, float]] = field(default_factory=list)

    @property
    def test(self) -> dict[str, float]:
        figures: dict[str, float] = self.artifact.metrics["test"]
        return figures

    def markdown(self) -> str:
        lines = ["# XGBoost ranker, README protocol (split 2010-11-10)", "",
                 f"Objective `{self.objective}` (chosen on the validation split at {VALID_CUTOFF}). "
                 f"Training set: {self.training_set}. Seconds: {self.seconds}.", "",
                 "## Validation (cut-off 2010-10-11, labels before the test window)", "",
                 "| objective | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS) + " |"
                  for name, values in self.validation.items()]
        lines += ["", "## Test (README protocol, 1,291 users)", "",
                  "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS) + " |"
                  for name, values in {**self.table, **REFERENCE}.items()]
        lines += ["", "## Feature importance (share of total gain)", ""]
        lines += [f"- {name}: {share}" for name, share in self.importance]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _round(figures: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in figures.items()}


def choose_objective(events: pd.DataFrame, config: RankerConfig, objectives: tuple[str, ...] = OBJECTIVES,
                     max_users: int | None = None) -> tuple[str, dict[str, dict[str, float]]]:
    """Best objective by NDCG@20 on the validation cut-off; events at or after the README split are
    dropped first, so the test window cannot influence the choice."""
    before_test = events.loc[epoch_ms(events["timestamp"]) < as_of_ms(SPLIT_DATE)]
    train = build_training_set(before_test, VALID_TRAIN_CUTOFFS, as_of=VALID_CUTOFF, max_users=max_users)
    valid = build_cutoff(before_test, VALID_CUTOFF)
    figures = {"item_to_item alone": _round(group_metrics(valid, i2i_scores(valid)))}
    for objective in objectives:
        ranker, _ = train_ranker(train, _with(config, objective=objective))
        figures[objective] = _round(group_metrics(valid, ranker.score(valid.features)))
    best = max(objectives, key=lambda name: figures[name]["NDCG@20"])
    return best, figures


def _with(config: RankerConfig, **changes: Any) -> RankerConfig:
    from dataclasses import replace

    return replace(config, **changes)


@dataclass(frozen=True)
class ReadmeRows:
    """The README users' candidates at the split date (features before it) and the split itself."""

    rows: TrainingSet
    split: EvaluationSplit

    @classmethod
    def build(cls, events: pd.DataFrame) -> ReadmeRows:
        return cls(build_cutoff(events, SPLIT_DATE), build_split(events, SPLIT_DATE))

    def summary(self) -> dict[str, Any]:
        return {"rows": len(self.rows.labels), "candidate_recall": round(self.rows.candidate_recall(), 4)}


def training_rows(events: pd.DataFrame, train_cutoffs: tuple[date, ...], max_users: int | None,
                  say: Any) -> tuple[TrainingSet, float]:
    started = time.perf_counter()
    say(f"building the training set (cut-offs {', '.join(map(str, train_cutoffs))})")
    train = build_training_set(events, train_cutoffs, as_of=SPLIT_DATE, max_users=max_users)
    say(f"  {train.summary()}")
    return train, round(time.perf_counter() - started, 2)


def check_training_set(train: TrainingSet) -> TrainingSet:
    """A pre-built set (the Spark job's) must use the serving layout and end before the test window."""
    if tuple(train.feature_names) != RANKING_FEATURE_NAMES:
        raise ValueError("the training set was built with another feature layout than the serving code's")
    late = sorted({c for c in train.group_cutoffs.astype(str).tolist()
                   if date.fromisoformat(c) + timedelta(days=LABEL_DAYS) > SPLIT_DATE})
    if late:
        raise ValueError(f"the training set holds cut-off(s) {', '.join(late)} whose {LABEL_DAYS}-day label "
                         f"window runs past the README split {SPLIT_DATE}: it would train on the "
                         "evaluation window")
    return train


def evaluate(events: pd.DataFrame, *, config: RankerConfig | None = None, objective: str | None = None,
             train_cutoffs: tuple[date, ...] = TRAIN_CUTOFFS, max_users: int | None = None,
             say: Any = print, train: TrainingSet | None = None, test: ReadmeRows | None = None
             ) -> RankerEvaluation:
    """Choose the objective (unless given), train the final model, evaluate it on the README split.
    `train` / `test`: rows built already (shared with the TF ranker, or read from the Spark job)."""
    config = config or RankerConfig()
    seconds: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    if objective is None:
        started = time.perf_counter()
        say(f"choosing the objective on the validation cut-off {VALID_CUTOFF}")
        objective, validation = choose_objective(events, config, max_users=max_users)
        seconds["choose_objective"] = round(time.perf_counter() - started, 2)
        say(f"  {json.dumps(validation)}\n  -> {objective}")
    config = _with(config, objective=objective)

    if train is None:
        train, seconds["training_set"] = training_rows(events, train_cutoffs, max_users, say)
    say(f"training ({objective}, {config.rounds} rounds, nthread={config.nthread})")
    ranker, facts = train_ranker(check_training_set(train), config)
    seconds["train"] = facts["train_seconds"]

    started = time.perf_counter()
    say(f"ranking the README users' candidates at {SPLIT_DATE}")
    test = test or ReadmeRows.build(events)
    rows, split = test.rows, test.split
    table = {
        f"XGBoost ranker ({objective})": _round(split_metrics(rows, ranker.score(rows.features), split)),
        "item_to_item alone (same candidates)": _round(split_metrics(rows, i2i_scores(rows), split)),
    }
    seconds["evaluate"] = round(time.perf_counter() - started, 2)
    metrics = {"test": table[f"XGBoost ranker ({objective})"], "validation": validation.get(objective, {}),
               "test_candidates": test.summary(), **facts}
    artifact = ranker.artifact(metrics)
    summary = train.summary()
    return RankerEvaluation(objective=objective, validation=validation, table=table, artifact=artifact,
                            training_set={k: v for k, v in summary.items() if k != "seconds"},
                            seconds=seconds, importance=feature_importance(ranker))


@dataclass
class TFEvaluation:
    """The TensorFlow ranker trained and ranked like the XGBoost one (same rows, same split)."""

    ranker: TFRanker
    table: dict[str, dict[str, float]]
    facts: dict[str, Any]
    history: dict[str, list[float]]
    training_set: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"TF ranker ({self.ranker.config.architecture})"

    @property
    def test(self) -> dict[str, float]:
        return self.table[self.name]

    def markdown(self) -> str:
        config = self.ranker.config
        lines = [f"# TensorFlow ranker ({config.architecture}), README protocol (split {SPLIT_DATE})", "",
                 f"Config: {self.ranker.metadata['config']}. Training facts: {self.facts}. "
                 f"Training set: {self.training_set}. Seconds: {self.seconds}.", ""]
        if self.validation:
            lines += [f"## Validation (cut-off {VALID_CUTOFF}, labels before the test window)", "",
                      "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
            lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS) + " |"
                      for name, values in self.validation.items()]
            lines.append("")
        lines += ["## Test (README protocol, 1,291 users)", "",
                  "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS) + " |"
                  for name, values in {**self.table, **REFERENCE}.items()]
        curve = ", ".join(f"{v:.4f}" for v in self.history.get("holdout_ndcg@20", []))
        lines += ["", f"Held-out NDCG@20 per epoch (early stopping): {curve}"]
        return "\n".join(lines) + "\n"


def compare_architectures(events: pd.DataFrame, config: TFRankerConfig, max_users: int | None = None,
                          say: Any = print) -> dict[str, dict[str, float]]:
    """Each TF architecture (and XGBoost, for scale) on the validation cut-off; like the objective
    choice, the events from the README split on are dropped first."""
    from models.tf_ranker import ARCHITECTURES, train_tf_ranker

    before_test = events.loc[epoch_ms(events["timestamp"]) < as_of_ms(SPLIT_DATE)]
    train = build_training_set(before_test, VALID_TRAIN_CUTOFFS, as_of=VALID_CUTOFF, max_users=max_users)
    valid = build_cutoff(before_test, VALID_CUTOFF)
    figures = {"item_to_item alone": _round(group_metrics(valid, i2i_scores(valid)))}
    xgb_ranker, _ = train_ranker(train, RankerConfig())
    figures["XGBoost (binary:logistic)"] = _round(group_metrics(valid, xgb_ranker.score(valid.features)))
    for architecture in ARCHITECTURES:
        started = time.perf_counter()
        trained = train_tf_ranker(train, _with_tf(config, architecture=architecture))
        scores = trained.ranker.score(valid.features, valid.item_ids)
        figures[f"TF {architecture}"] = {**_round(group_metrics(valid, scores)),
                                         "seconds": round(time.perf_counter() - started, 1)}
        say(f"  TF {architecture}: {figures[f'TF {architecture}']}")
    return figures


def _with_tf(config: TFRankerConfig, **changes: Any) -> TFRankerConfig:
    from dataclasses import replace

    return replace(config, **changes)


def evaluate_tf(events: pd.DataFrame, *, config: TFRankerConfig | None = None,
                train_cutoffs: tuple[date, ...] = TRAIN_CUTOFFS, max_users: int | None = None,
                say: Any = print, train: TrainingSet | None = None, test: ReadmeRows | None = None,
                validate: bool = False) -> TFEvaluation:
    """Train the TF ranker on the training cut-offs and evaluate it on the README split."""
    from models.tf_ranker import TFRankerConfig, train_tf_ranker

    config = config or TFRankerConfig()
    seconds: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    if validate:
        started = time.perf_counter()
        say(f"comparing the TF architectures on the validation cut-off {VALID_CUTOFF}")
        validation = compare_architectures(events, config, max_users=max_users, say=say)
        seconds["validate"] = round(time.perf_counter() - started, 2)
    if train is None:
        train, seconds["training_set"] = training_rows(events, train_cutoffs, max_users, say)
    say(f"training the TF ranker ({config.architecture}, at most {config.epochs} epochs, "
        f"{config.threads} threads)")
    trained = train_tf_ranker(check_training_set(train), config, say=lambda line: say(f"  {line}"))
    seconds["train"] = trained.facts["train_seconds"]

    started = time.perf_counter()
    say(f"ranking the README users' candidates at {SPLIT_DATE}")
    test = test or ReadmeRows.build(events)
    scoring = time.perf_counter()
    scores = trained.ranker.score(test.rows.features, test.rows.item_ids)
    seconds["score_rows"] = round(time.perf_counter() - scoring, 2)
    name = f"TF ranker ({config.architecture})"
    table = {name: _round(split_metrics(test.rows, scores, test.split)),
             "item_to_item alone (same candidates)": _round(split_metrics(test.rows, i2i_scores(test.rows),
                                                                          test.split))}
    seconds["evaluate"] = round(time.perf_counter() - started, 2)
    facts = {**trained.facts, "test_candidates": test.summary()}
    trained.ranker.metadata["metrics"] = {"test": table[name], **trained.facts}
    summary = train.summary()
    return TFEvaluation(ranker=trained.ranker, table=table, facts=facts, history=trained.history,
                        training_set={k: v for k, v in summary.items() if k != "seconds"},
                        seconds=seconds, validation=validation)


def comparison_markdown(results: list[RankerEvaluation | TFEvaluation]) -> str:
    """One table of every ranker evaluated in this run, next to the README's reference rows."""
    rows: dict[str, dict[str, float]] = {}
    for result in results:
        rows.update(result.table)
    lines = ["# Rankers on the README protocol (same training set, same candidates)", "",
             "| model | " + " | ".join(COLUMNS) + " | train s |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    train_seconds = {name: result.seconds.get("train") for result in results for name in result.table
                     if "alone" not in name}
    lines += [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in COLUMNS)
              + f" | {_seconds(train_seconds.get(name))} |" for name, values in {**rows, **REFERENCE}.items()]
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
    events = load_events(events_path or get_settings().events_path)
    train = None
    if training_set is not None:
        from models.training_set_io import read_training_set

        train = read_training_set(training_set)
    test = ReadmeRows.build(events)
    if train is None:
        train, _ = training_rows(events, TRAIN_CUTOFFS, None, print)
    results: list[RankerEvaluation | TFEvaluation] = []
    if ranker in ("xgboost", "all"):
        result = evaluate(events, config=RankerConfig(rounds=rounds), objective=objective,
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
        tf_result = evaluate_tf(events, config=TFRankerConfig(**changes), train=train, test=test,
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
