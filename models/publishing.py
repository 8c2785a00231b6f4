"""Publishing a registered model to serving: its manifest in the znode `{root}/models/{name}`.

Every serving worker keeps a DataWatch on that znode and hot-swaps the model when the bytes change,
so the znode is the truth of what is served; the `published` flag in the registry mirrors it. A
version is published only if it passes its quality gate against the version the znode holds now:

- the gate metric is the candidate's `params["gate_metric"]` (default `ndcg@20`, matched without
  regard to case), higher is better unless `params["gate_direction"]` is `min`;
- the candidate must not be worse than the published version by more than the tolerance (default
  0.01 absolute); a first version passes; a metric missing on either side, or two versions whose
  `params["evaluation"]` name different evaluations, cannot be compared and are refused;
- a pinned model is not replaced (publish and rollback refuse) until it is unpinned;
- the artifact's bytes are checked against the manifest's sha256 before anything is written, so a
  corrupt artifact is never announced to the workers.

`force` skips the gate and the pin (never the checksum). A refused version stays registered with the
reason recorded (`gate` in its registry document). Writes to the znode are compare-and-set on the
znode's version, so two publishers racing cannot silently overwrite each other's decision.

A TensorFlow model is also written into TF Serving's model folder when FINEGRAIN_TF_SERVING_MODEL_DIR
names one (`models.tf_serving.deploy`), before the znode is: publish, rollback and pin alike.

Rollback re-publishes the most recently published version before the current one and marks the
current one withdrawn, so repeated rollbacks walk further back instead of swapping two versions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from finegrain.codecs import decode, encode
from finegrain.schemas import ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import zookeeper_client
from finegrain.storage.contract import ZkPaths
from models.registry import ModelEntry, ModelRegistry, RegistryError, check_name, snapshot_dict
from models.tf_serving import deploy, saved_model_version

DEFAULT_GATE_METRIC = "ndcg@20"
DEFAULT_TOLERANCE = 0.01


class PublishConflictError(RegistryError):
    """Another publisher changed the znode between our read and our write."""


# ---------------------------------------------------------------------------------------------------
# The gate: pure functions of two manifests.


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    metric: str
    candidate: float | None = None
    current: float | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "metric": self.metric,
                "candidate": self.candidate, "current": self.current, "tolerance": self.tolerance}


def gate_metric(manifest: ModelManifest) -> tuple[str, str]:
    """(metric name, "max" or "min") that gates this manifest."""
    metric = manifest.params.get("gate_metric", "").strip() or DEFAULT_GATE_METRIC
    direction = manifest.params.get("gate_direction", "max").strip().lower() or "max"
    if direction not in ("max", "min"):
        raise RegistryError(f"{manifest.name} {manifest.version}: gate_direction must be max or min, "
                            f"not {direction!r}")
    return metric, direction


def metric_value(manifest: ModelManifest, metric: str) -> float | None:
    """The manifest's value of `metric`, matched without regard to case (NDCG@20 == ndcg@20)."""
    wanted = metric.lower()
    for key, value in manifest.metrics.items():
        if key.lower() == wanted:
            return float(value)
    return None


# Versions registered before the evaluation was named by its protocol and window (2026-12-01) were
# named by their split date; each was the README protocol with a 30-day window.
_SPLIT_DATED = re.compile(r"^readme-protocol-\d{4}-\d{2}-\d{2}$")


def evaluation_kind(name: str) -> str:
    """What an `evaluation` param compares as: its protocol and window (older names mapped)."""
    return "readme-protocol-30d" if _SPLIT_DATED.match(name) else name


