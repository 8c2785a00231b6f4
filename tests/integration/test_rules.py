"""Rule-based recall on the real data and the real local stack: the index, popularity and features
datasets built by the offline jobs (as-of 2010-11-10), rules stored through the API in MongoDB with
ZooKeeper change notices, atoms cached in Redis, and results checked against the same Redis lists
combined by hand with pandas (and new arrivals against the raw events)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, cast

import falcon
import falcon.testing
import numpy as np
import pandas as pd
import pytest
import redis
from prometheus_client import REGISTRY
from pyspark.sql import SparkSession

from finegrain.codecs import decode
from finegrain.features.item import matrix_rows
from finegrain.schemas import ItemFeatureMatrix, ScoredItemList, UserProfile
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_database, redis_client, zookeeper_client
from finegrain.storage.contract import Dataset, MongoCollections, RedisKeys, ZkPaths
from finegrain.storage.datasets import switch_dataset
from finegrain.storage.lists import current_version, read_list
from serving.app import add_rule_routes, api_app
from serving.config import ServingConfig
from serving.rules.definition import Atom, parse_rule
from serving.rules.engine import NamedRule, RuleEngine, measure_hit_rate
from serving.rules.store import RuleStore
from spark_jobs.content_index import ContentIndexJob
from spark_jobs.features import FeaturesJob
from spark_jobs.popularity import PopularityJob
from spark_jobs.runner import run_jobs
from tests.integration.api_keys import api_key, bearer

pytestmark = pytest.mark.integration

AS_OF = date(2010, 11, 10)
DAY_MS = 86_400_000


@dataclass
class Built:
    events: pd.DataFrame  # the events before the as-of date
    versions: dict[Dataset, str]


@pytest.fixture(scope="module")
def built(settings: Settings, spark: SparkSession, retail_data: Path) -> Built:
    events_path = retail_data / "events.parquet"
    run_jobs([ContentIndexJob(), PopularityJob(), FeaturesJob()], AS_OF, events_path, settings=settings,
             spark=spark)
    client = redis_client(settings)
    versions = {d: cast(str, current_version(client, d)) for d in (Dataset.INDEX, Dataset.POPULARITY,
                                                                    Dataset.FEATURES)}
    events = pd.read_parquet(events_path, columns=["user_id", "item_id", "timestamp", "country"])
    return Built(events[events["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")], versions)


@pytest.fixture(scope="module")
def client(settings: Settings, built: Built) -> redis.Redis:
    return redis_client(settings)


@pytest.fixture(scope="module")
def store(settings: Settings, built: Built) -> Iterator[RuleStore]:
    rules = RuleStore(settings)
    yield rules
    rules.close()


@pytest.fixture(scope="module")
def engine(settings: Settings, built: Built) -> RuleEngine:
    return RuleEngine(settings, ttl_seconds=600)


def rules_client(settings: Settings, store: RuleStore, engine: RuleEngine, config: ServingConfig,
                 token: str) -> falcon.testing.TestClient:
    """The rules API behind the API's own middleware (auth on), sending `token`."""
    app = api_app(settings, config)
    add_rule_routes(app, store, engine, config)
    return falcon.testing.TestClient(app, headers=bearer(token))


@pytest.fixture(scope="module")
def admin_key(settings: Settings) -> str:
    return api_key(settings, "admin", name="rules-tests")


@pytest.fixture(scope="module")
def api(settings: Settings, store: RuleStore, engine: RuleEngine, admin_key: str
        ) -> falcon.testing.TestClient:
    return rules_client(settings, store, engine, ServingConfig(), admin_key)


def profile(client: redis.Redis, built: Built, user_id: str) -> UserProfile:
    data = client.get(RedisKeys.user_profile(built.versions[Dataset.FEATURES], user_id))
    assert data is not None, f"no profile for {user_id}"
    return decode(UserProfile, cast(bytes, data))


