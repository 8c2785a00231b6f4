"""The rule language of rule-based recall: validation with the JSON path of each mistake, the canonical
form and digest of atoms (the shared cache's identity), placeholder resolution and set semantics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finegrain.schemas import UserProfile
from serving.rules.atoms import merge_by_score
from serving.rules.definition import (
    AllOf,
    AnyOf,
    Atom,
    Not,
    Order,
    RuleError,
    canonical_form,
    check_rule_name,
    digest_of,
    parse_rule,
    resolve,
)
from serving.rules.engine import order_items

WHERE_USER = {"all": [{"category_best_seller": "$user.top_category"}, {"price_band": "$user.price_band"},
                      {"not": {"term": "christmas"}}]}


def refused(body: Any) -> RuleError:
    with pytest.raises(RuleError) as caught:
        parse_rule(body)
    return caught.value


def test_a_valid_rule_gets_defaults_and_round_trips_through_json() -> None:
    rule = parse_rule({"where": WHERE_USER})
    assert (rule.order, rule.limit, rule.scenes, rule.enabled) == (Order.POPULARITY, 200, (), True)
    dumped = rule.model_dump(mode="json")
    assert dumped["where"] == WHERE_USER
    assert parse_rule(json.loads(json.dumps(dumped))) == rule
    assert [a.path for a in rule.atoms()] == ["where.all[0].category_best_seller", "where.all[1].price_band",
                                              "where.all[2].not.term"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"where": {"all": [{"term": "candle"}, {"price_band": 11}]}}, "where.all[1].price_band", "at most 8"),
    ({"where": {"all": [{"term": "candle"}, {"price_band": 2.5}]}}, "where.all[1].price_band", "whole"),
    ({"where": {"all": [{"term": "candle"}, {"price_band": True}]}}, "where.all[1].price_band", "number"),
    ({"where": {"not": {"term": "candle"}}}, "where.not", "whole catalogue"),
    ({"where": {"any": [{"term": "a"}, {"not": {"term": "b"}}]}}, "where.any[1].not", "whole catalogue"),
    ({"where": {"all": [{"not": {"term": "a"}}, {"not": {"term": "b"}}]}}, "where.all", "positive"),
    ({"where": {"all": [{"term": "a"}, {"not": {"not": {"term": "b"}}}]}}, "where.all[1].not.not", "whole"),
    ({"where": {"all": []}}, "where.all", "non-empty"),
    ({"where": {"term": "a", "category": "b"}}, "where", "exactly one key"),
    ({"where": {"colour": "red"}}, "where.colour", "unknown atom"),
    ({"where": {"term": ""}}, "where.term", "non-empty string"),
    ({"where": {"term": "$user.country"}}, "where.term", "does not fit"),
    ({"where": {"term": "$user.shoe_size"}}, "where.term", "unknown placeholder"),
    ({"where": {"best_seller": "14d"}}, "where.best_seller", "7d, 30d, 90d, all"),
    ({"where": {"new_arrival_days": 0}}, "where.new_arrival_days", "at least 1"),
    ({"where": {"price_below": 0}}, "where.price_below", "above 0"),
    ({"where": {"any": [{"term": "a"}, {"all": [{"category": "b"}, {"price_band_max": -1}]}]}},
     "where.any[1].all[1].price_band_max", "at least 0"),
    ({"where": {"term": "a"}, "limit": 1001}, "limit", "1000"),
    ({"where": {"term": "a"}, "order": "random"}, "order", "popularity"),
    ({"where": {"term": "a"}, "scenes": ["home", ""]}, "scenes[1]", "at least 1"),
    ({"where": {"term": "a"}, "colour": "red"}, "colour", "Extra inputs"),
    ({"order": "recency"}, "where", "needs `where`"),
    (["not", "an", "object"], "body", "JSON object"),
])
def test_bad_rules_name_the_json_path(body: Any, field: str | None, words: str) -> None:
    error = refused(body)
    assert error.field == field
    assert words in error.message


def test_deep_or_wide_trees_are_refused() -> None:
    deep: dict[str, Any] = {"term": "a"}
    for _ in range(9):
        deep = {"any": [deep]}
    assert "levels deep" in refused({"where": deep}).message
    assert "at most 32 atoms" in refused(
        {"where": {"any": [{"any": [{"term": f"t{i}-{j}"} for j in range(20)]} for i in range(2)]}}).message


def test_values_are_normalised_so_equal_atoms_share_a_digest() -> None:
    a = parse_rule({"where": {"all": [{"term": " Candle "}, {"price_band": 3.0}]}}).atoms()
    b = parse_rule({"where": {"all": [{"term": "candle"}, {"price_band": 3}]}}).atoms()
    assert [x.canonical() for x in a] == [y.canonical() for y in b]
    assert a[0].canonical() == '{"kind":"term","source":"index","value":"candle"}'


def test_canonical_digest_is_stable_and_independent_of_key_order() -> None:
    one = canonical_form({"kind": "term", "value": "candle", "source": "index"})
    other = canonical_form({"source": "index", "value": "candle", "kind": "term"})
    assert one == other
    # Pinned: a change here would orphan every cached atom and must be deliberate.
    assert digest_of(one) == "167644568282e9d4"
    assert Atom("term", "candle").digest() == digest_of(one)
    # The source dataset is part of the identity: all datasets of one run share a version string.
    assert Atom("category", "candle").digest() != Atom("category_best_seller", "candle").digest()
    assert len({Atom("price_band", b).digest() for b in range(9)}) == 9


def test_a_placeholder_atom_has_no_canonical_form_until_resolved() -> None:
    with pytest.raises(ValueError, match="resolve the placeholder"):
        Atom("country_best_seller", "$user.country").canonical()


def profile(**fields: Any) -> UserProfile:
    return UserProfile(user_id="u1", **fields)


def test_placeholders_resolve_from_the_profile() -> None:
    rule = parse_rule({"where": {"all": [
        {"country_best_seller": "$user.country"}, {"category": "$user.top_category"},
        {"term": "$user.top_term"}, {"price_band_max": "$user.price_band"}]}})
    user = profile(country="France", preferred_categories=["Candle", "mug"], preferred_terms=["heart", "tin"],
                   preferred_price_band=0, purchase_lines=3)
    resolved = resolve(rule.where, user)
    assert resolved == AllOf((Atom("country_best_seller", "France"), Atom("category", "candle"),
                              Atom("term", "heart"), Atom("price_band_max", 0)))
    # Two users with the same values resolve to the same atoms: the cache entries they share.
    twin = profile(country="France", preferred_categories=["candle"], preferred_terms=["heart"],
                   preferred_price_band=0, purchase_lines=40)
    assert resolve(rule.where, twin) == resolved


def test_an_unresolvable_placeholder_empties_its_atom() -> None:
    rule = parse_rule({"where": {"any": [{"country_best_seller": "$user.country"}, {"best_seller": "30d"}]}})
    assert resolve(rule.where, None) == AnyOf((Atom("best_seller", "30d"),))
    # Band 0 is the protobuf default: without purchases it means "unknown", not "cheapest".
    band = parse_rule({"where": {"price_band": "$user.price_band"}})
    assert resolve(band.where, profile(preferred_price_band=0)) is None
    assert resolve(band.where, profile(preferred_price_band=0, purchase_lines=1)) == Atom("price_band", 0)
    # An empty positive operand empties an `all`; an empty `not` removes nothing.
    anded = parse_rule({"where": {"all": [{"best_seller": "7d"},
                                          {"not": {"category": "$user.top_category"}}]}})
    assert resolve(anded.where, None) == AllOf((Atom("best_seller", "7d"),))
    assert resolve(parse_rule({"where": WHERE_USER}).where, profile(country="France")) is None
    assert resolve(anded.where, profile(preferred_categories=["mug"])) == AllOf(
        (Atom("best_seller", "7d"), Not(Atom("category", "mug"))))


def test_rule_names() -> None:
    assert check_rule_name("best-sellers_fr2") == "best-sellers_fr2"
    for bad in ("", "Upper", "-dash", "a" * 65, "sp ace", "dot.ted"):
        with pytest.raises(RuleError) as caught:
            check_rule_name(bad)
        assert caught.value.field == "name"


def test_scenes_and_enabled_decide_where_a_rule_serves() -> None:
    rule = parse_rule({"where": {"term": "a"}, "scenes": ["home"]})
    assert rule.serves("home") and not rule.serves("cart")
    assert parse_rule({"where": {"term": "a"}}).serves("cart")
    assert not parse_rule({"where": {"term": "a"}, "enabled": False}).serves("home")


def test_disjoint_lists_merge_by_score_then_item_id() -> None:
    merged = merge_by_score([(["b", "a"], [5.0, 1.0]), (["d", "c"], [5.0, 3.0])])
    assert merged == (["b", "d", "c", "a"], [5.0, 5.0, 3.0, 1.0])


def test_orders_break_ties_by_popularity_then_id_and_put_unknown_items_last() -> None:
    import numpy as np

    from serving.rules.atoms import ItemTable

    table = ItemTable(["a", "b", "c", "d"], price=np.array([2.0, 1.0, 2.0, 5.0]),
                      age_days=np.array([10.0, 300.0, 10.0, 1.0]), lines_30d=np.array([1.0, 9.0, 1.0, 0.0]),
                      popularity=np.array([3.0, 7.0, 3.0, 0.0]))
    items = ["zz-unknown", "d", "c", "b", "a"]
    assert order_items(items, Order.POPULARITY, table) == ["b", "a", "c", "d", "zz-unknown"]
    assert order_items(items, Order.RECENCY, table) == ["d", "a", "c", "b", "zz-unknown"]
    assert order_items(items, Order.PRICE_ASC, table) == ["b", "a", "c", "d", "zz-unknown"]
    assert order_items(items, Order.PRICE_DESC, table) == ["d", "a", "c", "b", "zz-unknown"]
