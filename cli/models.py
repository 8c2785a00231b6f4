"""`finegrain models`: the model registry and what serving is told to load (ZooKeeper).

Exit codes: 0 done, 1 a publish or rollback refused (by the quality gate or a pin: the version stays
registered, the reason is printed), 2 an error (unknown model, corrupt artifact, unreachable store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.options import AsOfModelOption, EventsOption, JsonOption, TestDaysOption, name_versions
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.dates import parse_as_of
from finegrain.errors import FinegrainError
from finegrain.evaluation.protocol import TEST_DAYS
from finegrain.settings import get_settings
from finegrain.storage.workers import rollout, worker_states
from models.publishing import (
    DEFAULT_TOLERANCE,
    GATE_HELD,
    GATE_PASSED,
    GATE_REFUSED,
    GateCheck,
    ModelPublisher,
    ModelStatus,
    PublishResult,
)
from models.registry import ModelEntry, ModelRegistry

if TYPE_CHECKING:  # the training modules import pandas, XGBoost and TensorFlow: only when a run needs them
    from models.train_embeddings import EmbeddingRun
    from models.train_ranker import RankerRun

app = typer.Typer(help="Model versions: list, show, publish behind the quality gate, roll back, pin.",
                  no_args_is_help=True)

REFUSED = 1

ForceOption = Annotated[bool, typer.Option("--force", help="Skip the quality gate and the pin (the "
                                           "artifact's checksum is still verified).")]


@contextmanager
def _publisher() -> Iterator[ModelPublisher]:
    try:
        with ModelPublisher(get_settings()) as publisher:
            yield publisher
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # a store that is down or refuses: one line, not a traceback
        raise fail(f"{type(exc).__name__}: {exc} (is the local stack up? `finegrain stack status`)") from None


def _flags(entry: ModelEntry) -> str:
    flags = [flag for flag, on in (("published", entry.published), ("pinned", entry.pinned),
                                   ("withdrawn", entry.withdrawn)) if on]
    return ", ".join(flags) or "-"


def _metric_summary(entry: ModelEntry, limit: int = 4) -> str:
    metrics = sorted(entry.manifest.metrics.items())
    text = ", ".join(f"{key} {value:.4f}" for key, value in metrics[:limit])
    return text + (" ..." if len(metrics) > limit else "")


def _entries_table(title: str, entries: list[ModelEntry]) -> Table:
    rows = [(entry.name, entry.version, entry.manifest.framework or "-", _flags(entry),
             _metric_summary(entry) or "-", entry.manifest.sha256[:12], entry.gate or "-")
            for entry in entries]
    return summary_table(title, rows, ["name", "version", "framework", "state", "metrics", "sha256", "gate"])


@app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="One model (default: every model).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the registered versions, oldest first, with their state and last gate decision."""
    settings = get_settings()
    try:
        entries = ModelRegistry(settings).list(name)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"{type(exc).__name__}: {exc} (is the local stack up?)") from None
    if name is not None and not entries:
        raise fail(f"no model named {name} is registered")
    console.print(_entries_table(f"Registered models ({len(entries)} versions)", entries))
    if as_json:
        print_json_line({"versions": [entry.as_dict() for entry in entries]})


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version (see `finegrain models list NAME`).")],
    as_json: JsonOption = False,
) -> None:
    """Everything the manifest of one version says."""
    try:
        entry = ModelRegistry(get_settings()).get(name, version)
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    details = entry.as_dict()
    rows: list[tuple[str, Any]] = [
        (key, details[key]) for key in ("name", "version", "framework", "artifact_uri", "sha256",
                                        "created_at", "published", "published_at", "pinned", "withdrawn",
                                        "gate")
    ]
    rows += [(f"metric {key}", f"{value:.4f}") for key, value in details["metrics"].items()]
    rows += [(f"param {key}", value) for key, value in details["params"].items()]
    rows += [(f"snapshot {key}", value) for key, value in details["data_snapshot"].items() if value]
    rows.append((f"features ({len(details['features'])})", ", ".join(details["features"]) or "-"))
    console.print(summary_table(f"{name} {version}", [(k, "-" if v is None else v) for k, v in rows],
                                ["field", "value"]))
    if as_json:
        print_json_line(details)


