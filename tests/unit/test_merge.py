"""The recall merger: quotas, dedup across channels, filters, fill order, scores and channel bits."""

from __future__ import annotations

import numpy as np
import pytest

from finegrain.recall.merge import CHANNELS, merge
from finegrain.schemas import ScoredItemList


def lists(*ids: str) -> tuple[np.ndarray, np.ndarray]:
    """A channel list best first, scored n, n-1, ..., 1."""
    return np.array(ids, dtype=object), np.arange(len(ids), 0, -1, dtype=np.float64)


def test_channel_bits_match_the_stored_list_dictionary() -> None:
    assert CHANNELS == ("content", "item_to_item", "embedding", "rule", "realtime", "popular")


def test_quotas_first_then_round_robin_fill() -> None:
    merged = merge({"item_to_item": lists("a", "b", "c", "d"), "popular": lists("p", "q", "r")},
                   {"item_to_item": 2, "popular": 1}, total=6)
    # Quota round 0: a (i2i), p (popular); round 1: b (i2i). Fill round 0: c, q; round 1: d.
    assert merged.item_ids.tolist() == ["a", "p", "b", "c", "q", "d"]


def test_each_channel_contributes_at_most_its_quota_when_the_total_allows_more() -> None:
    merged = merge({"content": lists(*"abcdefgh"), "embedding": lists(*"stuvwxyz")},
                   {"content": 3, "embedding": 2}, total=5)
    assert merged.item_ids.tolist() == ["a", "s", "b", "t", "c"]
    assert merged.recalled_by("content").sum() == 3
    assert merged.recalled_by("embedding").sum() == 2


def test_an_item_several_channels_bring_is_kept_once_with_every_score_and_bit() -> None:
    merged = merge({"item_to_item": (np.array(["x", "y"], dtype=object), np.array([0.9, 0.5])),
                    "popular": (np.array(["y", "z"], dtype=object), np.array([120.0, 80.0])),
                    "embedding": (np.array(["y"], dtype=object), np.array([-0.25]))},
                   {"item_to_item": 2, "popular": 2, "embedding": 1}, total=10)
    assert sorted(merged.item_ids.tolist()) == ["x", "y", "z"]
    y = merged.item_ids.tolist().index("y")
    assert merged.channels_of(y) == ["item_to_item", "embedding", "popular"]
    assert merged.channel_mask[y] == (1 << 1) | (1 << 2) | (1 << 5)
    row = dict(zip(CHANNELS, merged.scores[y].tolist(), strict=True))
    assert row["item_to_item"] == pytest.approx(0.5)
    assert row["popular"] == pytest.approx(120.0)
    # A negative score is still "recalled": the mask, not the score, says so.
    assert row["embedding"] == pytest.approx(-0.25)
    assert row["content"] == 0.0
    x = merged.item_ids.tolist().index("x")
    assert merged.channels_of(x) == ["item_to_item"]
    np.testing.assert_array_equal(merged.channel_scores("popular")[x], 0.0)


def test_filters_apply_before_quotas_so_a_channel_still_fills_its_quota() -> None:
    catalogue = {"a", "b", "c", "d", "p", "q"}
    merged = merge({"item_to_item": lists("a", "gone", "b", "c", "d"), "popular": lists("a", "p", "q")},
                   {"item_to_item": 2, "popular": 2}, total=10, exclude={"a"},
                   known=lambda ids: np.array([i in catalogue for i in ids]))
    assert "a" not in merged.item_ids.tolist() and "gone" not in merged.item_ids.tolist()
    # item_to_item's quota is b, c (a and "gone" dropped first), popular's p, q; d fills.
    assert merged.item_ids.tolist() == ["b", "p", "c", "q", "d"]


def test_when_quotas_exceed_the_total_the_best_positions_survive() -> None:
    merged = merge({"content": lists("a", "b", "c"), "popular": lists("p", "q", "r")},
                   {"content": 3, "popular": 3}, total=4)
    assert merged.item_ids.tolist() == ["a", "p", "b", "q"]


def test_channels_without_a_quota_only_fill() -> None:
    merged = merge({"item_to_item": lists("a", "b"), "popular": lists("p", "q")}, {"item_to_item": 1},
                   total=3)
    assert merged.item_ids.tolist() == ["a", "b", "p"]


