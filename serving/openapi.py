"""The OpenAPI 3.1 document of the API, served at /openapi.json (kept beside the resources it
describes; tests check every route is documented, every documented route exists, and each
operation's security requirement is the scope its resource declares, `serving.api.auth`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import falcon

from finegrain.events.schema import (
    MAX_BODY_BYTES,
    MAX_CONTEXT_CHARS,
    MAX_CONTEXT_EXTRA,
    MAX_EVENTS,
    MAX_ID_CHARS,
    MAX_QUANTITY,
    MIN_TIMESTAMP_MS,
    TYPE_NAMES,
)
from serving.api.auth import ANY_KEY, Access
from serving.api.params import ID_PATTERN
from serving.api.recommendations import MAX_N
from serving.api.rules import USER_ID_PATTERN
from serving.rules.definition import MAX_ATOMS, MAX_DEPTH, RULE_NAME_PATTERN

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


SCHEME = "bearer"
_CHALLENGE = {"WWW-Authenticate": _header('Bearer realm="finegrain" (with error="invalid_token" or '
                                          'error="insufficient_scope" and scope="...")')}
_RETRY = {"Retry-After": _header("Seconds to wait before retrying", "integer")}
AUTH_RESPONSES: dict[str, Any] = {
    "401": {**_error("No API key (missing_key), or one that is malformed, unknown, revoked or does not "
                     "match (invalid_key)"), "headers": _CHALLENGE},
    "403": {**_error("The key lacks the scope this operation needs (insufficient_scope)"),
            "headers": _CHALLENGE},
    "429": {**_error("The key is over its request rate (rate_limited)"), "headers": _RETRY},
    "503": {**_error("The key cannot be verified now (MongoDB unreachable and the key not cached)"),
            "headers": _RETRY},
}


def secured(scope: str | None, operation: dict[str, Any]) -> dict[str, Any]:
    """`operation` needing a key with `scope` (None: any valid key), with the refusals that brings;
    an operation of the document without it is open (`security: []`)."""
    responses = {**AUTH_RESPONSES, **operation["responses"]}
    if scope is None:
        responses.pop("403")
    return {**operation, "security": [{SCHEME: [scope] if scope else []}], "responses": responses}


def _open(operation: dict[str, Any]) -> dict[str, Any]:
    return {**operation, "security": []}


_RULE_NAME = {"type": "string", "pattern": RULE_NAME_PATTERN.pattern}
# A query or path id: printable ASCII without spaces, as the data's ids are (`serving.api.params`).
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ID_PATTERN.pattern}
# An id inside a posted event: any text of 1-64 characters that is not blank (`finegrain.events.schema`).
_EVENT_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": r"\S"}
_TEXT = {"type": "string", "maxLength": MAX_CONTEXT_CHARS}
_NAME_400 = "A rule name that is not 1-64 of letters, digits, '.', '_', '-' (field name)"
EVENT = {
    "type": "object", "required": ["user_id", "item_id", "type"], "additionalProperties": False,
    "properties": {
        "user_id": _EVENT_ID, "item_id": _EVENT_ID,
        "type": {"type": "string", "enum": list(TYPE_NAMES), "description": "Case-insensitive."},
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        "price": {"type": "number", "minimum": 0},
        "timestamp": {"type": ["integer", "string"], "minimum": MIN_TIMESTAMP_MS,
                      "description": "Epoch milliseconds, or ISO-8601 with a UTC offset; from 2000-01-01 to "
                                     "at most 5 minutes after the server's clock; default: when received."},
        "event_id": _EVENT_ID,
        "context": {"type": "object", "additionalProperties": False, "properties": {
            "scene": _TEXT, "session_id": _TEXT, "country": _TEXT, "device": _TEXT, "request_id": _TEXT,
            "extra": {"type": "object", "maxProperties": MAX_CONTEXT_EXTRA, "additionalProperties": _TEXT}}}},
}

ITEM = {
    "type": "object",
    "required": ["item_id", "score", "channels"],
    "properties": {
        "item_id": {"type": "string"},
        "score": {"type": "number", "description": "Ranker score (or recall order when no ranker ran)."},
        "channels": {"type": "array", "items": {"type": "string"},
                     "description": "Recall channels that produced the item."},
        "rules": {"type": "array", "items": {"type": "string"}, "description": "Rules that recalled it."},
        "explanation": {"type": "array", "description": "With explain=true: top feature contributions.",
                        "items": {"type": "object", "properties": {
                            "feature": {"type": "string"}, "value": {"type": ["number", "null"]},
                            "contribution": {"type": "number"}}}},
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Finegrain recommendation API", "version": "1.0.0",
             "description": "Personalized recommendations, similar items, behaviour events and recall rules. "
                            "Every refusal is JSON: {\"error\": {status, code, message, field}}."},
    "paths": {
        "/v1/recommendations": {"get": secured("recommend", {
            "summary": "Ranked recommendations for a user",
            "parameters": [
                _query("user_id", _ID, "The user (unknown users get the cold-start path).", True),
                _query("scene", {"type": "string", "minLength": 1},
                       "A configured scene (the default scene when absent)."),
                _query("n", {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 20}, "How many items."),
                _query("explain", {"type": "boolean", "default": False},
                       "Add feature contributions per item and time per stage."),
            ],
            "responses": {
                "200": _json({"type": "object", "properties": {
                    "request_id": {"type": "string"}, "user_id": {"type": "string"}, "scene": {"type": "string"},
                    "cold_start": {"type": "boolean"}, "ranker": {"type": ["string", "null"]},
                    "candidates": {"type": "integer"}, "degraded": {"type": "boolean"},
                    "degraded_reasons": {"type": "array", "items": {"type": "string"}},
                    "versions": {"type": "object", "additionalProperties": {"type": "string"}},
                    "items": {"type": "array", "items": ITEM},
                    "explain": {"type": "object"}}}, "Recommendations (degraded_reasons says what was left out: "
                    "a dependency, a channel, the ranker, feature assembly or explain)"),
                "400": _error("A missing or malformed parameter, named in error.field"),
            }})},
        "/v1/items/{item_id}/similar": {"get": secured("recommend", {
            "summary": "Item-to-item recommendations",
            "parameters": [
                {"name": "item_id", "in": "path", "required": True, "schema": _ID},
                _query("n", {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 20}, "How many items."),
                _query("algorithm", {"type": "string", "enum": ["cosine", "swing"], "default": "cosine"},
                       "Similarity lists to read."),
            ],
            "responses": {"200": _json({"type": "object"}, "Similar items"), "400": _error("Bad parameter"),
                          "404": _error("Unknown item")}})},
        "/v1/events": {"post": secured("events", {
            "summary": "Send a batch of behaviour events (produced to Kafka)",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "required": ["events"],
                                                 "additionalProperties": False, "properties": {
                    "events": {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS, "items": EVENT}}}},
                "application/x-protobuf": {"schema": {"description": "finegrain.v1.EventBatch"}}}},
            "responses": {"202": _json({"type": "object", "required": ["accepted", "event_ids"], "properties": {
                "accepted": {"type": "integer"}, "event_ids": {"type": "array", "items": {"type": "string"}}}},
                "Accepted: every event acknowledged by the broker"),
                          "400": _error("Malformed or invalid batch; every bad event listed in error.details"),
                          "413": _error(f"Body over {MAX_BODY_BYTES:,} bytes (body_too_large)"),
                          "415": _error("Unsupported content type"),
                          "503": _error("The event broker did not acknowledge the batch, or the key cannot "
                                        "be verified now")}})},
        "/v1/rules": {"get": secured("admin", {"summary": "List rule-based recall definitions",
                                               "responses": {"200": _json({"type": "object"}, "Rules")}})},
        "/v1/rules/{name}": {
            "get": secured("admin", {"summary": "One rule", "responses": {
                "200": _json({"type": "object"}, "The rule"), "400": _error(_NAME_400),
                "404": _error("Unknown rule")}}),
            "put": secured("admin", {"summary": "Create or replace a rule",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["where"], "properties": {
                            "where": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                      "description": "One key: all / any (arrays of expressions), not (an "
                                                     "expression) or an atom (term, category, ...) and its "
                                                     "value; checked against the current datasets"},
                            "order": {"type": "string", "enum": ["popularity", "recency", "price_asc",
                                                                 "price_desc"]},
                            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "scenes": {"type": "array", "items": {"type": "string"}},
                            "enabled": {"type": "boolean"}, "description": {"type": "string"}}}}}},
                    "responses": {"200": _json({"type": "object"}, "Stored"),
                                  "400": _error("Invalid rule; the bad node's path in error.field (at most "
                                                f"{MAX_ATOMS} atoms, {MAX_DEPTH} levels deep)"),
                                  "409": _error("A scene of the rule already has the most enabled rules allowed "
                                                "(limit_reached, field scenes)"),
                                  "413": _error("Body over the rule size limit (body_too_large)"),
                                  "503": _error("Redis (checking the rule's values) or MongoDB (storing it) "
                                                "unreachable")}}),
            "delete": secured("admin", {"summary": "Delete a rule", "responses": {
                "204": {"description": "Deleted"}, "400": _error(_NAME_400), "404": _error("Unknown rule"),
                "503": _error("MongoDB unreachable")}}),
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": _RULE_NAME}]},
        "/v1/rules/{name}/preview": {"get": secured("admin", {
            "summary": "Evaluate a rule for a user, with cache hit or miss per atom",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": _RULE_NAME},
                           _query("user_id", {"type": "string", "pattern": USER_ID_PATTERN.pattern},
                                  "User whose placeholders to resolve.")],
            "responses": {"200": _json({"type": "object"}, "Items and atoms"),
                          "400": _error("A bad user_id or rule name"),
                          "404": _error("Unknown rule")}})},
        "/healthz": {"get": _open({"summary": "Liveness (no key)",
                                   "responses": {"200": {"description": "The process answers"}}})},
        "/readyz": {"get": _open({"summary": "Readiness (no key)", "responses": {
            "200": {"description": "Datasets and the default ranker loaded"},
            "503": {"description": "Still loading, or a required version failed to load"}}})},
        "/metrics": {"get": secured("admin", {
            "summary": "Prometheus metrics (the scope is FINEGRAIN_API_METRICS_SCOPE, admin by default; no key "
                       "on the FINEGRAIN_API_METRICS_BIND listener)",
            "responses": {"200": {"description": "Text format"}}})},
        "/openapi.json": {"get": secured(None, {"summary": "This document (any valid key)",
                                                "responses": {"200": {"description": "OpenAPI"}}})},
    },
    "security": [{SCHEME: []}],
    "components": {"securitySchemes": {SCHEME: {
        "type": "http", "scheme": "bearer", "bearerFormat": "fg_<12-character key id>_<43-character secret>",
        "description": "An API key from `finegrain keys create`, sent as `Authorization: Bearer <key>`. The "
                       "roles listed per operation are the scope the key needs: recommend, events or admin."}},
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"], "properties": {
            "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": ["string", "null"]}, "details": {"type": "array", "items": {"type": "object"}}}}}}}},
}


def document(metrics_scope: str = "admin", scenes: Sequence[str] | None = None) -> dict[str, Any]:
    """The document of a deployment: /metrics needs its FINEGRAIN_API_METRICS_SCOPE, and `scene` takes
    the scenes of its configuration."""
    paths = dict(DOCUMENT["paths"])
    metrics = paths["/metrics"]["get"]
    paths["/metrics"] = {"get": {**metrics, "security": [{SCHEME: [metrics_scope]}]}}
    if scenes is not None:
        recommend = paths["/v1/recommendations"]["get"]
        parameters = [{**p, "schema": {"type": "string", "enum": list(scenes)}} if p["name"] == "scene" else p
                      for p in recommend["parameters"]]
        paths["/v1/recommendations"] = {"get": {**recommend, "parameters": parameters}}
    return {**DOCUMENT, "paths": paths}


class OpenApiResource:
    auth: ClassVar[Access] = {"GET": ANY_KEY}

    def __init__(self, metrics_scope: str = "admin", scenes: Sequence[str] | None = None) -> None:
        self.document = document(metrics_scope, scenes)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
