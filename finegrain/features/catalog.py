"""Item attributes derived from the catalogue, which has only a description and a price.

- **Category**: the product-type term. Product names here are head-final noun phrases ("WHITE HANGING
  HEART T-LIGHT HOLDER", "PINK CHERRY LIGHTS"), so the last term names what the item is; colours and
  print patterns are skipped because the shop appends them as variants ("... BAG PINK"), and plurals
  are folded ("CANDLES" -> candle). Terms naming fewer than `MIN_CATEGORY_ITEMS` items are too rare
  to group anything and become "other". Chosen over co-purchase clusters because it is readable by
  operators writing rules ("category = candle") and stable across nightly runs.
- **Price band**: fixed GBP edges rather than quantiles, so band 3 means the same prices every night
  and rules written against a band keep their meaning.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

import pandas as pd

from finegrain.features.text import description_terms

MIN_CATEGORY_ITEMS = 5
OTHER_CATEGORY = "other"

PRICE_BAND_EDGES_GBP = (0.5, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0, 20.0)  # band i: [edge i-1, edge i)

COLOUR_AND_PATTERN_WORDS = frozenset(
    """pink blue red green black white cream ivory gold silver purple yellow orange brown grey gray
    natural pastel retrospot paisley spot spots polkadot dot dots stripe stripes striped floral flock
    vintage antique colour colours colored coloured""".split()
)

_IRREGULAR_SINGULARS = {
    "boxes": "box",
    "glasses": "glass",
    "dishes": "dish",
    "brushes": "brush",
    "matches": "match",
    "pieces": "piece",
    "tumblers": "tumbler",
    "knives": "knife",
    "leaves": "leaf",
    "shelves": "shelf",
    "candies": "candy",
    "berries": "berry",
}
_NOT_PLURAL = {
    "glass",
    "dress",
    "grass",
    "cactus",
    "bus",
    "brass",
    "moss",
    "kiss",
    "chess",
    "christmas",
    "lotus",
    "canvas",
    "bonus",
    "hibiscus",
    "octopus",
    "pegasus",
    "circus",
    "its",
    "this",
    "series",
    "news",
}


def singular(term: str) -> str:
    if term in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[term]
    if term in _NOT_PLURAL or term.endswith("ss") or len(term) <= 3:
        return term
    if term.endswith("ies"):
        return term[:-3] + "y"
    if term.endswith("s"):
        return term[:-1]
    return term


def product_type(description: str | None) -> str | None:
    """The head noun of a description (before grouping rare ones into "other")."""
    terms = [t for t in description_terms(description) if t not in COLOUR_AND_PATTERN_WORDS]
    return singular(terms[-1]) if terms else None


def categories(descriptions: Iterable[str | None]) -> list[str]:
    """The category of each description, in order; rare product types become `OTHER_CATEGORY`."""
    types = [product_type(d) for d in descriptions]
    counts = Counter(t for t in types if t)
    return [t if t and counts[t] >= MIN_CATEGORY_ITEMS else OTHER_CATEGORY for t in types]


def price_band(price: float) -> int:
    """0 for the cheapest prices up to len(PRICE_BAND_EDGES_GBP) for the dearest."""
    return bisect.bisect_right(PRICE_BAND_EDGES_GBP, price)


def price_band_label(band: int) -> str:
    low = 0.0 if band == 0 else PRICE_BAND_EDGES_GBP[band - 1]
    return f"£{low:g}+" if band >= len(PRICE_BAND_EDGES_GBP) else f"£{low:g}-{PRICE_BAND_EDGES_GBP[band]:g}"


def item_attributes_frame(items: pd.DataFrame) -> pd.DataFrame:
    """item_id, description, price -> the same plus category, price_band and terms (one row per item).

    Categories need counts over the whole catalogue, so this runs on every item at once."""
    descriptions = items["description"].fillna("").astype(str)
    return pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str).to_numpy(),
            "description": descriptions.to_numpy(),
            "price": items["price"].astype(float).to_numpy(),
            "category": categories(descriptions),
            "price_band": [price_band(p) for p in items["price"]],
            "terms": [description_terms(d) for d in descriptions],
        }
    )


def item_attributes_as_of(history: pd.DataFrame) -> pd.DataFrame:
    """Item attributes as of the end of these purchase lines, the item attributes job's definition
    in pandas: most frequent description (ties: the first in order), median line price, then category /
    band / terms (`item_attributes_frame`)."""
    described = history[history["description"].notna() & (history["description"].astype(str).str.len() > 0)]
    descriptions = (described.groupby(["item_id", "description"]).size().reset_index(name="n")
                    .sort_values(["item_id", "n", "description"], ascending=[True, False, True])
                    .drop_duplicates("item_id"))
    prices = history.groupby("item_id")["price"].median().reset_index()
    merged = prices.merge(descriptions[["item_id", "description"]], on="item_id", how="left")
    return item_attributes_frame(merged)
