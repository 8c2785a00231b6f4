"""The API under gunicorn (2 workers) against the real local stack, on the real data's datasets and a
real (small) XGBoost ranker, with authentication on: recommendations, explanations, similar items,
400s, 401/403/413/429, a revoked key refused by every worker, answers degraded (not failed) when
feature assembly or explain fail on a profile they cannot use, a model swap under concurrent
requests, a corrupt model refused, and degraded answers once Redis is stopped."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pandas as pd
import pytest
import redis
import schemathesis
from pydantic import SecretStr
from pyspark.sql import SparkSession
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from typer.testing import CliRunner

from cli import api as api_cli
from cli import app as cli
from finegrain.apikeys import KeyStore, parse_token
from finegrain.codecs import decode, encode
from finegrain.events.schema import MAX_BODY_BYTES
from finegrain.schemas import (
    BehaviorEvent,
    EventType,
    ModelManifest,
    RealtimeProfile,
    RecentAction,
    UserProfile,
)
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, zookeeper_client
from finegrain.storage.contract import Dataset, KafkaTopics, RedisKeys, ZkPaths
from finegrain.storage.lists import current_version
from finegrain.storage.workers import worker_states
from models.registry import ModelRegistry
from serving import openapi
from serving.config import ServingConfig
from serving.process import ApiServer
from serving.smoke import DEGRADED_ATTEMPTS, SmokeTestError, ask_scene
from tests.integration.api_keys import api_key, bearer
from tests.integration.kafka_reader import TopicReader
from tests.integration.serving_harness import (
    RANKER,
    DedicatedRedis,
    ServingDeployment,
    build_datasets,
    drop_namespace,
    free_port,
    publish,
    register_ranker,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(settings: Settings, retail_data: Path, spark: SparkSession,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingDeployment]:
    folder = tmp_path_factory.mktemp("serving")
    redis_server = DedicatedRedis(folder)
    redis_server.start()
    own = settings.model_copy(update={
        "redis_url": redis_server.url, "zookeeper_root": f"{settings.zookeeper_root}/serving",
        "mongo_database": f"{settings.mongo_database}_serving", "var_dir": folder,
        "kafka_topic_prefix": f"{settings.kafka_topic_prefix}_serving",
        "api_bind": f"127.0.0.1:{free_port()}", "api_metrics_bind": f"127.0.0.1:{free_port()}",
        "api_workers": 2})
    events = retail_data / "events.parquet"
    build_datasets(own, events, spark)
    publish(own, RANKER, register_ranker(own, events))
    token = api_key(own, name="serving-tests")
    own = own.model_copy(update={"api_key": SecretStr(token)})
    served = ServingDeployment(own, redis_server, ApiServer(own), token)
    try:
        served.server.start()
        yield served
    finally:
        served.server.stop()
        redis_server.stop()
        drop_namespace(own)


@pytest.fixture(scope="module")
def users(retail_data: Path) -> list[str]:
    events = pd.read_parquet(retail_data / "events.parquet", columns=["user_id", "timestamp"])
    before = events[events["timestamp"] < pd.Timestamp("2010-12-10", tz="UTC")]
    return before["user_id"].value_counts().index[:40].astype(str).tolist()


def get(deployment: ServingDeployment, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{deployment.base_url}{path}", params=params, headers=deployment.headers, timeout=10)


def test_known_user_gets_ranked_items_with_their_channels(deployment: ServingDeployment,
                                                          users: list[str]) -> None:
    body = get(deployment, "/v1/recommendations", user_id=users[0], n=10).json()
    assert body["cold_start"] is False and body["degraded"] is False, body
    assert body["ranker"] == RANKER
    assert len(body["items"]) == 10
    assert body["candidates"] >= 400  # several channels, deduplicated
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["channels"] for item in body["items"])
    channels = Counter(channel for item in body["items"] for channel in item["channels"])
    assert channels["item_to_item"] > 0
    assert len({item["item_id"] for item in body["items"]}) == 10


def test_a_real_time_profile_brings_its_items_and_their_features(deployment: ServingDeployment,
                                                                 users: list[str], retail_data: Path) -> None:
    """What the streaming sidecar writes changes the answer: the real-time channel recalls from a
    carted item the user never bought, and the ranked answer is no longer the one without it."""
    user = users[2]
    events = pd.read_parquet(retail_data / "events.parquet", columns=["user_id", "item_id"])
    bought = set(events.loc[events["user_id"] == user, "item_id"])
    item = next(i for i in events["item_id"].value_counts().index if i not in bought)
    before = get(deployment, "/v1/recommendations", user_id=user, n=50, explain="true").json()
    assert "realtime" not in before["explain"]["channels"] or \
        before["explain"]["channels"]["realtime"]["candidates"] == 0
    realtime = RealtimeProfile(user_id=user, updated_ms=int(time.time() * 1000))
    realtime.recent.append(RecentAction(item_id=item, type=EventType.ADD_TO_CART,
                                        timestamp_ms=realtime.updated_ms))
    key = RedisKeys.realtime_profile(user)
    client = redis.Redis.from_url(deployment.settings.redis_url)
    client.set(key, encode(realtime), ex=300)
    try:
        after = get(deployment, "/v1/recommendations", user_id=user, n=50, explain="true").json()
    finally:
        client.delete(key)
    assert after["degraded"] is False
    assert after["explain"]["channels"]["realtime"]["candidates"] > 0
    assert any("realtime" in entry["channels"] for entry in after["items"])
    assert [e["item_id"] for e in after["items"]] != [e["item_id"] for e in before["items"]]


def test_unknown_user_gets_the_cold_start_path(deployment: ServingDeployment) -> None:
    body = get(deployment, "/v1/recommendations", user_id="no-such-user-42", n=5).json()
    assert body["cold_start"] is True and body["degraded"] is False
    assert len(body["items"]) == 5
    assert all("popular" in item["channels"] for item in body["items"])


def test_explain_gives_feature_contributions_and_stage_times(deployment: ServingDeployment,
                                                             users: list[str]) -> None:
    body = get(deployment, "/v1/recommendations", user_id=users[1], n=5, explain="true").json()
    stages = body["explain"]["stages_ms"]
    assert {"profile", "recall", "merge", "features", "rank", "explain"} <= set(stages)
    assert body["explain"]["channels"]["item_to_item"]["candidates"] > 0
    for item in body["items"]:
        explanation = item["explanation"]
        assert 1 <= len(explanation) <= 5
        assert all(isinstance(entry["feature"], str) and entry["contribution"] != 0 for entry in explanation)
        magnitudes = [abs(entry["contribution"]) for entry in explanation]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_similar_items(deployment: ServingDeployment) -> None:
    body = get(deployment, "/v1/items/85123A/similar", n=5).json()
    assert len(body["items"]) == 5 and "85123A" not in [item["item_id"] for item in body["items"]]
    missing = get(deployment, "/v1/items/NOPE-1/similar")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "item_id"


@pytest.mark.parametrize(("params", "field"), [
    ({}, "user_id"),
    ({"user_id": "12346", "n": "0"}, "n"),
    ({"user_id": "12346", "n": "201"}, "n"),
    ({"user_id": "12346", "n": "ten"}, "n"),
    ({"user_id": "12346", "scene": "nowhere"}, "scene"),
    ({"user_id": "12346", "explain": "maybe"}, "explain"),
    ({"user_id": "12346", "explain": "1"}, "explain"),  # true or false, as the document says
    ({"user_id": "12346", "n": ""}, "n"),  # empty is not absent
    ({"user_id": "12346", "scene": ""}, "scene"),
    ({"user_id": "12346", "": "x"}, "query"),  # a parameter without a name
    ({"user": "12346"}, "user"),
])
def test_bad_parameters_are_400_naming_the_field(deployment: ServingDeployment, params: dict[str, str],
                                                 field: str) -> None:
    response = get(deployment, "/v1/recommendations", **params)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


def test_health_metrics_and_openapi(deployment: ServingDeployment) -> None:
    assert get(deployment, "/healthz").json()["status"] == "ok"
    metrics = get(deployment, "/metrics").text
    for name in ("finegrain_requests_total", "finegrain_stage_seconds_bucket", "finegrain_channel_candidates",
                 "finegrain_model_info"):
        assert name in metrics
    document = get(deployment, "/openapi.json").json()
    assert "/v1/recommendations" in document["paths"] and "/v1/events" in document["paths"]


def _fresh_connections(url: str, headers: dict[str, str], count: int, **params: Any) -> list[httpx.Response]:
    """`count` requests, each on a new connection, so they spread over the workers."""
    with httpx.Client(headers=headers, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        return [http.get(url, params=params) for _ in range(count)]


def test_requests_without_a_key_or_with_the_wrong_scope_are_refused(deployment: ServingDeployment,
                                                                     users: list[str]) -> None:
    url = f"{deployment.base_url}/v1/recommendations"
    missing = httpx.get(url, params={"user_id": users[0]}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_key"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="finegrain"'
    key_id, _ = parse_token(deployment.token)
    forged = f"fg_{key_id}_{'A' * 43}"  # a real key id with a made-up secret
    wrong = httpx.get(url, params={"user_id": users[0]}, headers=bearer(forged), timeout=10)
    assert wrong.status_code == 401 and "does not match" in wrong.json()["error"]["message"]
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    events_only = bearer(api_key(deployment.settings, "events", name="serving-events-only"))
    forbidden = httpx.get(url, params={"user_id": users[0]}, headers=events_only, timeout=10)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
    assert 'scope="recommend"' in forbidden.headers["WWW-Authenticate"]
    reader = bearer(api_key(deployment.settings, "recommend", name="serving-reader"))
    assert httpx.get(f"{deployment.base_url}/metrics", headers=reader, timeout=10).status_code == 403
    put = httpx.put(f"{deployment.base_url}/v1/rules/not-allowed", json=RULE, headers=reader, timeout=10)
    assert put.status_code == 403
    assert httpx.get(f"{deployment.base_url}/readyz", timeout=10).status_code == 200  # open


def test_the_metrics_listener_serves_metrics_without_a_key_and_nothing_else(deployment: ServingDeployment,
                                                                           users: list[str]) -> None:
    listener = f"http://{deployment.settings.api_metrics_bind}"
    scraped = httpx.get(f"{listener}/metrics", timeout=10)
    assert scraped.status_code == 200 and "finegrain_requests_total" in scraped.text
    assert httpx.get(f"{listener}/healthz", timeout=10).status_code == 200
    refused = httpx.get(f"{listener}/v1/recommendations", params={"user_id": users[0]},
                        headers=deployment.headers, timeout=10)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{deployment.base_url}/metrics", timeout=10).status_code == 401


def test_a_key_over_its_rate_gets_429_with_retry_after(deployment: ServingDeployment) -> None:
    slow = bearer(api_key(deployment.settings, "recommend", name="serving-slow", rate_per_s=1.0))
    url = f"{deployment.base_url}/v1/items/85123A/similar"
    responses = _fresh_connections(url, slow, 12, n=3)
    statuses = Counter(r.status_code for r in responses)
    # A bucket of 2 (1/s x burst_s 2) in each of the 2 workers, refilled by about 1 token per second.
    assert set(statuses) == {200, 429} and statuses[200] <= 6, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 2
    time.sleep(wait)
    assert httpx.get(url, params={"n": 3}, headers=slow, timeout=10).status_code == 200


def test_a_revoked_key_is_refused_by_every_worker_within_seconds(deployment: ServingDeployment,
                                                                  users: list[str]) -> None:
    token = api_key(deployment.settings, "recommend", name="serving-revoked")
    url = f"{deployment.base_url}/v1/items/85123A/similar"
    first_use = time.monotonic()
    assert {r.status_code for r in _fresh_connections(url, bearer(token), 12, n=2)} == {200}
    with KeyStore(deployment.settings) as store:
        revoked = store.revoke(parse_token(token)[0])
    assert revoked.announced and revoked.key.revoked

    def all_refused() -> bool:
        return {r.status_code for r in _fresh_connections(url, bearer(token), 12, n=2)} == {401}

    wait_for(all_refused, 8, "every worker to refuse the revoked key")
    # Well inside the workers' 10 s cache TTL: the ZooKeeper notice did it, not the expiry.
    assert time.monotonic() - first_use < 9
    assert get(deployment, "/v1/items/85123A/similar", n=2).status_code == 200  # other keys unaffected


def test_bodies_over_their_limit_are_413_naming_the_limit(deployment: ServingDeployment) -> None:
    events = httpx.post(f"{deployment.base_url}/v1/events", content=b" " * (MAX_BODY_BYTES + 1),
                        headers={**deployment.headers, "Content-Type": "application/json"}, timeout=30)
    assert events.status_code == 413 and f"{MAX_BODY_BYTES:,} bytes" in events.json()["error"]["message"]
    limit = ServingConfig().rule_max_body_bytes
    rule = httpx.put(f"{deployment.base_url}/v1/rules/huge", json={**RULE, "description": "x" * limit},
                     headers=deployment.headers, timeout=10)
    assert rule.status_code == 413 and rule.json()["error"]["code"] == "body_too_large"
    long_item = get(deployment, f"/v1/items/{'9' * 65}/similar")
    assert long_item.status_code == 400 and long_item.json()["error"]["field"] == "item_id"


def _with_profile(deployment: ServingDeployment, user: str, change: dict[str, Any]) -> Any:
    """Rewrite the user's offline profile in Redis with `change` (as a broken or out-of-range profile
    would be written), returning a function that puts the original back."""
    client = redis.Redis.from_url(deployment.settings.redis_url)
    version = current_version(client, Dataset.FEATURES)
    assert version is not None
    key = RedisKeys.user_profile(version, user)
    original = client.get(key)
    assert original is not None
    changed = decode(UserProfile, bytes(original))  # type: ignore[arg-type]
    for field, value in change.items():
        setattr(changed, field, value)
    client.set(key, encode(changed))

    def restore() -> None:
        client.set(key, original)  # type: ignore[arg-type]
        client.close()

    return restore


def test_feature_assembly_failing_degrades_the_answer(deployment: ServingDeployment,
                                                      users: list[str]) -> None:
    # A profile older than the item features would leak later purchases into the features: refused.
    restore = _with_profile(deployment, users[5], {"as_of_ms": 1})
    try:
        response = get(deployment, "/v1/recommendations", user_id=users[5], n=10, explain="true")
    finally:
        restore()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and body["ranker"] is None and len(body["items"]) == 10
    assert any(reason.startswith("features: ValueError") for reason in body["degraded_reasons"])
    assert 'finegrain_degraded_responses_total{reason="features"}' in get(deployment, "/metrics").text
    assert get(deployment, "/v1/recommendations", user_id=users[5], n=10).json()["degraded"] is False


def test_explain_failing_degrades_the_answer_not_the_ranking(deployment: ServingDeployment,
                                                             users: list[str]) -> None:
    # XGBoost scores an infinite feature but refuses it when computing contributions.
    restore = _with_profile(deployment, users[6], {"total_spend": float("inf")})
    try:
        response = get(deployment, "/v1/recommendations", user_id=users[6], n=5, explain="true")
    finally:
        restore()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ranker"] == RANKER and len(body["items"]) == 5  # ranked all the same
    assert body["degraded"] is True and any(r.startswith("explain: ") for r in body["degraded_reasons"])
    assert all("explanation" not in item for item in body["items"])
    assert 'finegrain_degraded_responses_total{reason="explain"}' in get(deployment, "/metrics").text


def test_events_are_produced_to_kafka_and_bad_ones_refused(deployment: ServingDeployment) -> None:
    settings = deployment.settings
    topics = KafkaTopics(settings.kafka_topic_prefix)
    ensure_topics(settings, [topics.events, topics.events_dead_letter])
    reader = TopicReader(settings, topics.events)
    try:
        events = [{"user_id": "13085", "item_id": "85048", "type": "add_to_cart", "quantity": 2,
                   "timestamp": "2010-12-01T08:26:00Z", "context": {"scene": "home"}},
                  {"user_id": "13085", "item_id": "22423", "type": "purchase", "price": 12.75}]
        accepted = httpx.post(f"{deployment.base_url}/v1/events", json={"events": events},
                              headers=deployment.headers, timeout=10)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["accepted"] == 2
        messages = reader.read_new(2)
        decoded = [decode(BehaviorEvent, message.value()) for message in messages]
        assert [m.key() for m in messages] == [b"13085", b"13085"]
        assert [(e.item_id, e.type) for e in decoded] == [("85048", EventType.ADD_TO_CART),
                                                          ("22423", EventType.PURCHASE)]
        assert [e.event_id for e in decoded] == accepted.json()["event_ids"]
        refused = httpx.post(f"{deployment.base_url}/v1/events", headers=deployment.headers,
                             json={"events": [{"user_id": "13085", "item_id": "1", "type": "teleport"}]})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "events[0].type"
        before = reader.watermarks()
        time.sleep(0.5)
        assert reader.watermarks() == before  # nothing of the refused batch reached the events topic
    finally:
        reader.close()


RULE = {"where": {"all": [{"category_best_seller": "$user.top_category"},
                          {"not": {"term": "christmas"}}]},
        "order": "popularity", "limit": 50, "scenes": ["home"], "description": "favourite category"}


def _rule_candidates(deployment: ServingDeployment, user: str) -> tuple[int, list[dict[str, Any]]]:
    body = get(deployment, "/v1/recommendations", user_id=user, n=200, explain="true").json()
    return body["explain"]["channels"]["rule"]["candidates"], body["items"]


def test_rules_crud_and_rule_recall_on_every_worker(deployment: ServingDeployment, users: list[str]) -> None:
    url = f"{deployment.base_url}/v1/rules"
    http = httpx.Client(headers=deployment.headers, timeout=10)
    bad = http.put(f"{url}/fav-category", json={**RULE, "where": {"not": {"term": "heart"}}})
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith("where")
    typo = http.put(f"{url}/typo", json={**RULE, "where": {"category": "no-such-category-x"}})
    assert typo.status_code == 400 and typo.json()["error"]["field"] == "where.category"
    stored = http.put(f"{url}/fav-category", json=RULE)
    assert stored.status_code == 200, stored.text
    # The other worker learns of the rule from the ZooKeeper notice, a moment after the PUT returned.
    fetched = wait_for(lambda: all(r.status_code == 200 for r in _fresh_connections(f"{url}/fav-category",
                                                                                     deployment.headers, 6))
                       and http.get(f"{url}/fav-category"), 20, "every worker to serve the new rule")
    assert fetched.json()["definition"]["limit"] == 50, fetched.text
    assert "fav-category" in json.dumps(http.get(url).json())
    # Every worker (requests land on either) serves the rule: the store follows the ZooKeeper znode.
    def recalled() -> tuple[int, list[dict[str, Any]]] | None:
        found = _rule_candidates(deployment, users[3])
        return found if found[0] > 0 else None

    for _ in range(6):
        count, items = wait_for(recalled, 20, "the rule channel to recall")
        assert count <= 50
    tagged = [item for item in items if "rule" in item["channels"]]
    assert tagged and all(item["rules"] == ["fav-category"] for item in tagged)
    preview = http.get(f"{url}/fav-category/preview", params={"user_id": users[3]}).json()
    assert preview["items"] and all(atom["cache"] in ("hit", "miss") for atom in preview["atoms"])
    assert http.delete(f"{url}/fav-category").status_code == 204
    assert http.get(f"{url}/fav-category").status_code == 404
    http.close()
    wait_for(lambda: all(_rule_candidates(deployment, users[3])[0] == 0 for _ in range(6)), 20,
             "every worker to drop the deleted rule")


def test_cli_shows_workers_and_recommendations(deployment: ServingDeployment, users: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_cli, "get_settings", lambda: deployment.settings)
    status = CliRunner().invoke(cli, ["api", "status", "--json"])
    assert status.exit_code == 0, status.output
    workers = json.loads(status.output.strip().splitlines()[-1])["workers"]
    assert len(workers) == 2 and all(w["models"].get(RANKER) for w in workers)
    shown = CliRunner().invoke(cli, ["api", "recommend", users[0], "never-seen-9", "--n", "3"])
    assert shown.exit_code == 0, shown.output
    assert f"user {users[0]}: ranked by {RANKER}" in shown.output
    assert "user never-seen-9: cold start" in shown.output


def _served_versions(settings: Settings) -> list[str]:
    zk = zookeeper_client(settings)
    try:
        return [state["models"].get(RANKER, "") for state in worker_states(settings, zk)]
    finally:
        zk.stop()


def _hammer(deployment: ServingDeployment, users: list[str], stop: threading.Event,
            statuses: Counter[int], latencies: list[float]) -> None:
    with httpx.Client(base_url=deployment.base_url, headers=deployment.headers, timeout=10) as client:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            response = client.get("/v1/recommendations", params={"user_id": users[i % len(users)], "n": 10})
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            i += 1


def test_model_swap_under_concurrent_requests_fails_none(deployment: ServingDeployment, users: list[str],
                                                       retail_data: Path) -> None:
    settings = deployment.settings
    new_version = register_ranker(settings, retail_data / "events.parquet", rounds=25, max_users=200)
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    threads = [threading.Thread(target=_hammer, args=(deployment, users, stop, statuses, latencies))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        publish(settings, RANKER, new_version)
        wait_for(lambda: set(_served_versions(settings)) == {new_version}, 60, "both workers to swap")
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 20
    body = get(deployment, "/v1/recommendations", user_id=users[0]).json()
    assert body["versions"][RANKER] == new_version


def test_corrupt_model_is_refused_and_the_old_one_keeps_serving(deployment: ServingDeployment,
                                                                users: list[str]) -> None:
    settings = deployment.settings
    serving_now = set(_served_versions(settings))
    assert len(serving_now) == 1
    good = ModelRegistry(settings).latest(RANKER).manifest
    # The znode names a version whose bytes do not match its checksum (as if the artifact rotted after
    # publication, or someone wrote the znode by hand): workers must refuse it.
    bad = ModelManifest()
    bad.CopyFrom(good)
    bad.version = "29991231T000000.000"
    bad.sha256 = "0" * 64
    ModelRegistry(settings).models.insert_one({
        "_id": f"{RANKER}:{bad.version}", "name": RANKER, "version": bad.version,
        "manifest": encode(bad), "file_id": ModelRegistry(settings).get(RANKER, good.version).file_id,
        "created_at": pd.Timestamp.now(tz="UTC").to_pydatetime(), "published": False, "published_at": None,
        "withdrawn": False, "pinned": False})
    zk = zookeeper_client(settings)
    try:
        zk.set(ZkPaths(settings.zookeeper_root).model(RANKER), encode(bad))

        def refused() -> bool:
            states = worker_states(settings, zk)
            return len(states) == 2 and all(bad.version in s["errors"].get(RANKER, "") for s in states)

        wait_for(refused, 30, "both workers to refuse the corrupt version")
        states = worker_states(settings, zk)
    finally:
        zk.set(ZkPaths(settings.zookeeper_root).model(RANKER), encode(good))
        zk.stop()
    assert {s["models"][RANKER] for s in states} == serving_now
    assert all("sha256" in s["errors"][RANKER] for s in states)
    body = get(deployment, "/v1/recommendations", user_id=users[2]).json()
    assert body["degraded"] is False and body["versions"][RANKER] in serving_now


@pytest.mark.parametrize(("dependency", "setting"), [("zookeeper", "zookeeper_hosts"),
                                                     ("mongo", "mongo_uri")])
def test_a_worker_starts_and_answers_with_zookeeper_or_mongo_unreachable(
        deployment: ServingDeployment, users: list[str], dependency: str, setting: str) -> None:
    unreachable = {"zookeeper_hosts": "127.0.0.1:1",
                   "mongo_uri": "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=300"}
    settings = deployment.settings.model_copy(update={
        setting: unreachable[setting], "api_bind": f"127.0.0.1:{free_port()}", "api_metrics_bind": None,
        "api_workers": 1,
        "var_dir": deployment.settings.var_dir / f"without-{dependency}"})
    # As a worker restarted on the same host would: with MongoDB away it verifies keys with the records
    # its predecessors saved at their start (serving.auth.keys).
    snapshot = Path("serving") / "api_keys.json"
    (settings.var_dir / snapshot).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(deployment.settings.var_dir / snapshot, settings.var_dir / snapshot)
    newer = api_key(deployment.settings, "recommend", name="serving-after-the-snapshot")
    server = ApiServer(settings)
    try:
        server.start(timeout_s=120, ready=dependency == "zookeeper")
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        body = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": users[4], "n": 10},
                         headers=deployment.headers, timeout=10).json()
        unverified = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": users[4]},
                               headers=bearer(newer), timeout=10)
    finally:
        server.stop()
    if dependency == "mongo":
        # A key the worker has never seen cannot be checked without MongoDB: a 503 to retry, not a 401.
        assert unverified.status_code == 503, unverified.text
        assert unverified.json()["error"]["code"] == "unavailable" and unverified.headers["Retry-After"]
    else:
        assert unverified.status_code == 200
    assert len(body["items"]) == 10 and body["cold_start"] is False
    if dependency == "zookeeper":
        # Datasets from the Redis pointers, the ranker from the registry's published flag.
        assert ready["zookeeper"] is False and "zookeeper" in ready["errors"]
        assert body["ranker"] == RANKER and body["degraded"] is False
    else:
        # No registry: the ranker cannot be fetched, so the merge order serves, flagged.
        assert RANKER in ready["errors"]
        assert body["ranker"] is None and body["degraded"] is True
        assert any("ranker" in reason for reason in body["degraded_reasons"])


# -- fuzzing: schemathesis against /openapi.json, every operation, with a key of every scope ----------

FUZZ_EXAMPLES = 25  # per operation and generation mode: about a minute for the whole document here


def _fuzz_cases() -> list[Any]:
    """(method, path, mode) of every operation; the negative mode (inputs the document forbids) only
    where there is an input to get wrong: a parameter, a body or the key."""
    cases = []
    for path, item in openapi.DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            inputs = item.get("parameters") or operation.get("parameters") or operation.get("requestBody") \
                or operation.get("security") != []
            for mode in GenerationMode if inputs else [GenerationMode.POSITIVE]:
                cases.append(pytest.param(method.upper(), path, mode, id=f"{mode}-{method.upper()} {path}"))
    return cases


# Valid per the document but refused by what no schema states: an event timestamp's window (from
# 2000-01-01 to 5 minutes after the server's clock), a rule's atom values checked against the current
# datasets (an unknown category). Every other check still runs on them.
SEMANTIC_CHECKS = {("POST", "/v1/events"), ("PUT", "/v1/rules/{name}")}


@pytest.fixture(scope="module")
def api_schema(deployment: ServingDeployment) -> Iterator[Any]:
    """The served document, loaded with the key (it needs one). The rules the fuzzer stores are deleted
    afterwards, so the tests after it see the scenes' rule limit as before."""
    schema = schemathesis.openapi.from_url(f"{deployment.base_url}/openapi.json", headers=deployment.headers,
                                           timeout=10)
    yield schema
    with httpx.Client(base_url=deployment.base_url, headers=deployment.headers, timeout=10) as http:
        for rule in http.get("/v1/rules").json()["rules"]:
            http.delete(f"/v1/rules/{rule['name']}")