def items_of(client: redis.Redis, key: str) -> list[str]:
    found = read_list(client, key)
    return [] if found is None else list(found.item_ids)


def item_frame(client: redis.Redis, built: Built) -> pd.DataFrame:
    """The feature blocks and the global 30-day best-seller scores, read straight from Redis."""
    version = built.versions[Dataset.FEATURES]
    n_blocks = int(cast(bytes, client.get(RedisKeys.item_feature_block_count(version))))
    frames = []
    for block in range(n_blocks):
        data = client.get(RedisKeys.item_feature_block(version, block))
        matrix = decode(ItemFeatureMatrix, cast(bytes, data))
        ids, values = matrix_rows(matrix)
        frames.append(pd.DataFrame(values, index=ids, columns=list(matrix.feature_names)))
    frame = pd.concat(frames)
    top = read_list(client, RedisKeys.popular_items(built.versions[Dataset.POPULARITY], "global", "all@30d"))
    assert top is not None
    frame["global_30d"] = pd.Series(list(top.scores), index=list(top.item_ids)).reindex(frame.index).fillna(0)
    return frame


def test_crud_round_trip_through_the_api(api: falcon.testing.TestClient, settings: Settings,
                                         store: RuleStore) -> None:
    body = {"where": {"all": [{"term": "candle"}, {"price_band_max": 3}]}, "order": "price_asc", "limit": 20,
            "scenes": ["home"], "description": "cheap candles"}
    zk = zookeeper_client(settings)
    try:
        created = api.simulate_put("/v1/rules/cheap-candles", json=body)
        assert created.status_code == 200, created.json
        assert created.json["version"] == 1
        assert created.json["definition"] == {**body, "enabled": True}
        changes_after_first, _ = zk.get(ZkPaths(settings.zookeeper_root).rules())

        replaced = api.simulate_put("/v1/rules/cheap-candles", json={**body, "limit": 30})
        assert replaced.status_code == 200 and replaced.json["version"] == 2
        changes_after_second, _ = zk.get(ZkPaths(settings.zookeeper_root).rules())
    finally:
        zk.stop()
        zk.close()
    assert json.loads(changes_after_second)["changes"] == json.loads(changes_after_first)["changes"] + 1

    document = mongo_database(settings)[MongoCollections.RULES].find_one({"_id": "cheap-candles"})
    assert document is not None
    assert (document["version"], document["definition"]["limit"]) == (2, 30)

    fetched = api.simulate_get("/v1/rules/cheap-candles")
    assert fetched.status_code == 200 and fetched.json["definition"]["limit"] == 30
    listed = api.simulate_get("/v1/rules").json
    assert "cheap-candles" in [r["name"] for r in listed["rules"]]
    assert [r.name for r in store.active("home")] == ["cheap-candles"]
    assert store.active("cart") == []

    assert api.simulate_delete("/v1/rules/cheap-candles").status_code == 204
    missing = api.simulate_get("/v1/rules/cheap-candles")
    assert missing.status_code == 404 and missing.json["error"]["field"] == "name"
    assert api.simulate_delete("/v1/rules/cheap-candles").status_code == 404
    assert mongo_database(settings)[MongoCollections.RULES].find_one({"_id": "cheap-candles"}) is None


def test_another_worker_sees_changes_through_the_zookeeper_watch(api: falcon.testing.TestClient,
                                                                  settings: Settings) -> None:
    other = RuleStore(settings)  # a second worker: its own clients, its own in-memory copy
    try:
        assert other.get("watched") is None
        assert api.simulate_put("/v1/rules/watched", json={"where": {"best_seller": "7d"}}).status_code == 200
        # What the admin API answers is MongoDB's, at once; the copy requests evaluate follows the notice.
        current = other.current("watched")
        assert current is not None and current.version == 1
        deadline = time.monotonic() + 10
        while other.get("watched") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = other.get("watched")
        assert seen is not None and seen.version == 1
        assert api.simulate_delete("/v1/rules/watched").status_code == 204
        assert other.current("watched") is None and "watched" not in {r.name for r in other.current_all()}
        deadline = time.monotonic() + 10
        while other.get("watched") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert other.get("watched") is None
    finally:
        other.close()


