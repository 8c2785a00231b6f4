"""One atom's result, computed from the batch datasets in Redis, and the item table rules order by.

Each atom kind reads one dataset (`ATOM_SPECS[kind].dataset`) at its current version:
- `term`, `category`, `price_band`: the posting list `fg:index:{v}:{field}:{value}` as it is (ranked by
  30-day distinct buyers); `price_band_max`: the union of the posting lists of bands 0..N, merged by the
  same scores;
- `best_seller`, `country_best_seller`, `category_best_seller`: the popularity list
  `fg:popularity:{v}:global:all@{window}`, `country:{name}@30d`, `category:{name}@30d`;
- `new_arrival_days`, `price_below`: the item feature blocks of the features version (first seen, price),
  newest first / most sold in 30 days first.
A list a dataset does not have (a country without sales in 30 days) is an empty result, not an error:
operators catch typos at PUT time through `IndexDirectory`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import redis

from finegrain.codecs import decode
from finegrain.features.item import ITEM_FEATURE_NAMES, matrix_rows
from finegrain.schemas import ItemFeatureMatrix, ScoredItemList
from finegrain.storage.contract import Dataset, RedisKeys
from serving.rules.definition import MAX_PRICE_BAND, Atom, RuleError

POPULARITY_WINDOW = "30d"
GLOBAL_NAME = "all"  # spark_jobs.popularity writes the global lists as `global:all@{window}`
ORDER_LIST_WINDOW = "30d"

Versions = Mapping[Dataset, str | None]
Fetched = Mapping[str, bytes | None]


@dataclass(frozen=True)
class BoundAtom:
    """A literal atom tied to the version of the dataset it reads: what one cache entry holds."""

    atom: Atom
    version: str
    canonical: str
    digest: str
    key: str

    @property
    def dataset(self) -> Dataset:
        return self.atom.spec.dataset


def bind(atom: Atom, versions: Versions) -> BoundAtom | None:
    """The cache identity of a resolved atom, or None if its dataset has no current version."""
    version = versions.get(atom.spec.dataset)
    if not version:
        return None
    canonical = atom.canonical()
    digest = atom.digest()
    return BoundAtom(atom, version, canonical, digest, RedisKeys.rule_atom(version, digest))


def source_keys(bound: BoundAtom) -> list[str]:
    """The dataset keys a miss reads (none for the atoms computed from the item table)."""
    kind, value, version = bound.atom.kind, bound.atom.value, bound.version
    if kind in ("term", "category", "price_band"):
        return [RedisKeys.index_postings(version, kind, str(value))]
    if kind == "price_band_max":
        return [RedisKeys.index_postings(version, "price_band", str(band)) for band in range(int(value) + 1)]
    if kind == "best_seller":
        return [RedisKeys.popular_items(version, "global", f"{GLOBAL_NAME}@{value}")]
    if kind == "country_best_seller":
        return [RedisKeys.popular_items(version, "country", f"{value}@{POPULARITY_WINDOW}")]
    if kind == "category_best_seller":
        return [RedisKeys.popular_items(version, "category", f"{value}@{POPULARITY_WINDOW}")]
    return []


def compute(bound: BoundAtom, fetched: Fetched, items: ItemTable | None) -> tuple[list[str], list[float]]:
    """The atom's items in its natural order with their scores, from the fetched dataset keys."""
    kind, value = bound.atom.kind, bound.atom.value
    keys = source_keys(bound)
    if kind == "price_band_max":
        lists = [_decode(fetched.get(key)) for key in keys]
        return merge_by_score([(list(m.item_ids), list(m.scores)) for m in lists if m is not None])
    if keys:
        found = _decode(fetched.get(keys[0]))
        return ([], []) if found is None else (list(found.item_ids), list(found.scores))
    if items is None:
        return [], []
    if kind == "new_arrival_days":
        days = float(value)
        selected = np.flatnonzero(items.age_days <= days)
        # Newest first; the score is how many days were left in the window, so it falls with age.
        order = selected[np.lexsort((items.rank_by_id[selected], items.age_days[selected]))]
        return [items.item_ids[i] for i in order], [float(days - items.age_days[i]) for i in order]
    if kind == "price_below":
        selected = np.flatnonzero(items.price < float(value))
        order = selected[np.lexsort((items.rank_by_id[selected], -items.lines_30d[selected]))]
        return [items.item_ids[i] for i in order], [float(items.lines_30d[i]) for i in order]
    raise ValueError(f"no computation for atom kind {kind}")


def merge_by_score(lists: Sequence[tuple[Sequence[str], Sequence[float]]]) -> tuple[list[str], list[float]]:
    """Disjoint scored lists as one, highest score first, ties by item id."""
    pairs = sorted(((-score, item) for ids, scores in lists for item, score in zip(ids, scores, strict=True)))
    return [item for _, item in pairs], [-negative for negative, _ in pairs]


def _decode(data: bytes | None) -> ScoredItemList | None:
    return None if data is None else decode(ScoredItemList, bytes(data))


