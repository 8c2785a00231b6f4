"""Evaluating rules for a user: atoms from the shared Redis cache, then set algebra, order and limit.

For each request: resolve the rules' placeholders from the user's profile; bind every atom to the
current version of the dataset it reads (`fg:rule:{version}:{digest}`: a new version never serves a
stale atom); fetch all atoms of all the rules in one MGET; compute the misses from the datasets (one
pipelined read of their source keys) and SET them with a TTL; combine (`all` = intersection, `any` =
union, `not` = difference); order by the rule's order from the in-memory item table; cut at `limit`.

Scores of a rule's items fall with their rank: `(n - i) / n` for the i-th of n kept items (in (0, 1]),
so every rule's list is on the same scale whatever its order; `RuleResult.items` says why.

Cache statistics: every distinct atom of a request is one lookup (a hit or a miss); atoms a user
cannot resolve (cold users) are not lookups. `hit_rate()` is hits / lookups since the engine started;
the same counts go to `finegrain_rule_atom_requests_total{result="hit"|"miss"}`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis
from prometheus_client import Counter, Histogram

from finegrain.codecs import decode
from finegrain.schemas import ScoredItemList, UserProfile
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset, RedisKeys
from finegrain.storage.lists import scored_list
from serving.rules.atoms import BoundAtom, ItemTable, ItemTables, Versions, bind, compute, source_keys
from serving.rules.definition import AllOf, AnyOf, Atom, Expr, Not, Order, Rule, atoms, resolve

log = logging.getLogger(__name__)

CHANNEL = "rules"
DEFAULT_TTL_SECONDS = 3600
VERSIONED_DATASETS = (Dataset.INDEX, Dataset.POPULARITY, Dataset.FEATURES)

ATOM_REQUESTS = Counter("finegrain_rule_atom_requests", "Atomic sub-query lookups of rule-based recall",
                        ["result"])
ATOM_COMPUTE_SECONDS = Histogram("finegrain_rule_atom_compute_seconds",
                                 "Time to compute and cache the missed atoms of one request",
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))


class PerProcess:
    """A client created on first use in each process: gunicorn forks its workers after import, and a
    socket or thread opened before the fork is not usable in the child."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._pid = -1
        self._value: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value = self._factory()
                    self._pid = os.getpid()
        return self._value


@dataclass(frozen=True)
class NamedRule:
    """A rule with the name its candidates are tagged with (`RuleStore.active` gives these)."""

    name: str
    rule: Rule


@dataclass
class AtomTrace:
    """What one atom of a rule did for one user (the preview shows these)."""

    atom: dict[str, Any]
    path: str
    placeholder: str | None
    # "hit", "miss", "unresolved" (placeholder without a value), "no_dataset" (dataset not loaded),
    # "skipped" (not looked up: an unresolved operand of an `all` already emptied the rule)
    cache: str
    key: str | None = None
    digest: str | None = None
    source: str = ""
    version: str | None = None
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"atom": self.atom, "path": self.path, "placeholder": self.placeholder, "cache": self.cache,
                "key": self.key, "digest": self.digest, "source": self.source, "version": self.version,
                "items": self.size}


@dataclass
class RuleResult:
    """The candidates of one rule for one user: item ids best first, scores falling with the rank."""

    name: str
    item_ids: list[str]
    scores: list[float]
    matched: int  # items matching `where` before the cut at `limit`
    atoms: list[AtomTrace] = field(default_factory=list)

    def to_candidates(self) -> ScoredItemList:
        return ScoredItemList(key=f"rule:{self.name}", channels=[CHANNEL], item_ids=self.item_ids,
                              scores=self.scores)


def redis_versions(client: Callable[[], redis.Redis]) -> Callable[[], dict[Dataset, str | None]]:
    """Current versions from the Redis pointers (one MGET); serving passes its in-memory ones instead."""

    def current() -> dict[Dataset, str | None]:
        values = cast(list[bytes | None], client().mget([RedisKeys.pointer(d) for d in VERSIONED_DATASETS]))
        return {d: None if v is None else bytes(v).decode() for d, v in zip(VERSIONED_DATASETS, values,
                                                                            strict=True)}

    return current