USER_RULE = {"where": {"all": [
    {"any": [{"category": "$user.top_category"}, {"term": "candle"}]},
    {"price_band_max": "$user.price_band"},
    {"not": {"country_best_seller": "$user.country"}},
]}, "limit": 50}


def test_a_rule_gives_what_the_redis_lists_give_by_hand(engine: RuleEngine, client: redis.Redis,
                                                        built: Built) -> None:
    user = profile(client, built, "13085")
    index, popularity = built.versions[Dataset.INDEX], built.versions[Dataset.POPULARITY]
    category = user.preferred_categories[0]
    positive = set(items_of(client, RedisKeys.index_postings(index, "category", category))) | set(
        items_of(client, RedisKeys.index_postings(index, "term", "candle")))
    cheap = {item for band in range(user.preferred_price_band + 1)
             for item in items_of(client, RedisKeys.index_postings(index, "price_band", str(band)))}
    local_best = set(items_of(client, RedisKeys.popular_items(popularity, "country", f"{user.country}@30d")))
    matched = (positive & cheap) - local_best
    frame = item_frame(client, built).reindex(sorted(matched)).rename_axis("item_id").reset_index()
    expected = frame.sort_values(["global_30d", "popularity_30d", "item_id"],
                                 ascending=[False, False, True])["item_id"].tolist()[:50]
    assert len(matched) > 50 and len(local_best) > 0  # the cut and the `not` both matter here

    result = engine.evaluate("by-hand", parse_rule(USER_RULE), user)
    assert result.matched == len(matched)
    assert result.item_ids == expected
    assert result.scores[0] == 1.0 and all(np.diff(result.scores) < 0)


def test_new_arrivals_in_recency_order_match_the_raw_events(engine: RuleEngine, built: Built) -> None:
    first_seen = built.events.groupby("item_id")["timestamp"].min()
    cutoff = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(days=30)
    new = first_seen[first_seen >= cutoff]
    result = engine.evaluate("new", parse_rule({"where": {"new_arrival_days": 30}, "order": "recency",
                                                "limit": 1000}), None)
    assert set(result.item_ids) == set(new.index)
    assert 0 < len(new) < 1000
    assert result.item_ids[0] in set(new[new == new.max()].index)
    assert new.reindex(result.item_ids).is_monotonic_decreasing  # newest first all the way down


def test_second_evaluation_is_all_hits_with_a_ttl(engine: RuleEngine, client: redis.Redis,
                                                  built: Built) -> None:
    rule = parse_rule({"where": {"all": [{"best_seller": "90d"}, {"price_below": 4.25},
                                         {"not": {"term": "christmas"}}]}, "order": "price_desc"})
    first = engine.evaluate("fresh", rule, None)
    assert [a.cache for a in first.atoms] == ["miss", "miss", "miss"]
    hits_before = engine.hits
    exported_before = REGISTRY.get_sample_value("finegrain_rule_atom_requests_total", {"result": "hit"}) or 0
    second = engine.evaluate("fresh", rule, None)
    assert [a.cache for a in second.atoms] == ["hit", "hit", "hit"]
    assert engine.hits == hits_before + 3
    assert REGISTRY.get_sample_value("finegrain_rule_atom_requests_total", {"result": "hit"}) == \
        exported_before + 3
    assert second.item_ids == first.item_ids and len(first.item_ids) > 0
    for trace in second.atoms:
        assert trace.key is not None
        assert 0 < cast(int, client.ttl(trace.key)) <= 600
        cached = decode(ScoredItemList, cast(bytes, client.get(trace.key)))
        assert cached.key.startswith('{"kind":') and cached.version == trace.version


