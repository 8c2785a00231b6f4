"""The OpenAPI 3.1 document of the API, served at /openapi.json (kept beside the resources it
describes; tests check every route is documented and every documented route exists)."""

from __future__ import annotations

from typing import Any

import falcon

from serving.api.recommendations import MAX_N

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


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
        "/v1/recommendations": {"get": {
            "summary": "Ranked recommendations for a user",
            "parameters": [
                _query("user_id", {"type": "string", "maxLength": 64}, "The user (unknown users get the cold-start "
                       "path).", True),
                _query("scene", {"type": "string"}, "Configured scene (e.g. home, discovery, deep)."),
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
                    "explain": {"type": "object"}}}, "Recommendations"),
                "400": _error("A missing or malformed parameter, named in error.field"),
            }}},
        "/v1/items/{item_id}/similar": {"get": {
            "summary": "Item-to-item recommendations",
            "parameters": [
                {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}},
                _query("n", {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 20}, "How many items."),
                _query("algorithm", {"type": "string", "enum": ["cosine", "swing"], "default": "cosine"},
                       "Similarity lists to read."),
            ],
            "responses": {"200": _json({"type": "object"}, "Similar items"), "400": _error("Bad parameter"),
                          "404": _error("Unknown item")}}},
        "/v1/events": {"post": {
            "summary": "Send a batch of behaviour events (produced to Kafka)",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "required": ["events"], "properties": {
                    "events": {"type": "array", "maxItems": 500, "items": {"type": "object", "required": [
                        "user_id", "item_id", "type"], "properties": {
                        "user_id": {"type": "string"}, "item_id": {"type": "string"},
                        "type": {"type": "string", "enum": ["view", "click", "add_to_cart", "purchase"]},
                        "quantity": {"type": "integer", "minimum": 1}, "price": {"type": "number", "minimum": 0},
                        "timestamp": {"type": ["integer", "string"]}, "event_id": {"type": "string"},
                        "context": {"type": "object"}}}}}}},
                "application/x-protobuf": {"schema": {"description": "finegrain.v1.EventBatch"}}}},
            "responses": {"202": _json({"type": "object"}, "Accepted: every event acknowledged by the broker"),
                          "400": _error("Malformed or invalid batch; every bad event listed in error.details"),
                          "413": _error("Body too large"), "415": _error("Unsupported content type"),
                          "503": _error("The event broker did not acknowledge the batch")}}},
        "/v1/rules": {"get": {"summary": "List rule-based recall definitions",
                              "responses": {"200": _json({"type": "object"}, "Rules")}}},
        "/v1/rules/{name}": {
            "get": {"summary": "One rule", "responses": {"200": _json({"type": "object"}, "The rule"),
                                                         "404": _error("Unknown rule")}},
            "put": {"summary": "Create or replace a rule",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["where"], "properties": {
                            "where": {"type": "object", "description": "all / any / not of atoms"},
                            "order": {"type": "string", "enum": ["popularity", "recency", "price_asc",
                                                                 "price_desc"]},
                            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "scenes": {"type": "array", "items": {"type": "string"}},
                            "enabled": {"type": "boolean"}, "description": {"type": "string"}}}}}},
                    "responses": {"200": _json({"type": "object"}, "Stored"),
                                  "400": _error("Invalid rule; the bad node's path in error.field")}},
            "delete": {"summary": "Delete a rule", "responses": {"204": {"description": "Deleted"},
                                                                 "404": _error("Unknown rule")}},
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]},
        "/v1/rules/{name}/preview": {"get": {
            "summary": "Evaluate a rule for a user, with cache hit or miss per atom",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           _query("user_id", {"type": "string"}, "User whose placeholders to resolve.")],
            "responses": {"200": _json({"type": "object"}, "Items and atoms"), "404": _error("Unknown rule")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "The process answers"}}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {
            "200": {"description": "Datasets and the default ranker loaded"},
            "503": {"description": "Still loading, or a required version failed to load"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format"}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
    },
    "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"], "properties": {
            "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": ["string", "null"]}, "details": {"type": "array", "items": {"type": "object"}}}}}}}},
}


class OpenApiResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = DOCUMENT
