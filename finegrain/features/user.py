"""User features: the offline `UserProfile` of one user, from that user's purchase lines before an as-of time.

`user_profile` is the single definition; the features job applies it per user inside Spark
(`applyInPandas`), and serving or the training-set builder call it on the lines they hold.

Definitions (all over the lines strictly before the as-of time):
- purchase lines, baskets (distinct invoices), distinct items, total spend (sum of quantity x price);
- average basket value = spend / baskets; average basket size = lines / baskets (distinct products per
  order, the wholesaler's natural basket measure, not units); average item price = mean unit price of
  the lines;
- days since last / first purchase: whole days between that line and the as-of time;
- windows of `USER_WINDOWS_DAYS` days before the as-of time: baskets, lines, spend;
- country: the most frequent country of the lines (ties: the most recent);
- preferred terms: description terms scored tf x idf, tf = the user's lines on items having the term,
  idf over the item catalogue (`ItemLookup`), best `PREFERRED_TERMS` first (ties by term);
- preferred categories: derived categories by lines, best `PREFERRED_CATEGORIES` first (ties by name);
  the catch-all "other" is left out because preferring it says nothing about taste;
- preferred price band: the band with the most lines (ties: the cheaper band); an item the lookup does
  not know is banded by the line's own price;
- history: one entry per distinct item, times bought = distinct invoices with the item, last bought day
  = days since the Unix epoch, quantity = units; most recently bought first (ties: more often bought,
  then item id).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finegrain.dates import DAY_MS, AsOf, as_of_ms
from finegrain.features.catalog import OTHER_CATEGORY, price_band
from finegrain.features.history import columns_before
from finegrain.schemas import ItemFeatures, PurchaseHistory, UserProfile, WindowStats

USER_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90, 365)
PREFERRED_TERMS = 10
PREFERRED_CATEGORIES = 5
_COLUMNS = ("user_id", "item_id", "invoice", "quantity", "price", "country")


@dataclass(frozen=True)
class ItemLookup:
    """What user features need to know about items: their category, price band and terms, and the
    inverse document frequency of each term over the items."""

    category: Mapping[str, str]
    price_band: Mapping[str, int]
    terms: Mapping[str, tuple[str, ...]]
    idf: Mapping[str, float]

    @classmethod
    def build(cls, item_ids: Sequence[str], categories: Sequence[str], price_bands: Sequence[int],
              terms: Sequence[Iterable[str]]) -> ItemLookup:
        term_sets = [tuple(dict.fromkeys(t)) for t in terms]
        document_frequency = Counter(term for item_terms in term_sets for term in item_terms)
        n = len(item_ids)
        # Smoothed idf: a term on every item still weighs 1, so a user with only common terms keeps some.
        idf = {term: math.log((1 + n) / (1 + df)) + 1.0 for term, df in document_frequency.items()}
        return cls(
            category=dict(zip(item_ids, categories, strict=True)),
            price_band={item: int(band) for item, band in zip(item_ids, price_bands, strict=True)},
            terms=dict(zip(item_ids, term_sets, strict=True)),
            idf=idf,
        )

    @classmethod
    def from_attributes(cls, attributes: pd.DataFrame) -> ItemLookup:
        """From a frame with item_id, category, price_band, terms (`spark_jobs.item_attributes`)."""
        return cls.build(list(attributes["item_id"]), list(attributes["category"]),
                         [int(b) for b in attributes["price_band"]], [list(t) for t in attributes["terms"]])

    @classmethod
    def from_items(cls, items: Iterable[ItemFeatures]) -> ItemLookup:
        """From stored `ItemFeatures` (what serving reads)."""
        listed = list(items)
        return cls.build([i.item_id for i in listed], [i.category for i in listed],
                         [i.price_band for i in listed], [list(i.terms) for i in listed])


def user_profile(lines: pd.DataFrame, as_of: AsOf, items: ItemLookup, *, user_id: str | None = None,
                 version: str = "") -> UserProfile:
    """The profile of the one user whose purchase lines these are (columns of `LINE_COLUMNS`).

    Lines at or after the as-of time are ignored. A user with no line before it gets an empty profile
    (zero counts, empty windows), which is what a cold user looks like to the ranker."""
    cutoff = as_of_ms(as_of)
    columns, timestamps = columns_before(lines, cutoff, _COLUMNS)
    if user_id is None:
        user_id = str(columns["user_id"][0]) if len(timestamps) and "user_id" in columns else ""
    return _profile(user_id, columns, timestamps, cutoff, items, version)


def user_profiles(lines: pd.DataFrame, as_of: AsOf, items: ItemLookup, *, version: str = ""
                  ) -> Iterator[UserProfile]:
    """`user_profile` of every user with a line before the as-of time, in order of user id.

    The columns are read and cut off once for the whole frame and split by user, then each user goes
    through the same definition as `user_profile`; a pandas sub-frame per user would cost more than
    the features of most users."""
    cutoff = as_of_ms(as_of)
    columns, timestamps = columns_before(lines, cutoff, _COLUMNS)
    user_codes, users = pd.factorize(columns["user_id"], sort=True)
    order = np.argsort(user_codes, kind="stable")
    bounds = np.searchsorted(user_codes[order], np.arange(len(users) + 1))
    for code, user_id in enumerate(users):
        rows = order[bounds[code]:bounds[code + 1]]
        yield _profile(str(user_id), {name: values[rows] for name, values in columns.items()},
                       timestamps[rows], cutoff, items, version)


def _profile(user_id: str, columns: Mapping[str, np.ndarray], timestamps: np.ndarray, cutoff: int,
             items: ItemLookup, version: str) -> UserProfile:
    profile = UserProfile(user_id=user_id, as_of_ms=cutoff, version=version)
    if len(timestamps) == 0:
        profile.windows.extend(WindowStats(days=days) for days in USER_WINDOWS_DAYS)
        return profile

    quantity = columns["quantity"].astype(np.float64)
    price = columns["price"].astype(np.float64)
    spend = quantity * price
    item_codes, item_ids = pd.factorize(columns["item_id"])
    invoice_codes, invoices = pd.factorize(columns["invoice"])
    n_lines, n_baskets = len(timestamps), len(invoices)
    total_spend = float(spend.sum())

    profile.purchase_lines = n_lines
    profile.baskets = n_baskets
    profile.distinct_items = len(item_ids)
    profile.total_spend = total_spend
    profile.avg_basket_value = total_spend / n_baskets
    profile.avg_basket_size = n_lines / n_baskets
    profile.avg_item_price = float(price.mean())
    profile.days_since_last_purchase = (cutoff - int(timestamps.max())) // DAY_MS
    profile.days_since_first_purchase = (cutoff - int(timestamps.min())) // DAY_MS
    for days in USER_WINDOWS_DAYS:
        recent = timestamps >= cutoff - days * DAY_MS
        profile.windows.append(WindowStats(
            days=days, baskets=int(np.unique(invoice_codes[recent]).size), lines=int(recent.sum()),
            spend=float(spend[recent].sum()),
        ))
    if "country" in columns:
        profile.country = _most_frequent_country(columns["country"], timestamps)

    lines_per_item = np.bincount(item_codes, minlength=len(item_ids))
    item_list = [str(item) for item in item_ids]
    profile.preferred_terms.extend(_preferred_terms(item_list, lines_per_item, items))
    profile.preferred_categories.extend(_preferred_categories(item_list, lines_per_item, items))
    profile.preferred_price_band = _preferred_price_band(item_list, item_codes, price, items)
    profile.history.CopyFrom(_history(item_list, item_codes, invoice_codes, n_baskets, timestamps, quantity))
    return profile


def _most_frequent_country(countries: np.ndarray, timestamps: np.ndarray) -> str:
    codes, names = pd.factorize(countries)  # missing countries get code -1
    known = codes >= 0
    if not known.any():
        return ""
    counts = np.bincount(codes[known], minlength=len(names))
    latest = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, codes[known], timestamps[known])
    return str(names[np.lexsort((-latest, -counts))[0]])


def _preferred_terms(item_ids: list[str], lines_per_item: np.ndarray, items: ItemLookup) -> list[str]:
    frequency: defaultdict[str, int] = defaultdict(int)
    for item, count in zip(item_ids, lines_per_item.tolist(), strict=True):
        for term in items.terms.get(item, ()):
            frequency[term] += count
    idf = items.idf
    scored = ((-tf * idf.get(term, 1.0), term) for term, tf in frequency.items())
    best = heapq.nsmallest(PREFERRED_TERMS, scored)
    return [term for _, term in best]


def _preferred_categories(item_ids: list[str], lines_per_item: np.ndarray, items: ItemLookup) -> list[str]:
    counts: defaultdict[str, int] = defaultdict(int)
    for item, count in zip(item_ids, lines_per_item.tolist(), strict=True):
        category = items.category.get(item)
        if category and category != OTHER_CATEGORY:
            counts[category] += count
    ranked = sorted(counts.items(), key=lambda entry: (-entry[1], entry[0]))
    return [category for category, _ in ranked[:PREFERRED_CATEGORIES]]


def _preferred_price_band(item_ids: list[str], item_codes: np.ndarray, price: np.ndarray,
                          items: ItemLookup) -> int:
    item_bands = np.array([items.price_band.get(item, -1) for item in item_ids], dtype=np.int64)
    bands = item_bands[item_codes]
    unknown = bands < 0
    if unknown.any():
        bands[unknown] = [price_band(p) for p in price[unknown].tolist()]
    return int(np.argmax(np.bincount(bands)))  # argmax takes the first maximum: the cheaper band


def _history(item_ids: list[str], item_codes: np.ndarray, invoice_codes: np.ndarray, n_invoices: int,
             timestamps: np.ndarray, quantity: np.ndarray) -> PurchaseHistory:
    n_items = len(item_ids)
    last = np.full(n_items, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, item_codes, timestamps)
    item_invoices = np.unique(item_codes.astype(np.int64) * n_invoices + invoice_codes)
    times_bought = np.bincount(item_invoices // n_invoices, minlength=n_items)
    units = np.bincount(item_codes, weights=quantity, minlength=n_items)
    order = np.lexsort((np.array(item_ids, dtype=str), -times_bought, -last))
    return PurchaseHistory(
        item_ids=[item_ids[i] for i in order],
        times_bought=times_bought[order].tolist(),
        last_bought_day=(last[order] // DAY_MS).tolist(),
        quantity=units[order].tolist(),
    )
