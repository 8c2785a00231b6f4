"""The pure parts of the content index and popularity jobs: which terms are indexed, window bounds,
and the directory key."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from finegrain.features.catalog import COLOUR_AND_PATTERN_WORDS
from finegrain.storage.contract import Dataset, RedisKeys
from spark_jobs.content_index import select_terms
from spark_jobs.popularity import WINDOWS, window_start


def test_colour_words_are_left_out_even_when_rare() -> None:
    selection = select_terms({"pink": 3, "retrospot": 2, "candle": 3}, n_items=100)
    assert selection.kept == {"candle"}
    assert selection.colour_words == {"pink", "retrospot"}
    assert {"pink", "retrospot"} <= COLOUR_AND_PATTERN_WORDS


def test_terms_on_too_many_items_are_dropped_at_the_share_not_before() -> None:
    # 10 items of 100 is exactly the 10% cap: still kept; 11 is above it.
    selection = select_terms({"glass": 10, "holder": 11, "mug": 2}, n_items=100, max_share=0.10)
    assert selection.kept == {"glass", "mug"}
    assert selection.too_common == {"holder"}


def test_terms_on_a_single_item_are_dropped() -> None:
    selection = select_terms({"braclet": 1, "bracelet": 79}, n_items=4006)
    assert selection.kept == {"bracelet"}
    assert selection.single_item == {"braclet"}


def test_every_term_lands_in_exactly_one_group() -> None:
    frequencies = {"pink": 400, "glass": 204, "heart": 900, "afghan": 1, "lights": 52, "blue": 1}
    selection = select_terms(frequencies, n_items=4006)
    groups = [selection.kept, selection.colour_words, selection.too_common, selection.single_item]
    assert set().union(*groups) == set(frequencies)
    assert sum(len(g) for g in groups) == len(frequencies)
    assert selection.too_common == {"heart"}


def test_no_items_is_an_error() -> None:
    with pytest.raises(ValueError, match="no items"):
        select_terms({"lights": 1}, n_items=0)


def test_windows_end_at_midnight_before_the_as_of_date() -> None:
    as_of = date(2010, 12, 10)
    assert window_start(as_of, "7d") == datetime(2010, 12, 3, tzinfo=UTC)
    assert window_start(as_of, "30d") == datetime(2010, 11, 10, tzinfo=UTC)
    assert window_start(as_of, "90d") == datetime(2010, 9, 11, tzinfo=UTC)
    assert window_start(as_of, "all") is None
    assert list(WINDOWS) == ["7d", "30d", "90d", "all"]


def test_unknown_window_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown window '14d'"):
        window_start(date(2010, 12, 10), "14d")


def test_directory_key_sits_under_the_index_version() -> None:
    assert RedisKeys.index_directory("v1", "term") == "fg:index:v1:directory:term"
    # Under the version prefix, so deleting a version deletes its directory too.
    assert RedisKeys.index_directory("v1", "term").startswith(RedisKeys.versioned_prefix(Dataset.INDEX, "v1"))
