"""The API's authentication without a store: every mounted responder declares the scope it needs, the
OpenAPI document says the same, and a request without a usable key is a JSON 401 with its challenge
(verifying a well-formed key needs MongoDB: tests/integration/test_api_auth.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from finegrain.apikeys import Scope
from finegrain.settings import Settings
from serving.api.auth import ANY_KEY, OPEN, responder_methods
from serving.app import FinegrainApp, create_app
from serving.openapi import AUTH_RESPONSES, document

# Nothing listens there: building the app must not connect to anything (it connects at start).
NOWHERE = {"mongo_uri": "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200",
           "redis_url": "redis://127.0.0.1:1/0", "zookeeper_hosts": "127.0.0.1:1",
           "kafka_bootstrap_servers": "127.0.0.1:1"}
METRICS_PORT = 18589


def _app(**updates: Any) -> FinegrainApp:
    settings = Settings(**{**NOWHERE, **updates})  # type: ignore[arg-type]
    return create_app(settings, start=False)


@pytest.fixture(scope="module")
def app() -> Iterator[FinegrainApp]:
    built = _app(api_metrics_bind=f"127.0.0.1:{METRICS_PORT}", api_metrics_scope="recommend")
    yield built
    built.services.close()


def routes(app: FinegrainApp) -> dict[str, tuple[Any, set[str]]]:
    """uri template -> (resource, the methods its responders answer there), for every mounted route."""
    found: dict[str, tuple[Any, set[str]]] = {}

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                methods = {method for method, responder in node.method_map.items()
                           if getattr(responder, "__self__", None) is node.resource}
                found[node.uri_template] = (node.resource, methods)
            walk(node.children)

    walk(app._router._roots)
    return found


def test_every_responder_declares_what_it_needs(app: FinegrainApp) -> None:
    mounted = routes(app)
    assert {"/v1/recommendations", "/v1/events", "/v1/rules/{name}", "/healthz", "/metrics"} <= set(mounted)
    for template, (resource, methods) in mounted.items():
        declared = resource.auth
        assert responder_methods(resource) == set(declared), template
        assert methods <= set(declared), template
    assert mounted["/metrics"][0].auth == {"GET": Scope.RECOMMEND}  # FINEGRAIN_API_METRICS_SCOPE
    opened = sorted(t for t, (r, _) in mounted.items() if OPEN in r.auth.values())
    assert opened == ["/healthz", "/readyz"]


def _expected_security(requirement: Any) -> list[dict[str, list[str]]]:
    if requirement is OPEN:
        return []
    return [{"bearer": [] if requirement == ANY_KEY else [str(requirement)]}]


def test_the_openapi_document_states_each_operations_scope_and_refusals(app: FinegrainApp) -> None:
    mounted = routes(app)
    paths = document("recommend")["paths"]
    assert set(paths) == set(mounted)
    for template, (resource, methods) in mounted.items():
        assert {m for m in paths[template] if m != "parameters"} == {m.lower() for m in methods}, template
        for method in methods:
            requirement = resource.auth[method]
            operation = paths[template][method.lower()]
            assert operation["security"] == _expected_security(requirement), (template, method)
            if requirement is not OPEN:
                expected = {"401", "429", "503"} | ({"403"} if requirement != ANY_KEY else set())
                assert expected <= set(operation["responses"]), (template, method)
                assert operation["responses"]["401"] == AUTH_RESPONSES["401"]
    assert "413" in paths["/v1/events"]["post"]["responses"]
    assert {"409", "413", "503"} <= set(paths["/v1/rules/{name}"]["put"]["responses"])
    assert document()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(("header", "code", "challenge"), [
    (None, "missing_key", 'Bearer realm="finegrain"'),
    ("fg_abcdefghijkl_short", "invalid_key", 'Bearer realm="finegrain", error="invalid_token"'),
    ("Basic dXNlcjpwYXNz", "invalid_key", 'Bearer realm="finegrain", error="invalid_token"'),
    ("Bearer ", "invalid_key", 'Bearer realm="finegrain", error="invalid_token"'),
])
def test_a_request_without_a_usable_key_is_a_json_401_with_its_challenge(
        app: FinegrainApp, header: str | None, code: str, challenge: str) -> None:
    client = falcon.testing.TestClient(app)
    headers = {} if header is None else {"Authorization": header if " " in header else f"Bearer {header}"}
    for path in ("/v1/recommendations?user_id=1", "/v1/rules", "/openapi.json", "/metrics"):
        result = client.simulate_get(path, headers=headers)
        assert result.status_code == 401, (path, result.text)
        assert result.json["error"] == {**result.json["error"], "status": 401, "code": code,
                                        "field": "Authorization"}
        assert result.headers["WWW-Authenticate"] == challenge
    posted = client.simulate_post("/v1/events", json={"events": []}, headers=headers)
    assert posted.status_code == 401


def test_open_routes_and_falcons_own_refusals_need_no_key(app: FinegrainApp) -> None:
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/no/such/route").status_code == 404
    wrong_method = client.simulate_delete("/v1/recommendations")
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"


def test_the_metrics_listener_serves_metrics_without_a_key_and_nothing_else(app: FinegrainApp) -> None:
    client = falcon.testing.TestClient(app)
    there = {"SERVER_PORT": str(METRICS_PORT)}
    assert client.simulate_get("/metrics", extras=there).status_code == 200
    assert client.simulate_get("/healthz", extras=there).status_code == 200
    refused = client.simulate_get("/v1/recommendations", params={"user_id": "1"}, extras=there)
    assert refused.status_code == 404 and "only /metrics" in refused.json["error"]["message"]
    assert client.simulate_get("/metrics").status_code == 401  # on the API's own listener it needs a key
    # The listeners are told apart by port: sharing one would open /metrics on the API's.
    with pytest.raises(ValueError, match="use another port"):
        Settings(api_bind="0.0.0.0:18080", api_metrics_bind="10.0.0.1:18080")


def test_auth_off_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        app = _app(api_auth=False)
    try:
        assert any("AUTHENTICATION IS OFF" in record.getMessage() for record in caplog.records)
        client = falcon.testing.TestClient(app)
        assert client.simulate_get("/metrics").status_code == 200
        assert client.simulate_get("/openapi.json").status_code == 200
    finally:
        app.services.close()
    assert Settings.model_fields["api_auth"].default is True  # on unless FINEGRAIN_API_AUTH says otherwise