class ItemTable:
    """Per-item numbers rules filter and order by, as arrays (no per-item Python objects per request).

    - `popularity`: the score of the global 30-day best-seller list (distinct buyers in 30 days), 0 for
      items outside its top 1,000; ties are broken by `lines_30d` (purchase lines in 30 days, from the
      item features) and then by item id;
    - `age_days`: days between the first sale and the features' as-of date (recency);
    - `price`: median unit price (GBP).
    Items the features do not know sort last in every order."""

    def __init__(self, item_ids: Sequence[str], price: np.ndarray, age_days: np.ndarray,
                 lines_30d: np.ndarray, popularity: np.ndarray, *, features_version: str = "",
                 popularity_version: str = "") -> None:
        self.item_ids = list(item_ids)
        self.row = {item: i for i, item in enumerate(self.item_ids)}
        self.price = np.asarray(price, dtype=np.float64)
        self.age_days = np.asarray(age_days, dtype=np.float64)
        self.lines_30d = np.asarray(lines_30d, dtype=np.float64)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.rank_by_id = np.argsort(np.argsort(np.array(self.item_ids, dtype=str), kind="stable"))
        self.features_version = features_version
        self.popularity_version = popularity_version

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, client: redis.Redis, features_version: str | None,
             popularity_version: str | None) -> ItemTable:
        """Every item of a features version (its blocks in one MGET) with the global 30-day scores."""
        ids: list[str] = []
        rows: list[np.ndarray] = []
        if features_version:
            count = client.get(RedisKeys.item_feature_block_count(features_version))
            n_blocks = int(bytes(cast(bytes, count))) if count is not None else 0
            keys = [RedisKeys.item_feature_block(features_version, b) for b in range(n_blocks)]
            blocks = cast(list[bytes | None], client.mget(keys)) if keys else []
            for data in blocks:
                if data is None:
                    continue
                matrix_block = decode(ItemFeatureMatrix, bytes(data))
                block_ids, values = matrix_rows(matrix_block)
                names = list(matrix_block.feature_names) or list(ITEM_FEATURE_NAMES)
                ids.extend(block_ids)
                columns = [names.index(n) for n in ("price", "days_since_first_seen", "popularity_30d")]
                rows.append(values[:, columns])
        matrix = np.vstack(rows) if rows else np.zeros((0, 3), dtype=np.float32)
        popularity = np.zeros(len(ids))
        if popularity_version:
            ranked = _decode(cast(bytes | None, client.get(
                RedisKeys.popular_items(popularity_version, "global", f"{GLOBAL_NAME}@{ORDER_LIST_WINDOW}"))))
            if ranked is not None:
                where = {item: i for i, item in enumerate(ids)}
                for item, score in zip(ranked.item_ids, ranked.scores, strict=True):
                    if item in where:
                        popularity[where[item]] = score
        return cls(ids, matrix[:, 0], matrix[:, 1], matrix[:, 2], popularity,
                   features_version=features_version or "", popularity_version=popularity_version or "")


class ItemTables:
    """The item table of the current (features, popularity) versions, loaded once per version pair."""

    def __init__(self, loader: Callable[[str | None, str | None], ItemTable]) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._current: ItemTable | None = None

    def get(self, versions: Versions) -> ItemTable:
        features, popularity = versions.get(Dataset.FEATURES), versions.get(Dataset.POPULARITY)
        table = self._current
        if table is not None and (table.features_version, table.popularity_version) == (
                features or "", popularity or ""):
            return table
        with self._lock:
            table = self._current
            if table is None or (table.features_version, table.popularity_version) != (
                    features or "", popularity or ""):
                table = self._loader(features, popularity)
                self._current = table
            return table


class IndexDirectory:
    """Checks a rule's literal values against the current datasets, so a typo is refused at PUT time.

    Terms, categories and price bands must be in the index directory (`fg:index:{v}:directory:{field}`),
    a category best-seller's category in the category directory too, and a country must have an
    all-time best-seller list. With no current version of a dataset its values go unchecked (reported
    back as a warning)."""

    def __init__(self, client_factory: Callable[[], redis.Redis],
                 versions: Callable[[], Versions]) -> None:
        self._client = client_factory
        self._versions = versions
        self._directories: dict[tuple[str, str], frozenset[str]] = {}

    def values(self, version: str, field: str) -> frozenset[str]:
        cached = self._directories.get((version, field))
        if cached is None:
            found = _decode(cast(bytes | None, self._client().get(RedisKeys.index_directory(version, field))))
            cached = frozenset(found.item_ids) if found is not None else frozenset()
            if len(self._directories) > 16:
                self._directories.clear()
            self._directories[(version, field)] = cached
        return cached

    def check(self, rule_atoms: Sequence[Atom]) -> list[str]:
        """Raise RuleError at the first unknown value; returns warnings about values left unchecked."""
        versions = self._versions()
        warnings: list[str] = []
        index, popularity = versions.get(Dataset.INDEX), versions.get(Dataset.POPULARITY)
        for atom in rule_atoms:
            if atom.placeholder is not None:
                continue
            kind, value = atom.kind, atom.value
            if kind in ("term", "category", "price_band", "category_best_seller"):
                field = "category" if kind == "category_best_seller" else kind
                if not index:
                    warnings.append(f"{atom.path}: no index loaded, {value!r} not checked")
                    continue
                known = self.values(index, field)
                if str(value) not in known:
                    raise RuleError(atom.path, f"{field} {value!r} is not in the current index ({index}); "
                                               f"{_suggest(str(value), known)}")
            elif kind == "price_band_max" and int(value) > MAX_PRICE_BAND:
                raise RuleError(atom.path, f"price bands go up to {MAX_PRICE_BAND}")
            elif kind == "country_best_seller":
                if not popularity:
                    warnings.append(f"{atom.path}: no popularity lists loaded, {value!r} not checked")
                    continue
                key = RedisKeys.popular_items(popularity, "country", f"{value}@all")
                if not self._client().exists(key):
                    raise RuleError(atom.path, f"no sales recorded for country {value!r} (countries are "
                                               "written as in the data, e.g. 'United Kingdom', 'EIRE')")
        return warnings


def _suggest(value: str, known: frozenset[str]) -> str:
    close = sorted(v for v in known if v.startswith(value[:3]))[:5]
    return f"did you mean one of: {', '.join(close)}?" if close else "check the spelling"