def evaluate_gate(candidate: ModelManifest, current: ModelManifest | None,
                  tolerance: float = DEFAULT_TOLERANCE) -> GateDecision:
    """Whether `candidate` may replace `current` (the published manifest, None if nothing is)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"the gate tolerance must be a finite number >= 0, not {tolerance}")
    metric, direction = gate_metric(candidate)
    mine = metric_value(candidate, metric)
    label = f"{candidate.name} {candidate.version}"
    if mine is None or not math.isfinite(mine):
        return GateDecision(False, f"{label} has no finite {metric} in its metrics, which its gate needs",
                            metric, mine, None, tolerance)
    if current is None:
        return GateDecision(True, f"first published version of {candidate.name} ({metric} {mine:.4f})",
                            metric, mine, None, tolerance)
    theirs = metric_value(current, metric)
    if theirs is None or not math.isfinite(theirs):
        return GateDecision(False, f"the published version {current.version} has no {metric} to compare "
                            f"{label} with; publish with --force if that is intended", metric, mine,
                            theirs, tolerance)
    ours_eval = evaluation_kind(candidate.params.get("evaluation", ""))
    their_eval = evaluation_kind(current.params.get("evaluation", ""))
    if ours_eval and their_eval and ours_eval != their_eval:
        return GateDecision(False, f"{label} was evaluated on {ours_eval!r} but the published version "
                            f"{current.version} on {their_eval!r}: {metric} values are not comparable",
                            metric, mine, theirs, tolerance)
    # Higher is better for "max": the shortfall is how far below the published value we are.
    shortfall = theirs - mine if direction == "max" else mine - theirs
    comparison = f"{metric} {mine:.4f} vs {theirs:.4f} for the published {current.version}"
    # A hair of slack so that a shortfall of exactly the tolerance passes despite float rounding.
    if shortfall > tolerance + 1e-12:
        side = "lower" if direction == "max" else "higher"
        return GateDecision(False, f"{label} is worse: {comparison} ({side} by {shortfall:.4f}, "
                            f"tolerance {tolerance:g})", metric, mine, theirs, tolerance)
    return GateDecision(True, f"{label} passes: {comparison} (tolerance {tolerance:g})", metric, mine,
                        theirs, tolerance)


# ---------------------------------------------------------------------------------------------------
# Publishing against ZooKeeper and the registry.


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    published: bool  # the znode holds this version after the call
    changed: bool  # the znode was written by this call
    reason: str
    previous: str | None = None  # the version the znode held before
    gate: GateDecision | None = None
    refused: bool = False  # the request was turned down (by the gate or a pin); nothing was written

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "published": self.published,
                "changed": self.changed, "refused": self.refused, "reason": self.reason,
                "previous": self.previous,
                "gate": None if self.gate is None else self.gate.as_dict()}


# What `ModelPublisher.check` found: publish it, leave it (pinned), or refuse it (worse, not comparable).
GATE_PASSED, GATE_HELD, GATE_REFUSED = "passed", "held", "refused"


@dataclass(frozen=True)
class GateCheck:
    """The publication decision for one candidate, made without publishing it (`ModelPublisher.check`):
    what the nightly pipeline's gate task records before its publish task acts on the ones that passed."""

    name: str
    version: str
    verdict: str  # GATE_PASSED (publish it), GATE_HELD (the model is pinned), GATE_REFUSED (turned down)
    reason: str
    published: str | None  # the version serving now
    gate: GateDecision | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "verdict": self.verdict, "reason": self.reason,
                "published": self.published, "gate": None if self.gate is None else self.gate.as_dict()}


@dataclass(frozen=True)
class ModelStatus:
    name: str
    published: ModelManifest | None
    znode_version: int | None  # ZooKeeper's data version of the znode: counts the publications
    modified_at: datetime | None
    pinned: str | None
    entries: list[ModelEntry] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        """The registry's published flag agrees with the znode."""
        flagged = [entry.version for entry in self.entries if entry.published]
        return flagged == ([] if self.published is None else [self.published.version])

    def as_dict(self) -> dict[str, Any]:
        manifest = self.published
        return {
            "name": self.name,
            "published": None if manifest is None else {
                "version": manifest.version, "sha256": manifest.sha256, "framework": manifest.framework,
                "metrics": dict(sorted(manifest.metrics.items())), "features": list(manifest.features),
                "params": dict(sorted(manifest.params.items())), "artifact_uri": manifest.artifact_uri,
                "data_snapshot": snapshot_dict(manifest.data_snapshot),
            },
            "znode_version": self.znode_version,
            "modified_at": None if self.modified_at is None else self.modified_at.isoformat(),
            "pinned": self.pinned,
            "in_sync": self.in_sync,
            "versions": [entry.as_dict() for entry in self.entries],
        }


