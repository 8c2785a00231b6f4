"""The content recall channel: scores by the user's preference ranks, list positions and price band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finegrain.recall.content import ContentConfig, recommend, wanted_postings
from finegrain.schemas import ScoredItemList, UserProfile

POSTINGS = {
    ("term", "heart"): ["h1", "h2", "shared"],
    ("term", "lantern"): ["shared", "l1"],
    ("category", "candle holder"): ["c1", "h1"],
    ("price_band", "2"): ["h2", "l1", "c1"],
}


def getter(field: str, value: str) -> ScoredItemList | None:
    ids = POSTINGS.get((field, value))
    # The stored scores (30-day buyers) are deliberately not in position order: positions rank.
    return None if ids is None else ScoredItemList(item_ids=ids, scores=[0.0] * len(ids))


def profile(terms: list[str], categories: list[str], band: int = 2) -> UserProfile:
    return UserProfile(user_id="u", preferred_terms=terms, preferred_categories=categories,
                       preferred_price_band=band)


def gain(position: int) -> float:
    return 1.0 / math.log2(position + 2)


def test_scores_by_hand() -> None:
    config = ContentConfig(term_decay=0.5, category_decay=1.0, category_weight=2.0, band_boost=1.0,
                           list_depth=10)
    got = recommend(profile(["heart", "lantern"], ["candle holder"]), getter, 10, config)
    scores = dict(zip(got.item_ids, got.scores.tolist(), strict=True))
    band = 2.0  # items in the preferred band's postings: h2, l1, c1
    expected = {
        "h1": gain(0) + 2.0 * gain(1),
        "h2": gain(1) * band,
        "shared": gain(2) + 0.5 * gain(0),
        "l1": 0.5 * gain(1) * band,
        "c1": 2.0 * gain(0) * band,
    }
    assert scores == pytest.approx(expected)
    assert got.item_ids == sorted(expected, key=lambda i: (-expected[i], i))


def test_only_the_head_of_each_list_is_read_and_k_cuts() -> None:
    config = ContentConfig(list_depth=1, band_boost=0.0)
    got = recommend(profile(["heart", "lantern"], []), getter, 10, config)
    assert got.item_ids == ["h1", "shared"]
    assert recommend(profile(["heart", "lantern"], []), getter, 1, config).item_ids == ["h1"]


def test_ties_by_item_id_and_nothing_excluded() -> None:
    postings = {("term", "a"): ["z", "y"], ("term", "b"): ["y", "z"]}
    config = ContentConfig(term_decay=1.0, band_boost=0.0)
    got = recommend(profile(["a", "b"], []), lambda f, v: (
        ScoredItemList(item_ids=postings[(f, v)]) if (f, v) in postings else None), 5, config)
    assert got.item_ids == ["y", "z"]
    np.testing.assert_allclose(got.scores, [gain(0) + gain(1)] * 2)


def test_unknown_values_and_cold_users_give_nothing() -> None:
    assert recommend(profile([], []), getter, 10).item_ids == []
    assert recommend(profile(["nosuchterm"], ["nosuchcategory"]), getter, 10).item_ids == []
    # A band alone is not an interest: it only reorders what the terms and categories brought.
    assert recommend(profile([], [], band=2), getter, 10).item_ids == []


def test_wanted_postings_lists_what_recommend_reads() -> None:
    read: list[tuple[str, str]] = []

    def spy(field: str, value: str) -> ScoredItemList | None:
        read.append((field, value))
        return getter(field, value)

    user = profile(["heart", "lantern", "star"], ["candle holder"])
    recommend(user, spy, 10)
    assert set(read) == set(wanted_postings(user))
    assert wanted_postings(user, ContentConfig(max_terms=1, band_boost=0.0)) == [
        ("term", "heart"), ("category", "candle holder")]


def test_bad_config_and_k() -> None:
    with pytest.raises(ValueError, match="decays"):
        ContentConfig(term_decay=0.0)
    with pytest.raises(ValueError, match="weights"):
        ContentConfig(band_boost=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        recommend(profile(["heart"], []), getter, 0)
