"""The API under gunicorn (2 workers) against the real local stack, on the real data's datasets and a
real (small) XGBoost ranker: recommendations, explanations, similar items, 400s, a model swap under
concurrent requests, a corrupt model refused, and degraded answers once Redis is stopped."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from cli import api as api_cli
from cli import app as cli
from finegrain.codecs import decode, encode
from finegrain.schemas import BehaviorEvent, EventType, ModelManifest, RealtimeProfile, RecentAction
from finegrain.settings import Settings
from finegrain.storage.clients import ensure_topics, zookeeper_client
from finegrain.storage.contract import KafkaTopics, RedisKeys, ZkPaths
from finegrain.storage.workers import worker_states
from models.registry import ModelRegistry
from serving.process import ApiServer
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
        "api_bind": f"127.0.0.1:{free_port()}", "api_workers": 2})
    events = retail_data / "events.parquet"
    build_datasets(own, events, spark)
    publish(own, RANKER, register_ranker(own, events))
    served = ServingDeployment(own, redis_server, ApiServer(own))
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
    return httpx.get(f"{deployment.base_url}{path}", params=params, timeout=10)


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


def test_events_are_produced_to_kafka_and_bad_ones_refused(deployment: ServingDeployment) -> None:
    settings = deployment.settings
    topics = KafkaTopics(settings.kafka_topic_prefix)
    ensure_topics(settings, [topics.events, topics.events_dead_letter])
    reader = TopicReader(settings, topics.events)
    try:
        events = [{"user_id": "13085", "item_id": "85048", "type": "add_to_cart", "quantity": 2,
                   "timestamp": "2010-12-01T08:26:00Z", "context": {"scene": "home"}},
                  {"user_id": "13085", "item_id": "22423", "type": "purchase", "price": 12.75}]
        accepted = httpx.post(f"{deployment.base_url}/v1/events", json={"events": events}, timeout=10)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["accepted"] == 2
        messages = reader.read_new(2)
        decoded = [decode(BehaviorEvent, message.value()) for message in messages]
        assert [m.key() for m in messages] == [b"13085", b"13085"]
        assert [(e.item_id, e.type) for e in decoded] == [("85048", EventType.ADD_TO_CART),
                                                          ("22423", EventType.PURCHASE)]
        assert [e.event_id for e in decoded] == accepted.json()["event_ids"]
        refused = httpx.post(f"{deployment.base_url}/v1/events",
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
    bad = httpx.put(f"{url}/fav-category", json={**RULE, "where": {"not": {"term": "heart"}}}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith("where")
    typo = httpx.put(f"{url}/typo", json={**RULE, "where": {"category": "no-such-category-x"}}, timeout=10)
    assert typo.status_code == 400 and typo.json()["error"]["field"] == "where.category"
    stored = httpx.put(f"{url}/fav-category", json=RULE, timeout=10)
    assert stored.status_code == 200, stored.text
    assert httpx.get(f"{url}/fav-category", timeout=10).json()["definition"]["limit"] == 50
    assert "fav-category" in json.dumps(httpx.get(url, timeout=10).json())
    # Every worker (requests land on either) serves the rule: the store follows the ZooKeeper znode.
    def recalled() -> tuple[int, list[dict[str, Any]]] | None:
        found = _rule_candidates(deployment, users[3])
        return found if found[0] > 0 else None

    for _ in range(6):
        count, items = wait_for(recalled, 20, "the rule channel to recall")
        assert count <= 50
    tagged = [item for item in items if "rule" in item["channels"]]
    assert tagged and all(item["rules"] == ["fav-category"] for item in tagged)
    preview = httpx.get(f"{url}/fav-category/preview", params={"user_id": users[3]}, timeout=10).json()
    assert preview["items"] and all(atom["cache"] in ("hit", "miss") for atom in preview["atoms"])
    assert httpx.delete(f"{url}/fav-category", timeout=10).status_code == 204
    assert httpx.get(f"{url}/fav-category", timeout=10).status_code == 404
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
    with httpx.Client(base_url=deployment.base_url, timeout=10) as client:
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
        setting: unreachable[setting], "api_bind": f"127.0.0.1:{free_port()}", "api_workers": 1,
        "var_dir": deployment.settings.var_dir / f"without-{dependency}"})
    server = ApiServer(settings)
    try:
        server.start(timeout_s=120, ready=dependency == "zookeeper")
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        body = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": users[4], "n": 10},
                         timeout=10).json()
    finally:
        server.stop()
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
    similar = get(deployment, "/v1/items/85123A/similar", n=3)
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3
    assert "finegrain_degraded_responses_total" in get(deployment, "/metrics").text