class ModelPublisher:
    """Publish, roll back, pin and unpin models; `status` reads the znode and the registry."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None,
                 zk: KazooClient | None = None) -> None:
        self.settings = settings
        self.paths = ZkPaths(settings.zookeeper_root)
        self.registry = registry or ModelRegistry(settings)
        self._own_zk = zk is None
        self.zk = zk or zookeeper_client(settings)

    def close(self) -> None:
        if self._own_zk:
            self.zk.stop()
            self.zk.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def published(self, name: str) -> tuple[ModelManifest | None, ZnodeStat | None]:
        """The manifest the znode holds (what the workers serve) and the znode's stat."""
        try:
            data, stat = self.zk.get(self.paths.model(check_name(name)))
        except NoNodeError:
            return None, None
        return (decode(ModelManifest, data) if data else None), stat

    def pinned(self, name: str) -> str | None:
        pins = [entry.version for entry in self.registry.list(name) if entry.pinned]
        return pins[-1] if pins else None

    def check(self, name: str, version: str, *, tolerance: float = DEFAULT_TOLERANCE) -> GateCheck:
        """What `publish` would decide for `version`, with nothing written to ZooKeeper: the same pin,
        checksum and gate checks. The decision is recorded in the version's registry entry (`gate`).
        Raises RegistryError for an unknown version, CorruptArtifactError for a bad checksum."""
        entry = self.registry.get(name, version)
        current, _ = self.published(name)
        previous = None if current is None else current.version
        if previous == version:
            return GateCheck(name, version, GATE_PASSED, f"{name} {version} is already published", previous)
        pinned = self.pinned(name)
        if pinned is not None:
            reason = (f"{name} is pinned to version {pinned}: {version} is not published until it is "
                      f"unpinned (`finegrain models unpin {name}`)")
            self.registry.set_flags(name, version, gate=reason)
            return GateCheck(name, version, GATE_HELD, reason, previous)
        self.registry.fetch_artifact(entry.manifest)
        decision = evaluate_gate(entry.manifest, current, tolerance)
        verdict = GATE_PASSED if decision.passed else GATE_REFUSED
        self.registry.set_flags(name, version, gate=f"{verdict} by the gate: {decision.reason}")
        return GateCheck(name, version, verdict, decision.reason, previous, decision)

    def publish(self, name: str, version: str, *, force: bool = False,
                tolerance: float = DEFAULT_TOLERANCE) -> PublishResult:
        """Publish `version` if it passes its gate (or `force`); a refusal is returned, not raised.
        Raises RegistryError for an unknown version, CorruptArtifactError for a bad checksum."""
        entry = self.registry.get(name, version)
        current, stat = self.published(name)
        previous = None if current is None else current.version
        if current is not None and current.version == version:
            self._mark_published(entry, stamp=False)
            return PublishResult(name, version, True, False, f"{name} {version} is already published",
                                 previous)
        pinned = self.pinned(name)
        if pinned is not None and not force:
            reason = (f"{name} is pinned to version {pinned}: unpin it (`finegrain models unpin {name}`) "
                      "or publish with --force")
            self.registry.set_flags(name, version, gate=reason)
            return PublishResult(name, version, False, False, reason, previous, refused=True)
        data = self.registry.fetch_artifact(entry.manifest)  # raises CorruptArtifactError before any write
        decision = evaluate_gate(entry.manifest, current, tolerance)
        if not decision.passed and not force:
            self.registry.set_flags(name, version, gate=f"refused: {decision.reason}")
            return PublishResult(name, version, False, False, decision.reason, previous, decision,
                                 refused=True)
        self._deploy(entry.manifest, data, current)
        self._write(name, entry.manifest, stat)
        self._mark_published(entry)
        if pinned is not None:
            # An operator forced a version over a pin: the model stays frozen, at the forced version.
            self.registry.clear_flag(name, "pinned", keep=version)
            self.registry.set_flags(name, version, pinned=True)
        note = decision.reason if decision.passed else f"forced past the gate ({decision.reason})"
        self.registry.set_flags(name, version, gate=note)
        return PublishResult(name, version, True, True, note, previous, decision)

    def rollback(self, name: str, *, force: bool = False) -> PublishResult:
        """Re-publish the version published before the current one; the current one is withdrawn."""
        current, stat = self.published(name)
        if current is None:
            raise RegistryError(f"{name} has no published version to roll back")
        pinned = self.pinned(name)
        if pinned is not None and not force:
            reason = f"{name} is pinned to version {pinned}: unpin it first or roll back with --force"
            return PublishResult(name, current.version, True, False, reason, current.version, refused=True)
        earlier = [entry for entry in self.registry.list(name)
                   if entry.published_at is not None and not entry.withdrawn
                   and entry.version != current.version]
        if not earlier:
            raise RegistryError(f"{name} has no earlier published version to roll back to from "
                                f"{current.version}")
        never = datetime.min.replace(tzinfo=UTC)
        target = max(earlier, key=lambda entry: (entry.published_at or never, entry.version))
        self._deploy(target.manifest, self.registry.fetch_artifact(target.manifest), current)
        self._write(name, target.manifest, stat)
        self._mark_published(target)
        self.registry.set_flags(name, current.version, withdrawn=True, gate="withdrawn by a rollback")
        self.registry.set_flags(name, target.version, gate=f"restored by rolling back {current.version}")
        if pinned is not None:
            self.registry.clear_flag(name, "pinned")
        return PublishResult(name, target.version, True, True,
                             f"rolled {name} back from {current.version} to {target.version}",
                             current.version)

    def pin(self, name: str, version: str) -> PublishResult:
        """Publish `version` if it is not the published one (an operator's choice: no gate, but the
        checksum is checked), and keep it there until `unpin`."""
        entry = self.registry.get(name, version)
        current, stat = self.published(name)
        previous = None if current is None else current.version
        changed = previous != version
        if changed:
            self._deploy(entry.manifest, self.registry.fetch_artifact(entry.manifest), current)
            self._write(name, entry.manifest, stat)
            self._mark_published(entry)
        self.registry.clear_flag(name, "pinned", keep=version)
        self.registry.set_flags(name, version, pinned=True)
        reason = f"{name} pinned to {version}" + (f" (published, replacing {previous})" if changed else "")
        return PublishResult(name, version, True, changed, reason, previous)

    def unpin(self, name: str) -> str | None:
        """Release the pin; returns the version that was pinned (None if none was)."""
        pinned = self.pinned(check_name(name))
        self.registry.clear_flag(name, "pinned")
        return pinned

    def status(self, name: str) -> ModelStatus:
        current, stat = self.published(name)
        entries = self.registry.list(name)
        if current is None and not entries:
            raise RegistryError(f"no model named {name} is registered or published")
        modified = None if stat is None else datetime.fromtimestamp(stat.mtime / 1000, UTC)
        return ModelStatus(name, current, None if stat is None else stat.version, modified,
                           self.pinned(name), entries)

    def names(self) -> list[str]:
        """Every model that is registered or has a znode."""
        try:
            published = self.zk.get_children(self.paths.model("x").rsplit("/", 1)[0])
        except NoNodeError:
            published = []
        return sorted(set(self.registry.names()) | set(published))

    def _deploy(self, manifest: ModelManifest, data: bytes, current: ModelManifest | None) -> None:
        """A TensorFlow model into TF Serving's model folder (FINEGRAIN_TF_SERVING_MODEL_DIR, when set)
        before the znode announces it: a worker that loads it finds TF Serving serving that version. The
        version published before stays there for the workers that have not swapped yet."""
        model_dir = self.settings.tf_serving_model_dir
        if model_dir is None or manifest.framework.lower() != "tensorflow":
            return
        keep = None
        if current is not None and current.framework.lower() == "tensorflow":
            try:
                keep = saved_model_version(self.registry.fetch_artifact(current))
            except RegistryError:  # the old version's artifact is gone or bad: nothing to keep
                keep = None
        deploy(model_dir, manifest, data, keep)

    def _write(self, name: str, manifest: ModelManifest, stat: ZnodeStat | None) -> None:
        path = self.paths.model(name)
        data = encode(manifest)
        try:
            if stat is None:
                self.zk.create(path, data, makepath=True)
            else:
                self.zk.set(path, data, version=stat.version)
        except (BadVersionError, NodeExistsError, NoNodeError):
            raise PublishConflictError(
                f"{path} changed while {name} {manifest.version} was being published (another publisher?): "
                "nothing was written; run the command again"
            ) from None

    def _mark_published(self, entry: ModelEntry, *, stamp: bool = True) -> None:
        flags: dict[str, Any] = {"published": True, "withdrawn": False}
        if stamp or entry.published_at is None:
            flags["published_at"] = datetime.now(UTC)
        self.registry.set_flags(entry.name, entry.version, **flags)
        self.registry.clear_flag(entry.name, "published", keep=entry.version)