def test_users_of_one_country_share_the_country_atom(engine: RuleEngine, client: redis.Redis,
                                                     built: Built) -> None:
    french = sorted(built.events.loc[built.events["country"] == "France", "user_id"].unique())
    users = [p for p in (profile(client, built, u) for u in french) if p.country == "France"][:2]
    assert len(users) == 2
    rule = parse_rule({"where": {"country_best_seller": "$user.country"}})
    atom = Atom("country_best_seller", "France")
    client.unlink(RedisKeys.rule_atom(built.versions[Dataset.POPULARITY], atom.digest()))
    first = engine.evaluate("country", rule, users[0])
    second = engine.evaluate("country", rule, users[1])
    assert [a.cache for a in first.atoms] == ["miss"] and [a.cache for a in second.atoms] == ["hit"]
    assert first.atoms[0].key == second.atoms[0].key
    assert first.item_ids == second.item_ids
    expected = items_of(client, RedisKeys.popular_items(built.versions[Dataset.POPULARITY], "country",
                                                        "France@30d"))
    assert set(first.item_ids) == set(expected) and len(expected) > 0


def test_a_new_index_version_gets_new_keys(settings: Settings, engine: RuleEngine, client: redis.Redis,
                                           built: Built) -> None:
    rule = parse_rule({"where": {"term": "heart"}, "limit": 1000})
    before = engine.evaluate("heart", rule, None)
    old = built.versions[Dataset.INDEX]
    new = f"{old}-copy"
    # A rebuilt index with different content: the same keys with the "heart" list cut to its first 5.
    pipe = client.pipeline(transaction=False)
    prefix = RedisKeys.versioned_prefix(Dataset.INDEX, old)
    for key in client.scan_iter(match=prefix + "*", count=5000):
        pipe.copy(key, RedisKeys.versioned_prefix(Dataset.INDEX, new) + key.decode()[len(prefix):])
    pipe.execute()
    heart = read_list(client, RedisKeys.index_postings(new, "term", "heart"))
    assert heart is not None
    client.set(RedisKeys.index_postings(new, "term", "heart"), ScoredItemList(
        key=heart.key, version=new, item_ids=heart.item_ids[:5], scores=heart.scores[:5]).SerializeToString())
    switch_dataset(settings, Dataset.INDEX, new)
    try:
        after = engine.evaluate("heart", rule, None)
        assert after.atoms[0].cache == "miss" and after.atoms[0].version == new
        assert after.atoms[0].key != before.atoms[0].key
        assert len(before.item_ids) > 5 and set(after.item_ids) == set(heart.item_ids[:5])
    finally:
        switch_dataset(settings, Dataset.INDEX, old)
    assert engine.evaluate("heart", rule, None).item_ids == before.item_ids


@pytest.mark.parametrize(("body", "field"), [
    ({"where": {"all": [{"category": "mug"}, {"term": "candel"}]}}, "where.all[1].term"),
    ({"where": {"category": "cnadle"}}, "where.category"),
    ({"where": {"category_best_seller": "gadget"}}, "where.category_best_seller"),
    ({"where": {"country_best_seller": "Frnace"}}, "where.country_best_seller"),
    ({"where": {"not": {"term": "candle"}}}, "where.not"),
    ({"where": {"all": [{"term": "candle"}, {"price_band": 42}]}}, "where.all[1].price_band"),
    ({"where": {"term": "candle"}, "limit": 0}, "limit"),
    # 33 atoms, one more than a rule may hold (MAX_ATOMS): the 33rd is named.
    ({"where": {"any": [{"any": [{"term": "candle"}] * 16}, {"any": [{"term": "candle"}] * 17}]}},
     "where.any[1].any[16].term"),
])
def test_bad_rules_are_refused_naming_the_field(api: falcon.testing.TestClient, body: dict[str, Any],
                                                field: str) -> None:
    assert api.simulate_put("/v1/rules/kept", json={"where": {"term": "candle"}}).status_code == 200
    response = api.simulate_put("/v1/rules/kept", json=body)
    assert response.status_code == 400
    assert response.json["error"]["field"] == field, response.json
    kept = api.simulate_get("/v1/rules/kept").json
    assert kept["definition"]["where"] == {"term": "candle"}  # the refused PUT changed nothing


