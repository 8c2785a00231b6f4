"""The content recall channel: candidates for a user from the inverted indexes of what they like.

One pure function, `recommend`, shared by serving (postings from Redis or memory) and the offline
evaluation (postings from Redis of the evaluation namespace): given a `UserProfile` and a postings
getter `(field, value) -> ScoredItemList | None` (the lists of `spark_jobs.content_index`, each ranked
by distinct buyers in the 30 days before the as-of date), it scores

    score(i) = band(i) * [ sum over the user's preferred terms t (rank r = 0, 1, ...) of
                              term_decay ** r * g(position of i in postings(term, t))
                         + category_weight * sum over preferred categories c (rank r) of
                              category_decay ** r * g(position of i in postings(category, c)) ]
    g(p)     = 1 / log2(p + 2)       (p = 0 for a list's best seller)
    band(i)  = 1 + band_boost        if i is in postings(price_band, the user's preferred band), else 1

- Terms and categories come from the profile (`finegrain.features.user`: terms by tf x idf, categories
  by lines, best first); the rank discount lets the user's main interests lead while the others still
  add candidates. An item that matches several of the user's interests adds up their weights.
- Positions, not the lists' raw scores: a posting's 30-day buyer count is 0 for most of the catalogue
  out of season, which would give most of a list nothing; the rank keeps the order and still separates
  the items that sold from the rest.
- Nothing is excluded (not the items the user bought, not items out of catalogue): filtering is the
  merger's job (`finegrain.recall.merge`), so every channel is filtered the same way.
- At most `list_depth` entries of each list are read, which bounds the work per request.

The defaults were chosen on a validation split (train before 2010-10-11, test the 30 days after, the
README's protocol otherwise: 1,135 users), never on the README's test window, one parameter at a time
(postings rebuilt in pandas with the index job's definitions, profiles by `finegrain.features.user`):

Recall@20 / NDCG@20 / Recall@200 of the channel alone (Recall@1000 where given):
- first guess (decays 0.8, category weight 0.5, band boost 0.5, list depth 200): 0.148 / 0.218 / 0.317;
- term decay 0.5, 0.7, 0.9, 1.0: Recall@20 0.135, 0.141, 0.152, 0.153; Recall@200 0.289, 0.307,
  0.328, 0.324;
- category weight 0, 0.25, 1, 2: Recall@20 0.146, 0.148, 0.145, 0.135; Recall@200 0.298, 0.315,
  0.314, 0.299;
- band boost 0, 0.25, 1, 2: Recall@20 0.151, 0.150, 0.142, 0.135; Recall@200 0.318, 0.318, 0.317,
  0.315;
- **chosen** (term decay 0.95, category decay 1.0, category weight 0.5, band boost 0.25, list depth
  50): **0.157 / 0.227 / 0.351**, Recall@1000 0.373;
- the same with list depth 30, 75, 200: Recall@200 0.349, 0.345, 0.334; Recall@1000 0.355, 0.380,
  0.381.
Short lists win at depth 200 (the head of many interests beats the tail of a few); the band barely
matters (this shop's users buy across bands) and a strong boost hurts; categories help a little at a
low weight. MostPop on the same split: Recall@20 0.063.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from finegrain.codecs import decode
from finegrain.recall.item_to_item import Candidates
from finegrain.schemas import ScoredItemList, UserProfile
from finegrain.storage.contract import RedisKeys

CHANNEL = "content"
FIELDS = ("term", "category", "price_band")

PostingsGetter = Callable[[str, str], ScoredItemList | None]



@dataclass(frozen=True)
class ContentConfig:
    term_decay: float = 0.95
    category_decay: float = 1.0
    category_weight: float = 0.5
    band_boost: float = 0.25
    list_depth: int = 50
    max_terms: int = 10
    max_categories: int = 5

    def __post_init__(self) -> None:
        if not (0 < self.term_decay <= 1 and 0 < self.category_decay <= 1):
            raise ValueError(f"bad content config {self}: decays must be in (0, 1]")
        if self.category_weight < 0 or self.band_boost < 0:
            raise ValueError(f"bad content config {self}: weights must be >= 0")
        if self.list_depth < 1 or self.max_terms < 0 or self.max_categories < 0:
            raise ValueError(f"bad content config {self}: list depth >= 1, term and category counts >= 0")


def wanted_postings(profile: UserProfile, config: ContentConfig | None = None) -> list[tuple[str, str]]:
    """The (field, value) lists `recommend` reads for this profile, so a caller can fetch them in one
    round trip (MGET) before scoring."""
    config = config or ContentConfig()
    pairs = [("term", str(t)) for t in list(profile.preferred_terms)[:config.max_terms]]
    pairs += [("category", str(c)) for c in list(profile.preferred_categories)[:config.max_categories]]
    if config.band_boost > 0 and (profile.preferred_terms or profile.preferred_categories):
        pairs.append(("price_band", str(profile.preferred_price_band)))
    return pairs


def _position_gain(n: int) -> np.ndarray:
    return np.asarray(1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0))


def recommend(profile: UserProfile, postings: PostingsGetter, k: int, config: ContentConfig | None = None
              ) -> Candidates:
    """The user's top k content candidates, best first (ties by item id); none for a profile without
    preferred terms or categories (a cold user: the popularity channel covers it)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    config = config or ContentConfig()
    id_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    gains = _position_gain(config.list_depth)

    def add(field: str, values: Sequence[str], decay: float, weight: float) -> None:
        for rank, value in enumerate(values):
            listed = postings(field, str(value))
            if listed is None or not len(listed.item_ids) or weight == 0:
                continue
            ids = np.asarray(listed.item_ids[:config.list_depth], dtype=object)
            id_parts.append(ids)
            score_parts.append(weight * decay ** rank * gains[:len(ids)])

    add("term", list(profile.preferred_terms)[:config.max_terms], config.term_decay, 1.0)
    add("category", list(profile.preferred_categories)[:config.max_categories], config.category_decay,
        config.category_weight)
    if not id_parts:
        return Candidates([], np.empty(0))
    ids = np.concatenate(id_parts).astype(str)
    # np.unique sorts the ids, so an item's index is its id order: the tie-break below.
    items, position = np.unique(ids, return_inverse=True)
    totals = np.bincount(position, weights=np.concatenate(score_parts), minlength=len(items))
    if config.band_boost > 0:
        band = postings("price_band", str(profile.preferred_price_band))
        if band is not None and len(band.item_ids):
            in_band = np.isin(items, np.asarray(band.item_ids, dtype=str))
            totals = np.where(in_band, totals * (1.0 + config.band_boost), totals)
    order = np.lexsort((np.arange(len(items)), -totals))[:k]
    return Candidates(items[order].tolist(), totals[order])


class RedisPostings:
    """A postings getter over one index version in Redis, remembering what it read (a version never
    changes once switched to). `prefetch` reads many lists in one MGET."""

    def __init__(self, client: redis.Redis, version: str, batch: int = 1000) -> None:
        self.client = client
        self.version = version
        self.batch = batch
        self.cache: dict[tuple[str, str], ScoredItemList | None] = {}

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        missing = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        for start in range(0, len(missing), self.batch):
            chunk = missing[start:start + self.batch]
            values: list[bytes | None] = self.client.mget(  # type: ignore[assignment]
                [RedisKeys.index_postings(self.version, field, value) for field, value in chunk])
            for pair, value in zip(chunk, values, strict=True):
                self.cache[pair] = None if value is None else decode(ScoredItemList, bytes(value))

    def __call__(self, field: str, value: str) -> ScoredItemList | None:
        if (field, value) not in self.cache:
            self.prefetch([(field, value)])
        return self.cache[(field, value)]