def _error_names_its_field(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is the one JSON error shape, with the status, a code, a message, and the field at
    fault (a 404 or 405 of a path that matched no route has no field to name)."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    error = body["error"]
    assert error["status"] == response.status_code and error["code"] and error["message"], body
    unmatched = error["field"] is None and error["code"] in ("not_found", "method_not_allowed")
    assert unmatched or error["field"], f"{case.method} {case.formatted_path}: {body}"
    return True


@pytest.mark.parametrize(("method", "path", "mode"), _fuzz_cases())
def test_fuzzing_finds_no_5xx_and_every_answer_matches_the_document(
        api_schema: Any, deployment: ServingDeployment, method: str, path: str, mode: GenerationMode) -> None:
    """Inputs the document allows (positive) and forbids (negative) for each operation, sent with a key
    of every scope: no 5xx (but a 503 the document lists), every status, content type and body as the
    document gives them, forbidden input refused, each 4xx naming its field (schemathesis' checks plus
    `_error_names_its_field`)."""
    operation = api_schema[path][method]
    excluded = [positive_data_acceptance] if (method, path) in SEMANTIC_CHECKS else []

    @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=deployment.headers, additional_checks=[_error_names_its_field],
                               excluded_checks=excluded)

    fuzz()


def test_redis_down_gives_degraded_answers_not_errors(deployment: ServingDeployment,
                                                      users: list[str]) -> None:
    deployment.redis_server.stop()
    started = time.perf_counter()
    responses = [get(deployment, "/v1/recommendations", user_id=user, n=10) for user in users[:10]]
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses)
    for response in responses:
        body = response.json()
        assert body["degraded"] is True and len(body["items"]) == 10
        assert any("redis" in reason for reason in body["degraded_reasons"]), body["degraded_reasons"]
    assert elapsed < 10, f"10 degraded requests took {elapsed:.1f} s"
    assert get(deployment, "/healthz").status_code == 200
    # The nightly DAG's smoke test asks a degraded answer again, then fails naming the reason.
    said: list[str] = []
    with (httpx.Client(base_url=deployment.base_url, headers=deployment.headers, timeout=10) as client,
          pytest.raises(SmokeTestError, match=r"degraded answer \(.*redis.*\) on each of 5 attempts")):
        ask_scene(client, users[0], "home", RANKER, {}, {}, said.append)
    assert len(said) == DEGRADED_ATTEMPTS - 1 and "asking again" in said[0]
    # A rule's values cannot be checked against the datasets (a country's best sellers are looked up in
    # Redis on every PUT): refused with a 503, not a 500, and nothing stored.
    put = httpx.put(f"{deployment.base_url}/v1/rules/while-redis-is-down", headers=deployment.headers,
                    json={"where": {"country_best_seller": "France"}}, timeout=10)
    assert put.status_code == 503, put.text
    assert put.json()["error"]["code"] == "unavailable" and "Redis" in put.json()["error"]["message"]
    assert get(deployment, "/v1/rules/while-redis-is-down").status_code == 404
    similar = get(deployment, "/v1/items/85123A/similar", n=3)
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3
    assert "finegrain_degraded_responses_total" in get(deployment, "/metrics").text