def test_malformed_requests_are_refused(api: falcon.testing.TestClient) -> None:
    bad_json = api.simulate_put("/v1/rules/x", body="{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json["error"]["field"] == "body"
    bad_name = api.simulate_put("/v1/rules/Not%20OK", json={"where": {"term": "candle"}})
    assert bad_name.status_code == 400 and bad_name.json["error"]["field"] == "name"
    assert api.simulate_put("/v1/rules/prev", json={"where": {"term": "candle"}}).status_code == 200
    bad_user = api.simulate_get("/v1/rules/prev/preview", params={"user_id": "a b"})
    assert bad_user.status_code == 400 and bad_user.json["error"]["field"] == "user_id"
    assert api.simulate_get("/v1/rules/nope/preview").status_code == 404


def test_a_rule_body_over_the_limit_is_a_413_naming_it(api: falcon.testing.TestClient) -> None:
    limit = ServingConfig().rule_max_body_bytes
    body = {"where": {"term": "candle"}, "description": "x" * limit}
    response = api.simulate_put("/v1/rules/huge", json=body)
    assert response.status_code == 413, response.text
    error = response.json["error"]
    assert (error["code"], error["field"]) == ("body_too_large", "body")
    assert f"{limit:,} bytes" in error["message"]
    assert api.simulate_get("/v1/rules/huge").status_code == 404


def test_a_scene_takes_at_most_rules_per_scene_enabled_rules(settings: Settings, store: RuleStore,
                                                             engine: RuleEngine, admin_key: str) -> None:
    scene = "limit-scene"
    # Rules of the other tests that name no scene serve this one too: the limit counts them.
    config = ServingConfig(rules_per_scene=len(store.active(scene)) + 2)
    api = rules_client(settings, store, engine, config, admin_key)
    rule = {"where": {"best_seller": "7d"}, "scenes": [scene]}
    names = ["limit-a", "limit-b", "limit-c"]
    try:
        assert api.simulate_put(f"/v1/rules/{names[0]}", json=rule).status_code == 200
        assert api.simulate_put(f"/v1/rules/{names[1]}", json=rule).status_code == 200
        refused = api.simulate_put(f"/v1/rules/{names[2]}", json=rule)
        assert refused.status_code == 409, refused.text
        error = refused.json["error"]
        assert (error["code"], error["field"]) == ("limit_reached", "scenes") and scene in error["message"]
        assert api.simulate_get(f"/v1/rules/{names[2]}").status_code == 404
        # Replacing one of the scene's rules, or adding a disabled one, adds nothing to evaluate.
        assert api.simulate_put(f"/v1/rules/{names[1]}", json={**rule, "limit": 5}).status_code == 200
        assert api.simulate_put(f"/v1/rules/{names[2]}", json={**rule, "enabled": False}).status_code == 200
    finally:
        for name in names:
            api.simulate_delete(f"/v1/rules/{name}")


def test_rules_need_the_admin_scope(api: falcon.testing.TestClient, settings: Settings) -> None:
    writer = bearer(api_key(settings, "events", "recommend", name="rules-not-admin"))
    for method, path in (("GET", "/v1/rules"), ("PUT", "/v1/rules/sneaky"), ("DELETE", "/v1/rules/kept"),
                         ("GET", "/v1/rules/kept/preview")):
        response = api.simulate_request(method, path, headers=writer, json={"where": {"term": "candle"}})
        assert response.status_code == 403, (method, path, response.text)
        assert response.json["error"]["code"] == "insufficient_scope"
    assert api.simulate_get("/v1/rules/sneaky").status_code == 404


def test_preview_shows_items_and_cache_per_atom(api: falcon.testing.TestClient, engine: RuleEngine,
                                                client: redis.Redis, built: Built) -> None:
    assert api.simulate_put("/v1/rules/for-you", json=USER_RULE).status_code == 200
    known = api.simulate_get("/v1/rules/for-you/preview", params={"user_id": "13085"}).json
    user = profile(client, built, "13085")
    assert known["known_user"] and known["resolved"]["$user.country"] == user.country
    expected = engine.evaluate("x", parse_rule(USER_RULE), user).item_ids
    assert [i["item_id"] for i in known["items"]] == expected
    assert {a["cache"] for a in known["atoms"]} == {"hit"}  # computed by the by-hand test just before
    assert known["atoms"][0]["path"] == "where.all[0].any[0].category"
    cold = api.simulate_get("/v1/rules/for-you/preview", params={"user_id": "no-such-user"}).json
    assert not cold["known_user"] and cold["items"] == [] and cold["matched"] == 0
    assert {a["cache"] for a in cold["atoms"]} <= {"unresolved", "skipped"}


def test_hit_rate_rises_with_traffic(engine: RuleEngine, client: redis.Redis, built: Built) -> None:
    users = sorted(built.events["user_id"].unique())[:300]
    version = built.versions[Dataset.FEATURES]
    profiles = [None if d is None else decode(UserProfile, d) for d in cast(
        list[bytes | None], client.mget([RedisKeys.user_profile(version, u) for u in users]))]
    rules = [NamedRule("a", parse_rule({"where": {"all": [{"category_best_seller": "$user.top_category"},
                                                          {"price_band_max": "$user.price_band"}]}})),
             NamedRule("b", parse_rule({"where": {"all": [{"country_best_seller": "$user.country"},
                                                          {"not": {"term": "$user.top_term"}}]}}))]
    report = measure_hit_rate(engine, rules, profiles, checkpoints=5)
    assert report.requests == 300 and report.lookups > 0
    rates = [rate for _, rate in report.curve]
    assert rates[-1] > rates[0] and report.hit_rate > 0.6


def _in_forked_worker(store: RuleStore, engine: RuleEngine, queue: Any) -> None:
    named = store.active("home")
    results = engine.evaluate_many(named, None)
    queue.put((os.getpid(), store._pid, [r.name for r in named], [len(r.item_ids) for r in results]))


def test_a_forked_worker_makes_its_own_clients(api: falcon.testing.TestClient, store: RuleStore,
                                               engine: RuleEngine) -> None:
    """What gunicorn does: the parent used the store and engine (sockets, kazoo threads), then forks."""
    reloads = store.reloads
    assert api.simulate_put("/v1/rules/forked", json={"where": {"best_seller": "30d"}, "limit": 7,
                                                      "scenes": ["home"]}).status_code == 200
    # Fork once the parent's watch thread has handled the PUT's notice, as gunicorn forks from a master
    # at rest. A child forked while that thread wrote its log line hung once in a fresh-clone run (not
    # reproduced since): most likely the captured stdout's lock, copied held, waited on by the child.
    deadline = time.monotonic() + 10
    while store.reloads == reloads and time.monotonic() < deadline:
        time.sleep(0.05)
    parent_names = [r.name for r in store.active("home")]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_forked_worker, args=(store, engine, queue), daemon=True)
    child.start()
    try:
        pid, store_pid, names, sizes = queue.get(timeout=30)
        child.join(timeout=30)
    finally:
        # A child that hangs must not outlive the test: multiprocessing joins its children at exit, so
        # one left running kept the whole pytest process from ending after its summary.
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
    assert child.exitcode == 0
    assert pid != os.getpid() and store_pid == pid  # the child reloaded with its own clients
    assert names == parent_names and "forked" in names
    assert sizes[names.index("forked")] == 7