def _report(result: PublishResult, as_json: bool) -> None:
    verdict, style = (("refused", "red") if result.refused else ("published", "green") if result.changed
                      else ("unchanged", "yellow"))
    console.print(f"[bold {style}]{verdict}:[/] {result.reason}", highlight=False, soft_wrap=True)
    if as_json:
        print_json_line(result.as_dict())
    if result.refused:
        raise typer.Exit(REFUSED)


def _run(action: Callable[[ModelPublisher], PublishResult], as_json: bool) -> None:
    with _publisher() as publisher:
        result = action(publisher)
    _report(result, as_json)


@app.command()
def publish(
    models: Annotated[list[str], typer.Argument(
        help="NAME VERSION of one model, or NAME=VERSION of each of several (the nightly DAG's publish "
        "step: one process and one ZooKeeper session for all).", metavar="NAME VERSION | NAME=VERSION...",
        show_default=False)],
    force: ForceOption = False,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="How much worse than the "
                                             "published version (absolute, on the gate metric) is allowed."
                                             )] = DEFAULT_TOLERANCE,
    as_json: JsonOption = False,
) -> None:
    """Publish a version to serving (its manifest into ZooKeeper) if it passes its quality gate. Several
    models are published in the order given; the first refusal stops there (exit 1)."""
    targets = publish_targets(models)
    results: list[PublishResult] = []
    with _publisher() as publisher:
        for name, version in targets.items():
            results.append(publisher.publish(name, version, force=force, tolerance=tolerance))
            if results[-1].refused:
                break
    for result in results:  # out of the publisher's block, which takes any exception for a store error
        _report(result, as_json)


def publish_targets(texts: list[str]) -> dict[str, str]:
    """`NAME VERSION` (the one-model form) or `NAME=VERSION ...`."""
    if len(texts) == 2 and not any("=" in text for text in texts):
        return {texts[0]: texts[1]}
    if len(texts) == 1 and "=" not in texts[0]:
        raise fail(f"bad model {texts[0]!r}: give NAME VERSION, or NAME=VERSION of each model")
    return name_versions(texts, "model")


@app.command()
def gate(
    candidates: Annotated[list[str], typer.Argument(
        help="NAME=VERSION of each candidate, registered and not published (e.g. by `train-ranker "
        "--no-publish`).", show_default=False)],
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="How much worse than the "
                                             "published version (absolute, on the gate metric) is allowed."
                                             )] = DEFAULT_TOLERANCE,
    as_json: JsonOption = False,
) -> None:
    """Decide, without publishing, whether each candidate may replace what serves now: passed (publish
    it), held (its model is pinned) or refused (worse than the published version, or not comparable).
    Exit 1 if one is refused. `publish` then publishes the ones that passed."""
    pairs = name_versions(candidates, "candidate")
    with _publisher() as publisher:
        checks = [publisher.check(name, version, tolerance=tolerance) for name, version in pairs.items()]
    console.print(summary_table("Quality gate (nothing published)", [_check_row(c) for c in checks],
                                ["model", "candidate", "published", "metric", "candidate value",
                                 "published value", "verdict", "reason"]))
    if as_json:
        print_json_line({"checks": [check.as_dict() for check in checks],
                         **{verdict: {c.name: c.version for c in checks if c.verdict == verdict}
                            for verdict in (GATE_PASSED, GATE_HELD, GATE_REFUSED)}})
    if any(check.verdict == GATE_REFUSED for check in checks):
        raise typer.Exit(REFUSED)


