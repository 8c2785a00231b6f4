"""One recommendation request, stage by stage: profile -> recall (channels in parallel, each under its
time budget) -> merge and filter -> ranking features -> ranking -> (explain).

Nothing here may fail the request because a dependency is down: a Redis error makes the user cold, a
channel that raises or runs late is dropped, a missing ranker keeps the merge order, and with no data
snapshot at all the worker answers from the best-seller list it saved on disk. Each such answer says
`degraded: true` with the reasons, and the metrics count it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from google.protobuf.message import DecodeError

from finegrain.codecs import decode
from finegrain.features.ranking import RECENT_ITEM_TO_ITEM, ranking_features
from finegrain.recall.merge import MergedCandidates, merge
from finegrain.recall.realtime import realtime_scores
from finegrain.schemas import RealtimeProfile, UserProfile
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import EMPTY_LIST, RankedList
from finegrain.training.candidates import MOST_POPULAR_LIST, CandidateConfig, candidate_context
from serving import metrics
from serving.channels.base import RecallChannel, Recalled, RecallRequest
from serving.channels.item_to_item import RECENT_SCORES, history_scores
from serving.channels.registry import build_channels
from serving.config import ServingConfig
from serving.ranking.base import Ranker
from serving.scenes import RANKER_MODELS, SceneConfig
from serving.state import DataSnapshot, ModelSet

log = logging.getLogger(__name__)

# The rankers were trained on the default candidate context (`spark_jobs/training_set.py`).
CANDIDATES = CandidateConfig()


@dataclass
class Trace:
    """What the request did, for the response's `explain` block and for the metrics."""

    stages_ms: dict[str, float] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    _mark: float = field(default_factory=time.perf_counter)

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        self.stages_ms[name] = round((now - self._mark) * 1000, 3)
        metrics.STAGE_LATENCY.labels(name).observe(now - self._mark)
        self._mark = now

    def degrade(self, reason: str) -> None:
        self.degraded.append(reason)
        metrics.DEGRADED.labels(reason.split(":")[0]).inc()


