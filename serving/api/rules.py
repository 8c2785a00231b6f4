"""The rules API: CRUD of rule-based recall rules and a preview that evaluates one rule for a user.

    GET    /v1/rules                           every rule (this worker's in-memory copy)
    GET    /v1/rules/{name}                    one rule; 404 if unknown
    PUT    /v1/rules/{name}                    create or replace (body: the rule JSON); 200 with the stored
                                               rule and its version; 400 naming the bad field
    DELETE /v1/rules/{name}                    204; 404 if unknown
    GET    /v1/rules/{name}/preview?user_id=   the rule's items for that user, with cache hit/miss per atom

Every route needs the `admin` scope. A PUT body over `rule_max_body_bytes` is a 413; a rule that would
give one of its scenes more than `rules_per_scene` enabled rules is a 409 naming `scenes`; Redis or
MongoDB unreachable is a 503 (the rule's values cannot be checked, or it cannot be stored).

The routes are mounted in `serving.app` (`add_rule_routes`): `RulesResource` and `RuleResource`, the
latter also with the suffix "preview" for the preview route.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, ClassVar

import falcon
import redis
from pymongo.errors import PyMongoError

from finegrain.apikeys import Scope
from serving.api.auth import Access
from serving.api.body import read_body
from serving.api.errors import ApiError, conflict, invalid, not_found, unavailable
from serving.config import ServingConfig
from serving.rules.atoms import IndexDirectory
from serving.rules.definition import Rule, RuleError, check_rule_name, parse_rule, resolve_placeholder
from serving.rules.engine import VERSIONED_DATASETS, RuleEngine
from serving.rules.store import RuleNotFound, RuleStore

USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _name(name: str) -> str:
    try:
        return check_rule_name(name)
    except RuleError as exc:
        raise invalid("name", exc.message) from None


def _known(store: RuleStore, name: str) -> Any:
    stored = store.current(_name(name))
    if stored is None:
        raise not_found(f"no rule named {name!r}", "name")
    return stored


class RulesResource:
    """`GET /v1/rules`."""

    auth: ClassVar[Access] = {"GET": Scope.ADMIN}

    def __init__(self, store: RuleStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rules = self.store.current_all()
        resp.media = {"rules": [r.to_json() for r in rules], "count": len(rules),
                      "degraded": self.store.degraded}


class RuleResource:
    """`GET/PUT/DELETE /v1/rules/{name}` and (suffix "preview") `GET /v1/rules/{name}/preview`."""

    auth: ClassVar[Access] = {"GET": Scope.ADMIN, "PUT": Scope.ADMIN, "DELETE": Scope.ADMIN}

    def __init__(self, store: RuleStore, engine: RuleEngine, directory: IndexDirectory | None = None, *,
                 config: ServingConfig | None = None) -> None:
        self.store = store
        self.engine = engine
        self.directory = directory or IndexDirectory(engine.client, engine.versions)
        self.config = config or ServingConfig()

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = _known(self.store, name).to_json()

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = _name(name)
        raw = read_body(req, self.config.rule_max_body_bytes)
        if not raw.strip():
            raise invalid("body", "the body must be a rule (JSON object); it is empty")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise invalid("body", f"the body is not valid JSON: {exc}") from None
        try:
            rule = parse_rule(body)
            warnings = self.directory.check(rule.atoms())
        except RuleError as exc:
            raise invalid(exc.field, exc.message, code="invalid_rule") from None
        except redis.RedisError as exc:
            raise unavailable(f"cannot check the rule's values against the indexes: Redis unreachable "
                              f"({type(exc).__name__})", retry_after_s=5) from None
        self._check_scene_limit(name, rule)
        try:
            stored = self.store.put(name, rule)
        except PyMongoError as exc:
            raise unavailable(f"cannot store the rule: MongoDB unreachable ({type(exc).__name__})") from None
        resp.media = {**stored.to_json(), "warnings": warnings}

    def _check_scene_limit(self, name: str, rule: Rule) -> None:
        """Every request evaluates all of its scene's enabled rules: a scene may have `rules_per_scene`.
        Checked on this worker's copy, so two PUTs on two workers in the same second may both pass; the
        request path caps what it evaluates at the same number (`RuleService.candidates`)."""
        if not rule.enabled:
            return
        limit = self.config.rules_per_scene
        others = [stored for stored in self.store.all() if stored.name != name]
        named = {scene for other in others for scene in other.rule.scenes}
        scenes = list(rule.scenes) or sorted(set(self.config.scenes) | named)
        for scene in scenes:
            serving = [r.name for r in others if r.rule.serves(scene)]
            if len(serving) >= limit:
                raise conflict("scenes", f"scene {scene!r} already has {len(serving)} enabled rules, the "
                               f"most allowed (rules_per_scene {limit}); disable or delete one of them first")

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = _name(name)
        try:
            self.store.delete(name)
        except RuleNotFound:
            raise not_found(f"no rule named {name!r}", "name") from None
        except PyMongoError as exc:
            raise unavailable(f"cannot delete the rule: MongoDB unreachable ({type(exc).__name__})") from None
        resp.status = falcon.HTTP_204

    def on_get_preview(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        stored = _known(self.store, name)
        user_id = req.get_param("user_id")
        if user_id is not None and not USER_ID_PATTERN.match(user_id):
            raise invalid("user_id", "user_id must be 1 to 64 of letters, digits, '_', '.', ':', '-'")
        started = time.perf_counter()
        try:
            versions = dict(self.engine.versions())
            profile = self.engine.profile(user_id, versions) if user_id else None
            [result] = self.engine.evaluate_many([stored.named()], profile, versions)
            table = self.engine.item_tables.get(versions)
        except ApiError:
            raise
        except Exception as exc:  # Redis down: an operator tool may say so plainly
            raise unavailable(f"cannot evaluate the rule: {type(exc).__name__}: {exc}") from None
        placeholders = sorted({a.placeholder for a in stored.rule.atoms() if a.placeholder})
        items = []
        for item, score in zip(result.item_ids, result.scores, strict=True):
            row = table.row.get(item)
            entry: dict[str, Any] = {"item_id": item, "score": round(score, 6)}
            if row is not None:
                entry |= {"popularity_30d": float(table.popularity[row]),
                          "price": round(float(table.price[row]), 2),
                          "days_since_first_seen": round(float(table.age_days[row]), 1)}
            items.append(entry)
        resp.media = {
            "rule": stored.name,
            "rule_version": stored.version,
            "user_id": user_id,
            "known_user": profile is not None,
            "resolved": {p: resolve_placeholder(p, profile) for p in placeholders},
            "order": str(stored.rule.order),
            "limit": stored.rule.limit,
            "matched": result.matched,
            "items": items,
            "atoms": [trace.to_json() for trace in result.atoms],
            "versions": {str(d): versions.get(d) for d in VERSIONED_DATASETS},
            "engine_hit_rate": round(self.engine.hit_rate(), 4),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        }