def _check_row(check: GateCheck) -> tuple[Any, ...]:
    decision = check.gate

    def value(number: float | None) -> str:
        return "-" if number is None else f"{number:.4f}"

    style = {GATE_PASSED: "green", GATE_HELD: "yellow"}.get(check.verdict, "red")
    return (check.name, check.version, check.published or "-", decision.metric if decision else "-",
            value(decision.candidate if decision else None), value(decision.current if decision else None),
            f"[{style}]{check.verdict}[/]", check.reason)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Re-publish the version published before the current one (the current one is withdrawn)."""
    _run(lambda p: p.rollback(name, force=force), as_json)


@app.command()
def pin(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to publish (if it is not) and hold.")],
    as_json: JsonOption = False,
) -> None:
    """Hold a version: publish it if needed (no gate) and refuse other publications until unpinned."""
    _run(lambda p: p.pin(name, version), as_json)


@app.command()
def unpin(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Release the pin: publishing behind the gate resumes."""
    with _publisher() as publisher:
        released = publisher.unpin(name)
    console.print(f"{name}: " + (f"unpinned {released}" if released else "was not pinned"), highlight=False)


def _status_table(status: ModelStatus) -> Table:
    manifest = status.published
    title = f"{status.name}: " + ("nothing published" if manifest is None else
                                  f"serving {manifest.version} (znode version {status.znode_version}, "
                                  f"set {status.modified_at:%Y-%m-%d %H:%M:%S} UTC)")
    if status.pinned:
        title += f", pinned to {status.pinned}"
    if not status.in_sync:
        title += " [registry flag out of step with the znode: publish again to repair]"
    return _entries_table(title, status.entries)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="One model (default: every model).")] = None,
    as_json: JsonOption = False,
) -> None:
    """What each model's znode serves, its pin, and its registered versions."""
    with _publisher() as publisher:
        names = [name] if name is not None else publisher.names()
        statuses = [publisher.status(one) for one in names]
        workers = worker_states(publisher.settings, publisher.zk)
    if not statuses:
        console.print("no model is registered")
    rollouts = {}
    for one in statuses:
        console.print(_status_table(one))
        published = None if one.published is None else one.published.version
        rollouts[one.name] = progress = rollout(workers, one.name, published)
        if workers:
            others = ", ".join(f"{count} on {version}" for version, count in progress["versions"].items()
                               if version != published)
            line = f"rollout: {progress['on_published']}/{progress['workers']} API workers serve {published}"
            console.print(line + (f" ({others})" if others else ""), highlight=False)
            for error in progress["errors"]:
                console.print(f"[red]refused by a worker:[/] {error}", highlight=False)
    if as_json:
        print_json_line({"models": [one.as_dict() | {"rollout": rollouts[one.name]} for one in statuses],
                         "checked_at": datetime.now(UTC).isoformat()})


def _say(message: str) -> None:
    console.print(f"[dim]{message}[/]", highlight=False)