class Recommender:
    """Per worker: the configured channels, a thread pool to run them, and the request pipeline."""

    def __init__(self, config: ServingConfig, redis_client: redis.Redis,
                 services: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.redis = redis_client
        self.services = dict(services or {})
        self.channels: list[RecallChannel] = build_channels(config.channels)
        pooled = sum(not channel.inline for channel in self.channels)
        # Room for every request thread of a gthread worker to have its I/O channels in flight.
        self.pool = ThreadPoolExecutor(max_workers=max(pooled, 1) * 8, thread_name_prefix="recall")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def scene(self, name: str | None) -> tuple[str, SceneConfig]:
        scene = name or self.config.default_scene
        return scene, self.config.scenes[scene]

    # -- stages ---------------------------------------------------------------------------------

    def _profiles(self, data: DataSnapshot, user_id: str, trace: Trace
                  ) -> tuple[UserProfile | None, RealtimeProfile | None]:
        keys = [RedisKeys.user_profile(data.versions[Dataset.FEATURES], user_id),
                RedisKeys.realtime_profile(user_id)]
        try:
            values: list[bytes | None] = self.redis.mget(keys)  # type: ignore[assignment]
        except redis.RedisError as exc:
            trace.degrade(f"redis: {type(exc).__name__}")
            return None, None
        profile = realtime = None
        try:
            profile = decode(UserProfile, bytes(values[0])) if values[0] else None
            realtime = decode(RealtimeProfile, bytes(values[1])) if values[1] else None
        except DecodeError:
            trace.degrade("profile: undecodable value in Redis")
        return profile, realtime

    def _recall(self, request: RecallRequest, trace: Trace) -> dict[str, Recalled]:
        started = time.perf_counter()
        pooled: list[tuple[RecallChannel, Future[tuple[Recalled, float]]]] = [
            (channel, self.pool.submit(self._timed, channel, request, self._depth(channel)))
            for channel in self.channels if not channel.inline]
        results: dict[str, Recalled] = {}
        for channel in self.channels:
            if not channel.inline:
                continue
            try:
                recalled, seconds = self._timed(channel, request, self._depth(channel))
            except Exception as exc:  # a broken channel must not break the request
                self._failed(channel, exc, trace)
                continue
            if seconds > channel.budget_s:
                self._over_budget(channel, trace)
                continue
            self._record(channel, recalled, seconds, results, trace)
        for channel, future in pooled:
            remaining = started + channel.budget_s - time.perf_counter()
            try:
                recalled, seconds = future.result(timeout=max(remaining, 0.0))
            except FutureTimeout:
                future.cancel()
                self._over_budget(channel, trace)
                continue
            except Exception as exc:
                self._failed(channel, exc, trace)
                continue
            self._record(channel, recalled, seconds, results, trace)
        return results

    @staticmethod
    def _record(channel: RecallChannel, recalled: Recalled, seconds: float, results: dict[str, Recalled],
                trace: Trace) -> None:
        results[channel.name] = recalled
        metrics.CHANNEL_LATENCY.labels(channel.name).observe(seconds)
        metrics.CHANNEL_CANDIDATES.labels(channel.name).observe(len(recalled))
        trace.channels[channel.name] = {"candidates": len(recalled), "ms": round(seconds * 1000, 3)}

    @staticmethod
    def _over_budget(channel: RecallChannel, trace: Trace) -> None:
        metrics.CHANNEL_FAILURES.labels(channel.name, "over_budget").inc()
        trace.degrade(f"channel {channel.name}: over its {channel.config.budget_ms:g} ms budget")
        trace.channels[channel.name] = {"candidates": 0, "error": "over budget"}

    @staticmethod
    def _failed(channel: RecallChannel, exc: Exception, trace: Trace) -> None:
        log.warning("channel %s failed: %s", channel.name, exc, exc_info=True)
        metrics.CHANNEL_FAILURES.labels(channel.name, type(exc).__name__).inc()
        trace.degrade(f"channel {channel.name}: {type(exc).__name__}")
        trace.channels[channel.name] = {"candidates": 0, "error": type(exc).__name__}

    def _depth(self, channel: RecallChannel) -> int:
        # Beyond the quota, so the merge's fill phase has leftovers when channels overlap.
        return self.config.candidates if channel.filler else channel.quota + channel.quota // 2

    @staticmethod
    def _timed(channel: RecallChannel, request: RecallRequest, k: int) -> tuple[Recalled, float]:
        started = time.perf_counter()
        recalled = channel.recall(request, k)
        return recalled, time.perf_counter() - started

    def _features(self, profile: UserProfile, realtime: RealtimeProfile | None, data: DataSnapshot,
                  merged: MergedCandidates, recalled: Mapping[str, Recalled]) -> np.ndarray:
        """The rankers' features of the merged candidates, with the candidate context training reads
        (`finegrain.training.candidates`): the same lists at the same depths."""
        i2i = recalled.get("item_to_item")
        item_to_item = RankedList(i2i.item_ids, i2i.scores) if i2i is not None else EMPTY_LIST
        cosine = data.neighbours["cosine"]
        shared = i2i.extra.get(RECENT_SCORES) if i2i is not None else None
        recent = shared if shared is not None else history_scores(
            profile.history, cosine, data.today, RECENT_ITEM_TO_ITEM, repeat=False)
        context = candidate_context(merged.item_ids, item_to_item, data.popular_list(MOST_POPULAR_LIST),
                                    recent, realtime_scores(realtime, cosine), cosine, CANDIDATES)
        return ranking_features(profile, merged.item_ids, context.recall, data.items,
                                candidate_count=context.candidate_count, realtime=realtime)

    def _rank(self, scene: SceneConfig, models: ModelSet, profile: UserProfile | None,
              realtime: RealtimeProfile | None, data: DataSnapshot, merged: MergedCandidates,
              recalled: Mapping[str, Recalled], trace: Trace
              ) -> tuple[Ranker | None, str | None, np.ndarray | None, np.ndarray]:
        """(ranker, its registry name if it ranked, the feature matrix, one score per candidate). Cold
        users, a missing ranker or a failing one keep the merge order (scores falling with position)."""
        name = None if scene.ranker == "none" else RANKER_MODELS[scene.ranker]
        ranker: Ranker | None = models.get(name) if name else None
        if name and ranker is None:
            trace.degrade(f"ranker: {name} not loaded, kept the recall order")
        if profile is not None and ranker is not None and len(merged):
            try:
                features = self._features(profile, realtime, data, merged, recalled)
            except Exception as exc:  # e.g. an inconsistent profile in Redis: rank nothing, keep the order
                log.warning("feature assembly failed for user %s: %s", profile.user_id, exc, exc_info=True)
                trace.degrade(f"features: {type(exc).__name__}, kept the recall order")
                return ranker, None, None, 1.0 / (1.0 + np.arange(len(merged)))
            trace.stage("features")
            try:
                scores = ranker.score(features, merged.item_ids)
                trace.stage("rank")
                return ranker, name, features, scores
            except Exception as exc:  # e.g. TF Serving unreachable: keep the recall order
                log.warning("ranker %s failed: %s", name, exc)
                trace.degrade(f"ranker: {name} failed ({type(exc).__name__})")
        return ranker, None, None, 1.0 / (1.0 + np.arange(len(merged)))

    # -- the request ----------------------------------------------------------------------------

    def recommend(self, data: DataSnapshot | None, models: ModelSet, fallback: RankedList, *, user_id: str,
                  scene: str | None, n: int, explain: bool) -> dict[str, Any]:
        started = time.perf_counter()
        trace = Trace()
        scene_name, scene_config = self.scene(scene)
        response: dict[str, Any] = {"request_id": uuid.uuid4().hex, "user_id": user_id, "scene": scene_name}
        if data is None:
            trace.degrade("snapshot: no dataset loaded")
            items = [{"item_id": str(i), "score": float(s), "channels": ["popular"]}
                     for i, s in zip(fallback.item_ids[:n], fallback.scores[:n], strict=True)]
            return self._finish(response, trace, items, started, explain, cold=True, ranker=None,
                                candidates=len(items), versions={})

        profile, realtime = self._profiles(data, user_id, trace)
        trace.stage("profile")
        if profile is None:
            metrics.COLD_START.inc()
        request = RecallRequest(user_id, scene_name, scene_config, profile, realtime, data, models,
                                self.services)
        recalled = self._recall(request, trace)
        trace.stage("recall")

        exclude: frozenset[str] = frozenset()
        if scene_config.exclude_bought and profile is not None:
            exclude = frozenset(profile.history.item_ids)
        lists = {name: (r.item_ids, r.scores) for name, r in recalled.items()}
        quotas = {channel.name: channel.quota for channel in self.channels}
        merged = merge(lists, quotas, total=self.config.candidates, exclude=exclude, known=data.known)
        if not len(merged) and len(fallback.item_ids):
            trace.degrade("recall: no candidates, served the saved best sellers")
            merged = merge({"popular": (fallback.item_ids, fallback.scores)}, {"popular": n}, total=n,
                           exclude=exclude)
        trace.stage("merge")
        metrics.CANDIDATES.observe(len(merged))

        ranker, ranker_used, features, scores = self._rank(scene_config, models, profile, realtime, data,
                                                           merged, recalled, trace)
        top = np.lexsort((np.arange(len(scores)), -scores))[:n]

        rule_names = self._rule_names(recalled.get("rule"))
        items = []
        for position in top.tolist():
            item_id = str(merged.item_ids[position])
            entry: dict[str, Any] = {"item_id": item_id, "score": round(float(scores[position]), 6),
                                     "channels": merged.channels_of(position)}
            if item_id in rule_names:
                entry["rules"] = rule_names[item_id]
            items.append(entry)
        if explain and features is not None and ranker is not None:
            self._explain(ranker, features[top], items, trace)
        versions = {**data.versions, **models.versions()}
        return self._finish(response, trace, items, started, explain, cold=profile is None,
                            ranker=ranker_used, candidates=len(merged), versions=versions)

    def _explain(self, ranker: Ranker, features: np.ndarray, items: list[dict[str, Any]], trace: Trace
                 ) -> None:
        """Each item's top feature contributions; a failure leaves the items unexplained, flagged (the
        ranking itself is already done and stands)."""
        try:
            explained = ranker.explain(features, self.config.explain_top_features)
        except Exception as exc:  # e.g. XGBoost refuses an infinite feature value that scoring took
            log.warning("explain failed: %s", exc, exc_info=True)
            trace.degrade(f"explain: {type(exc).__name__}, items without explanation")
            return
        for entry, contributions in zip(items, explained, strict=True):
            entry["explanation"] = [{"feature": c.feature, "value": _json_float(c.value),
                                     "contribution": round(c.contribution, 6)} for c in contributions]
        trace.stage("explain")

    @staticmethod
    def _rule_names(recalled: Recalled | None) -> dict[str, list[str]]:
        if recalled is None or "rules" not in recalled.extra:
            return {}
        names = recalled.extra["rules"]
        return {str(i): list(rules) for i, rules in zip(recalled.item_ids, names, strict=False)}

    @staticmethod
    def _finish(response: dict[str, Any], trace: Trace, items: Sequence[dict[str, Any]], started: float,
                explain: bool, *, cold: bool, ranker: str | None, candidates: int,
                versions: Mapping[str, str]) -> dict[str, Any]:
        response.update({"cold_start": cold, "ranker": ranker, "candidates": candidates, "items": list(items),
                         "degraded": bool(trace.degraded), "versions": dict(versions)})
        if trace.degraded:
            response["degraded_reasons"] = trace.degraded
        if explain:
            response["explain"] = {"stages_ms": trace.stages_ms, "channels": trace.channels,
                                   "total_ms": round((time.perf_counter() - started) * 1000, 3)}
        return response


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)
