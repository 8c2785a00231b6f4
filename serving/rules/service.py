"""Rule-based recall inside a serving worker: the rule store (MongoDB + ZooKeeper watch) and the engine
on the request path's Redis client and the worker's in-memory dataset versions. The rules API over the
same store and engine is `serving.api.rules`, mounted in `serving.app`."""

from __future__ import annotations

import logging

import numpy as np
import redis

from finegrain.schemas import UserProfile
from finegrain.settings import Settings
from finegrain.storage.contract import Dataset
from serving.config import ServingConfig
from serving.rules.engine import RuleEngine
from serving.rules.store import RuleStore
from serving.state import DataSnapshot
from serving.swap import Runtime

log = logging.getLogger(__name__)


class RuleService:
    def __init__(self, settings: Settings, config: ServingConfig, runtime: Runtime, client: redis.Redis
                 ) -> None:
        self.runtime = runtime
        self.rules_per_scene = config.rules_per_scene
        self.store = RuleStore(settings)
        self.engine = RuleEngine(settings, client=lambda: client, versions=self._versions,
                                 ttl_seconds=config.rule_atom_ttl_s)
        # A new features version means a new item table for ordering rules: load it off the request path.
        runtime.on_swap(self._warm)

    def _versions(self) -> dict[Dataset, str | None]:
        data = self.runtime.data
        return {} if data is None else {Dataset(name): version for name, version in data.versions.items()}

    def _warm(self) -> None:
        if self.runtime.data is None:
            return
        try:
            self.engine.warm(self._versions())
        except Exception as exc:  # Redis away: the first rule request loads it instead
            log.warning("rule engine not warmed up: %s", exc)

    def start(self) -> None:
        try:
            self.store.start()
        except Exception as exc:  # MongoDB or ZooKeeper away: the store keeps retrying, rules come later
            log.warning("rules not loaded at start: %s", exc)
        self._warm()

    def close(self) -> None:
        self.store.close()

    def candidates(self, scene: str, profile: UserProfile | None, data: DataSnapshot, k: int
                   ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """The scene's enabled rules for this user, merged: each item once with its best score and the
        names of the rules that brought it, best first."""
        # The PUT refuses a rule beyond the limit, but two PUTs on two workers at once can both pass:
        # the request path never evaluates more than the limit (the first rules by name).
        rules = self.store.active(scene)[:self.rules_per_scene]
        if not rules:
            return np.empty(0, dtype=object), np.empty(0), []
        versions = {Dataset(name): version for name, version in data.versions.items()}
        best: dict[str, float] = {}
        names: dict[str, list[str]] = {}
        for result in self.engine.evaluate_many(rules, profile, versions, trace=False):
            for item, score in zip(result.item_ids, result.scores, strict=True):
                if score > best.get(item, 0.0):
                    best[item] = score
                names.setdefault(item, []).append(result.name)
        ranked = sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
        ids = np.asarray([item for item, _ in ranked], dtype=object)
        return ids, np.asarray([score for _, score in ranked]), [names[item] for item, _ in ranked]