@app.command("train-ranker")
def train_ranker_command(
    kind: Annotated[str, typer.Option(
        "--kind", help="xgboost (model ranker_xgboost) or tf (ranker_tf: the TensorFlow deep ranker, "
        "registered as its SavedModel folder).")] = "xgboost",
    events: EventsOption = None,
    as_of: AsOfModelOption = "",
    test_days: TestDaysOption = TEST_DAYS,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=1, help="XGBoost: boosting rounds (default: the ranker's tuned setting).",
        show_default=False)] = None,
    objective: Annotated[str | None, typer.Option(
        "--objective", help="XGBoost: binary:logistic, rank:ndcg or rank:pairwise, or `published` (the "
        "published version's; chosen when none is published); default: chosen on the validation cut-off.",
        show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="TF: at most this many epochs (early stopping may end sooner).",
        show_default=False)] = None,
    max_users: Annotated[int | None, typer.Option(
        "--max-users", min=1, help="Train on at most this many users per cut-off (quick runs); the "
        "evaluation always uses every README user.", show_default=False)] = None,
    training_set: Annotated[Path | None, typer.Option(
        "--training-set", help="Train on this pre-built training set (a folder written by "
        "spark_jobs/training_set.py, or a Parquet file) instead of building one from the events; the "
        "evaluation still reads the events.", show_default=False)] = None,
    publish: Annotated[bool, typer.Option(
        "--publish/--no-publish", help="Publish the run to ZooKeeper if it passes its gate.")] = True,
    json: JsonOption = False,
) -> None:
    """Train a ranker, evaluate it on the README protocol, register it, publish it if it passes its gate."""
    from models.train_ranker import KINDS, OBJECTIVE_CHOICES, train_register_publish

    if kind not in KINDS:
        raise fail(f"--kind {kind!r}: choose {' or '.join(KINDS)}")
    if kind == "tf" and (rounds is not None or objective is not None):
        raise fail("--rounds and --objective are XGBoost settings (the TF ranker takes --epochs)")
    if kind == "xgboost" and epochs is not None:
        raise fail("--epochs is a TF setting (XGBoost takes --rounds)")
    settings = get_settings()
    events_path = events if events is not None else settings.events_path
    if not events_path.exists():
        raise fail(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    if objective is not None and objective not in OBJECTIVE_CHOICES:
        raise fail(f"--objective {objective!r}: choose {', '.join(OBJECTIVE_CHOICES)}")
    if training_set is not None and max_users is not None:
        raise fail("--max-users samples the users of a training set built here: not with --training-set")
    try:
        prebuilt = None
        if training_set is not None:
            from models.training_set_io import read_training_set

            prebuilt = read_training_set(training_set)
            _say(f"read the training set {training_set}: {prebuilt.summary()}")
        run = train_register_publish(settings, events_path, kind=kind,
                                     as_of=parse_as_of(as_of) if as_of else None, test_days=test_days,
                                     rounds=rounds, objective=objective,
                                     epochs=epochs, max_users=max_users, publish=publish,
                                     training_set=prebuilt,
                                     training_set_uri="" if training_set is None else str(training_set),
                                     say=_say)
    except (FinegrainError, ValueError, FileNotFoundError) as exc:  # bad input: one line, no traceback
        raise fail(str(exc)) from None
    _report_run(run, json)


def _report_run(run: RankerRun | EmbeddingRun, as_json: bool) -> None:
    """A training run's figures, its publication decision, the JSON line; exit 1 if the gate refused."""
    rows = [(name, f"{value:.4f}") for name, value in sorted(run.manifest.metrics.items())]
    console.print(summary_table(f"{run.manifest.name} {run.manifest.version} (README protocol)", rows,
                                ["metric", "value"]))
    if run.publish is not None:
        console.print(("published: " if run.publish.published else "not published: ") + run.publish.reason)
    if as_json:
        print_json_line(run.as_dict())
    if run.publish is not None and run.publish.refused:
        raise typer.Exit(REFUSED)


@app.command("train-embeddings")
def train_embeddings_command(
    events: EventsOption = None,
    as_of: AsOfModelOption = "",
    test_days: TestDaysOption = TEST_DAYS,
    factors: Annotated[int | None, typer.Option(
        "--factors", help="ALS factors (default: models.embeddings.AlsConfig's).",
        show_default=False)] = None,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", help="ALS iterations (default: models.embeddings.AlsConfig's).",
        show_default=False)] = None,
    publish: Annotated[bool, typer.Option(
        "--publish/--no-publish", help="Publish the run to ZooKeeper if it passes its gate.")] = True,
    json: JsonOption = False,
) -> None:
    """Train the ALS embeddings + ANN index, evaluate the channel on the README protocol, register it,
    publish it if it passes its gate (recall@200)."""
    # Imported here: faiss and the training code are for this command only, not every `finegrain` start.
    from models.embeddings import AlsConfig
    from models.train_embeddings import train_register_publish

    settings = get_settings()
    events_path = events if events is not None else settings.events_path
    if not events_path.exists():
        raise fail(f"no events at {events_path}: run `finegrain data load` (or pass --events PATH)")
    try:
        # Only what was given overrides AlsConfig, so its defaults stay defined in one place.
        defaults = AlsConfig()
        config = replace(defaults, factors=defaults.factors if factors is None else factors,
                         iterations=defaults.iterations if iterations is None else iterations)
        run = train_register_publish(settings, events_path, config=config,
                                     as_of=parse_as_of(as_of) if as_of else None, test_days=test_days,
                                     publish=publish, say=_say)
    except (FinegrainError, ValueError) as exc:
        raise fail(str(exc)) from None
    _report_run(run, json)