class RuleEngine:
    """Evaluates rules against the shared atom cache. One per worker process; thread-safe."""

    def __init__(self, settings: Settings | None = None, *, client: Callable[[], redis.Redis] | None = None,
                 versions: Callable[[], Versions] | None = None, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 item_tables: ItemTables | None = None) -> None:
        if client is None:
            if settings is None:
                raise ValueError("RuleEngine needs settings or a Redis client factory")
            client = PerProcess(lambda: redis_client(settings))
        if ttl_seconds <= 0:
            raise ValueError(f"the atom TTL must be positive, not {ttl_seconds}")
        self.client = client
        self.versions = versions or redis_versions(client)
        self.ttl_seconds = ttl_seconds
        self.item_tables = item_tables or ItemTables(lambda f, p: ItemTable.load(self.client(), f, p))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def warm(self, versions: Versions | None = None) -> ItemTable:
        """Load the item table of the current versions now (at worker boot or after a version switch)
        instead of on the next request."""
        return self.item_tables.get(versions or self.versions())

    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def profile(self, user_id: str, versions: Versions | None = None) -> UserProfile | None:
        """The user's offline profile (None for an unknown user or when no features are loaded)."""
        version = (versions or self.versions()).get(Dataset.FEATURES)
        if not version:
            return None
        data = cast(bytes | None, self.client().get(RedisKeys.user_profile(version, user_id)))
        return None if data is None else decode(UserProfile, bytes(data))

    def evaluate(self, name: str, rule: Rule, profile: UserProfile | None) -> RuleResult:
        return self.evaluate_many([NamedRule(name, rule)], profile)[0]

    def evaluate_many(self, rules: Sequence[NamedRule], profile: UserProfile | None,
                      versions: Versions | None = None, *, trace: bool = True) -> list[RuleResult]:
        """Every rule for one user, with one MGET for all their atoms and one more round trip on misses."""
        if not rules:
            return []
        versions = dict(versions or self.versions())
        resolved = [resolve(named.rule.where, profile) for named in rules]
        bound: dict[Atom, BoundAtom | None] = {}
        for expr in resolved:
            for atom in atoms(expr):
                if atom not in bound:
                    bound[atom] = bind(atom, versions)
        keyed = {b.key: b for b in bound.values() if b is not None}
        results, cache = self._fetch(list(keyed.values()), versions)
        table = self.item_tables.get(versions)
        out = []
        for named, expr in zip(rules, resolved, strict=True):
            # Per-atom traces are for the preview; the request path skips building them.
            traces = self._traces(named.rule, profile, bound, results, cache) if trace else []
            matched = _evaluate(expr, bound, results)
            ordered = order_items(matched, named.rule.order, table)
            kept = ordered[:named.rule.limit]
            n = len(kept)
            out.append(RuleResult(named.name, kept, [(n - i) / n for i in range(n)], len(matched), traces))
        return out

    def _fetch(self, wanted: list[BoundAtom], versions: Versions
               ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Item ids of each atom (by cache key), and whether each was a hit or a miss."""
        if not wanted:
            return {}, {}
        client = self.client()
        values = cast(list[bytes | None], client.mget([b.key for b in wanted]))
        results: dict[str, list[str]] = {}
        cache: dict[str, str] = {}
        missed = []
        for b, data in zip(wanted, values, strict=True):
            if data is None:
                missed.append(b)
                cache[b.key] = "miss"
            else:
                results[b.key] = list(decode(ScoredItemList, bytes(data)).item_ids)
                cache[b.key] = "hit"
        if missed:
            started = time.perf_counter()
            for b, (ids, _) in self._compute(client, missed, versions).items():
                results[b.key] = ids
            ATOM_COMPUTE_SECONDS.observe(time.perf_counter() - started)
        with self._lock:
            self.hits += len(wanted) - len(missed)
            self.misses += len(missed)
        ATOM_REQUESTS.labels(result="hit").inc(len(wanted) - len(missed))
        ATOM_REQUESTS.labels(result="miss").inc(len(missed))
        return results, cache

    def _compute(self, client: redis.Redis, missed: list[BoundAtom], versions: Versions
                 ) -> dict[BoundAtom, tuple[list[str], list[float]]]:
        keys = sorted({key for b in missed for key in source_keys(b)})
        fetched = dict(zip(keys, cast(list[bytes | None], client.mget(keys)), strict=True)) if keys else {}
        table = None
        if any(b.dataset == Dataset.FEATURES for b in missed):
            table = self.item_tables.get(versions)
        now_ms = int(time.time() * 1000)
        computed = {}
        pipe = client.pipeline(transaction=False)
        for b in missed:
            ids, scores = compute(b, fetched, table)
            computed[b] = (ids, scores)
            value = scored_list(b.canonical, b.version, ids, scores, CHANNEL, now_ms)
            pipe.set(b.key, value, ex=self.ttl_seconds)
        pipe.execute()
        return computed

    @staticmethod
    def _traces(rule: Rule, profile: UserProfile | None, bound: Mapping[Atom, BoundAtom | None],
                results: Mapping[str, list[str]], cache: Mapping[str, str]) -> list[AtomTrace]:
        traces = []
        for written in rule.atoms():
            atom = written.resolve(profile)
            trace = AtomTrace(atom=(atom or written).to_json(), path=written.path,
                              placeholder=written.placeholder, cache="unresolved",
                              source=str(written.spec.dataset))
            if atom is not None and atom not in bound:
                trace.cache = "skipped"  # another operand already emptied the rule for this user
            elif atom is not None:
                b = bound[atom]
                if b is None:
                    trace.cache = "no_dataset"
                else:
                    trace.cache, trace.key, trace.digest = cache.get(b.key, "miss"), b.key, b.digest
                    trace.version, trace.size = b.version, len(results.get(b.key, ()))
            traces.append(trace)
        return traces


def _evaluate(expr: Expr | None, bound: Mapping[Atom, BoundAtom | None],
              results: Mapping[str, list[str]]) -> set[str]:
    if expr is None:
        return set()
    if isinstance(expr, Atom):
        b = bound.get(expr)
        return set(results.get(b.key, ())) if b is not None else set()
    if isinstance(expr, AnyOf):
        union: set[str] = set()
        for item in expr.items:
            union |= _evaluate(item, bound, results)
        return union
    if isinstance(expr, Not):  # only reachable inside an AllOf, which subtracts it
        return _evaluate(expr.item, bound, results)
    assert isinstance(expr, AllOf)
    positives = [item for item in expr.items if not isinstance(item, Not)]
    # Smallest set first keeps the intersection cheap.
    sets = sorted((_evaluate(item, bound, results) for item in positives), key=len)
    matched = set(sets[0]) if sets else set()
    for other in sets[1:]:
        matched &= other
        if not matched:
            return matched
    for item in expr.items:
        if isinstance(item, Not) and matched:
            matched -= _evaluate(item.item, bound, results)
    return matched


def order_items(items: Iterable[str], order: Order, table: ItemTable) -> list[str]:
    """Items in the rule's order; ties by the popularity order, then item id; unknown items last."""
    ids = sorted(items)
    if not ids:
        return []
    rows = np.array([table.row.get(item, -1) for item in ids], dtype=np.int64)
    known = rows >= 0
    safe = np.where(known, rows, 0)
    popularity = np.where(known, table.popularity[safe], -1.0)
    lines = np.where(known, table.lines_30d[safe], -1.0)
    id_rank = np.arange(len(ids))
    keys: list[np.ndarray] = [id_rank, -lines, -popularity]  # np.lexsort: last key is the primary one
    if order == Order.RECENCY:
        keys.append(np.where(known, table.age_days[safe], np.inf))
    elif order == Order.PRICE_ASC:
        keys.append(np.where(known, table.price[safe], np.inf))
    elif order == Order.PRICE_DESC:
        keys.append(np.where(known, -table.price[safe], np.inf))
    keys.append(~known)  # unknown items after every known one, whatever the order
    return [ids[i] for i in np.lexsort(keys)]


@dataclass(frozen=True)
class HitRateReport:
    requests: int
    lookups: int
    hits: int
    hit_rate: float
    curve: list[tuple[int, float]]  # (requests so far, cumulative hit rate), to show it rising

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "lookups": self.lookups, "hits": self.hits,
                "hit_rate": self.hit_rate, "curve": [list(point) for point in self.curve]}


def measure_hit_rate(engine: RuleEngine, rules: Sequence[NamedRule], profiles: Iterable[UserProfile | None],
                     checkpoints: int = 10) -> HitRateReport:
    """Evaluate `rules` once per profile (one request each) and report the atom cache hit rate of those
    requests alone, with its cumulative value at evenly spaced points (the bench's "hit rate after N
    requests from different users")."""
    profiles = list(profiles)
    hits0, misses0 = engine.hits, engine.misses
    step = max(1, len(profiles) // max(1, checkpoints))
    curve = []
    versions = engine.versions()
    for i, profile in enumerate(profiles, start=1):
        engine.evaluate_many(rules, profile, versions)
        if i % step == 0 or i == len(profiles):
            hits, lookups = engine.hits - hits0, engine.hits - hits0 + engine.misses - misses0
            curve.append((i, hits / lookups if lookups else 0.0))
    hits, lookups = engine.hits - hits0, engine.hits - hits0 + engine.misses - misses0
    return HitRateReport(len(profiles), lookups, hits, hits / lookups if lookups else 0.0, curve)