def test_a_channel_listing_an_item_twice_keeps_its_first_score() -> None:
    merged = merge({"content": (np.array(["a", "a", "b"], dtype=object), np.array([3.0, 1.0, 2.0]))},
                   {"content": 3})
    assert merged.item_ids.tolist() == ["a", "b"]
    assert merged.channel_scores("content").tolist() == [3.0, 2.0]


def test_empty_inputs_and_everything_filtered() -> None:
    assert len(merge({}, {})) == 0
    assert len(merge({"content": lists("a")}, {"content": 1}, exclude={"a"})) == 0
    assert len(merge({"content": lists("a")}, {"content": 1}, total=0)) == 0
    empty = merge({"content": lists()}, {"content": 5})
    assert empty.scores.shape == (0, len(CHANNELS))


def test_bad_arguments_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown recall channel 'swing'"):
        merge({"swing": lists("a")}, {})
    with pytest.raises(ValueError, match="unknown recall channel 'bogus'"):
        merge({"content": lists("a")}, {"bogus": 1})
    with pytest.raises(ValueError, match="quota of content must be >= 0"):
        merge({"content": lists("a")}, {"content": -1})
    with pytest.raises(ValueError, match="parallel 1-D"):
        merge({"content": (np.array(["a", "b"], dtype=object), np.array([1.0]))}, {})
    with pytest.raises(ValueError, match="known\\(\\) returned shape"):
        merge({"content": lists("a", "b")}, {}, known=lambda ids: np.array([True]))


def test_as_a_multi_channel_scored_list() -> None:
    merged = merge({"item_to_item": lists("a", "b"), "popular": lists("b", "c")},
                   {"item_to_item": 2, "popular": 2})
    stored = merged.to_scored_list("user:42", version="v1")
    assert isinstance(stored, ScoredItemList)
    assert list(stored.channels) == list(CHANNELS)
    assert list(stored.item_ids) == merged.item_ids.tolist()
    assert list(stored.channel_mask) == merged.channel_mask.tolist()
    assert stored.scores[list(stored.item_ids).index("b")] == pytest.approx(2.0)


def random_request(seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    rng = np.random.default_rng(seed)
    catalogue = np.array([f"{i:05d}" for i in range(4000)], dtype=object)
    sizes = {"content": 300, "item_to_item": 400, "embedding": 300, "popular": 200}
    channels = {name: (rng.choice(catalogue, n, replace=False), np.sort(rng.random(n))[::-1])
                for name, n in sizes.items()}
    return channels, {"content": 200, "item_to_item": 400, "embedding": 250, "popular": 150}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_properties_on_random_requests(seed: int) -> None:
    """Against a plain-Python reading of the rules, on a serving-sized request."""
    channels, quotas = random_request(seed)
    excluded = set(channels["item_to_item"][0][:50].tolist())
    merged = merge(channels, quotas, total=1000, exclude=excluded)
    ids = merged.item_ids.tolist()
    assert len(ids) == len(set(ids)) == 1000
    assert not excluded & set(ids)
    for name, (items, scores) in channels.items():
        allowed = [i for i in items.tolist() if i not in excluded]
        # Every channel's quota items are in, and the channel's bit and score are right.
        assert set(allowed[:quotas[name]]) <= set(ids)
        score_of = dict(zip(items.tolist(), scores.tolist(), strict=True))
        recalled = merged.recalled_by(name)
        assert {i for i, r in zip(ids, recalled, strict=True) if r} == set(ids) & set(allowed)
        expected = np.array([score_of.get(i, 0.0) for i in ids], dtype=np.float32)
        np.testing.assert_array_equal(merged.channel_scores(name), expected)


@pytest.mark.parametrize("total", [1, 37, 200, 500, 999])
def test_a_smaller_total_is_the_head_of_a_larger_merge(total: int) -> None:
    """What lets the evaluation read Recall@200/@500 of the merge off one 1,000-candidate merge."""
    channels, quotas = random_request(3)
    full = merge(channels, quotas, total=1000)
    head = merge(channels, quotas, total=total)
    assert head.item_ids.tolist() == full.item_ids[:total].tolist()
    np.testing.assert_array_equal(head.channel_mask, full.channel_mask[:total])