def publish(settings: Settings, name: str, version: str, *, force: bool = False,
            tolerance: float = DEFAULT_TOLERANCE) -> PublishResult:
    with ModelPublisher(settings) as publisher:
        return publisher.publish(name, version, force=force, tolerance=tolerance)


def rollback(settings: Settings, name: str, *, force: bool = False) -> PublishResult:
    with ModelPublisher(settings) as publisher:
        return publisher.rollback(name, force=force)


def pin(settings: Settings, name: str, version: str) -> PublishResult:
    with ModelPublisher(settings) as publisher:
        return publisher.pin(name, version)


def unpin(settings: Settings, name: str) -> str | None:
    with ModelPublisher(settings) as publisher:
        return publisher.unpin(name)


def status(settings: Settings, name: str) -> ModelStatus:
    with ModelPublisher(settings) as publisher:
        return publisher.status(name)


def run_summary(manifest: ModelManifest, publish: PublishResult | None, seconds: float) -> dict[str, Any]:
    """What a training run (`train_ranker`, `train_embeddings`) reports: the version it registered, its
    figures and the publication decision."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "framework": manifest.framework,
        "sha256": manifest.sha256,
        "metrics": dict(manifest.metrics),
        "publish": None if publish is None else publish.as_dict(),
        "seconds": round(seconds, 1),
    }
