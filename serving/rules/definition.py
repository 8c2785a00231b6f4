"""What an operator writes: a rule of rule-based recall, validated with the JSON path of every mistake.

A rule is `{"where": <expr>, "order": ..., "limit": ..., "scenes": [...], "enabled": ..., "description": ...}`
where `<expr>` is a boolean tree of atomic predicates:

    {"all": [expr, ...]}    every sub-expression (intersection)
    {"any": [expr, ...]}    at least one (union)
    {"not": expr}           only as an item of an `all` that also holds a positive expression
    {"<atom kind>": value}  one atom (`ATOM_SPECS`), e.g. {"term": "candle"}, {"price_band": 3}

An atom value may be a user placeholder (`PLACEHOLDERS`), resolved per request from the user's
`UserProfile`: one rule then stands for many atomic sub-queries, and every user with the same country
(top category, price band, ...) shares them, which is what makes the atom cache's hit rate rise with
traffic. A placeholder the user cannot resolve (a cold user) makes its atom empty.

Atoms are identified by a canonical form (sorted JSON of kind, value and source dataset) and its
digest; the version of the source dataset goes into the cache key instead, so a new index version
never serves a stale atom.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from finegrain.features.catalog import PRICE_BAND_EDGES_GBP
from finegrain.schemas import UserProfile
from finegrain.storage.contract import Dataset

RULE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_DEPTH = 8
MAX_ATOMS = 32
MAX_BRANCHES = 32
MAX_PRICE_BAND = len(PRICE_BAND_EDGES_GBP)  # bands are 0..MAX_PRICE_BAND
BEST_SELLER_WINDOWS = ("7d", "30d", "90d", "all")
DIGEST_CHARS = 16

AtomValue = str | int | float


class Order(StrEnum):
    """How a rule's items are ordered before the cut at `limit`."""

    POPULARITY = "popularity"  # global 30-day best-seller score (distinct buyers), most popular first
    RECENCY = "recency"  # first seen, newest first
    PRICE_ASC = "price_asc"
    PRICE_DESC = "price_desc"


class Placeholder(StrEnum):
    """User placeholders and the `UserProfile` field each one reads."""

    COUNTRY = "$user.country"  # country
    TOP_CATEGORY = "$user.top_category"  # preferred_categories[0]
    TOP_TERM = "$user.top_term"  # preferred_terms[0]
    PRICE_BAND = "$user.price_band"  # preferred_price_band


PLACEHOLDERS = frozenset(p.value for p in Placeholder)


@dataclass(frozen=True)
class AtomSpec:
    """One kind of atomic predicate: the type of its value and the dataset its result is computed from."""

    kind: str
    dataset: Dataset
    value_type: type
    placeholders: frozenset[str] = frozenset()
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    lowercase: bool = False
    help: str = ""


ATOM_SPECS: dict[str, AtomSpec] = {spec.kind: spec for spec in (
    AtomSpec("term", Dataset.INDEX, str, frozenset({Placeholder.TOP_TERM}), lowercase=True,
             help="items whose description has this indexed term"),
    AtomSpec("category", Dataset.INDEX, str, frozenset({Placeholder.TOP_CATEGORY}), lowercase=True,
             help="items of this derived category"),
    AtomSpec("price_band", Dataset.INDEX, int, frozenset({Placeholder.PRICE_BAND}), minimum=0,
             maximum=MAX_PRICE_BAND, help="items in this price band"),
    AtomSpec("price_band_max", Dataset.INDEX, int, frozenset({Placeholder.PRICE_BAND}), minimum=0,
             maximum=MAX_PRICE_BAND, help="items in this price band or a cheaper one"),
    AtomSpec("price_below", Dataset.FEATURES, float, minimum=0.0, maximum=1e6,
             help="items whose median price (GBP) is below this"),
    AtomSpec("country_best_seller", Dataset.POPULARITY, str, frozenset({Placeholder.COUNTRY}),
             help="the 30-day best sellers of this country (at most 200)"),
    AtomSpec("best_seller", Dataset.POPULARITY, str, choices=BEST_SELLER_WINDOWS,
             help="the global best sellers of this window (at most 1,000)"),
    AtomSpec("new_arrival_days", Dataset.FEATURES, int, minimum=1, maximum=3650,
             help="items first sold within this many days before the features' as-of date"),
    AtomSpec("category_best_seller", Dataset.POPULARITY, str, frozenset({Placeholder.TOP_CATEGORY}),
             lowercase=True, help="the 30-day best sellers of this category (at most 200)"),
)}


class RuleError(ValueError):
    """A refused rule, naming the JSON path of the bad node (e.g. `where.all[1].price_band`)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Atom:
    """One atomic predicate; `value` is a literal or a placeholder (`$user....`)."""

    kind: str
    value: AtomValue
    path: str = field(default="", compare=False)

    @property
    def spec(self) -> AtomSpec:
        return ATOM_SPECS[self.kind]

    @property
    def placeholder(self) -> str | None:
        return self.value if isinstance(self.value, str) and self.value in PLACEHOLDERS else None

    def resolve(self, profile: UserProfile | None) -> Atom | None:
        """This atom with its placeholder replaced by the user's value; None if the user has none."""
        name = self.placeholder
        if name is None:
            return self
        value = resolve_placeholder(name, profile)
        if value is None:
            return None
        try:
            literal = _literal(self.spec, value, self.path)
        except RuleError:
            return None  # e.g. a profile term longer than any indexed one: nothing can match it
        return Atom(self.kind, literal, self.path)

    def canonical(self) -> str:
        if self.placeholder is not None:
            raise ValueError(f"{self.path or self.kind}: resolve the placeholder {self.value} first")
        return canonical_form({"kind": self.kind, "value": self.value, "source": str(self.spec.dataset)})

    def digest(self) -> str:
        return digest_of(self.canonical())

    def to_json(self) -> dict[str, Any]:
        return {self.kind: self.value}


@dataclass(frozen=True)
class AllOf:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    item: Expr


Expr = Atom | AllOf | AnyOf | Not


def canonical_form(fields: Mapping[str, Any]) -> str:
    """Sorted, compact JSON: the same atom gives the same text whatever the order it was written in."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_of(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def resolve_placeholder(name: str, profile: UserProfile | None) -> AtomValue | None:
    """The user's value for a placeholder, or None (no profile, or the profile lacks that field)."""
    if profile is None:
        return None
    if name == Placeholder.COUNTRY:
        return profile.country or None
    if name == Placeholder.TOP_CATEGORY:
        return profile.preferred_categories[0] if profile.preferred_categories else None
    if name == Placeholder.TOP_TERM:
        return profile.preferred_terms[0] if profile.preferred_terms else None
    if name == Placeholder.PRICE_BAND:
        # Band 0 is a real band and also the protobuf default: only a user who bought something has one.
        return int(profile.preferred_price_band) if profile.purchase_lines > 0 else None
    raise ValueError(f"unknown placeholder {name}")


def resolve(expr: Expr, profile: UserProfile | None) -> Expr | None:
    """The expression for one user; an atom the user cannot resolve becomes None (matches nothing)."""
    if isinstance(expr, Atom):
        return expr.resolve(profile)
    if isinstance(expr, Not):
        inner = resolve(expr.item, profile)
        return None if inner is None else Not(inner)
    resolved = tuple(resolve(item, profile) for item in expr.items)
    if isinstance(expr, AllOf):
        positive = [r for r, item in zip(resolved, expr.items, strict=True) if not isinstance(item, Not)]
        if any(r is None for r in positive):
            return None  # one empty positive operand empties the intersection
        kept = tuple(r for r in resolved if r is not None)  # an empty `not` removes nothing
        return AllOf(kept)
    kept = tuple(r for r in resolved if r is not None)
    return AnyOf(kept) if kept else None


def atoms(expr: Expr | None) -> Iterator[Atom]:
    """Every atom of the expression, depth first, in the order written."""
    if expr is None:
        return
    if isinstance(expr, Atom):
        yield expr
    elif isinstance(expr, Not):
        yield from atoms(expr.item)
    else:
        for item in expr.items:
            yield from atoms(item)


def expr_to_json(expr: Expr) -> dict[str, Any]:
    if isinstance(expr, Atom):
        return expr.to_json()
    if isinstance(expr, Not):
        return {"not": expr_to_json(expr.item)}
    key = "all" if isinstance(expr, AllOf) else "any"
    return {key: [expr_to_json(item) for item in expr.items]}


def parse_expr(raw: Any, path: str = "where") -> Expr:
    """Parse and check one expression tree; raises RuleError naming the path of the first bad node."""
    counter = [0]
    return _parse(raw, path, 1, counter, in_all=False)


def _parse(raw: Any, path: str, depth: int, counter: list[int], *, in_all: bool) -> Expr:
    if depth > MAX_DEPTH:
        raise RuleError(path, f"expressions nest at most {MAX_DEPTH} levels deep")
    if not isinstance(raw, dict) or len(raw) != 1:
        kinds = ", ".join(ATOM_SPECS)
        raise RuleError(path, f"an expression is an object with exactly one key: all, any, not or an atom "
                              f"({kinds})")
    [(key, value)] = raw.items()
    here = f"{path}.{key}"
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise RuleError(here, f"`{key}` takes a non-empty list of expressions")
        if len(value) > MAX_BRANCHES:
            raise RuleError(here, f"`{key}` takes at most {MAX_BRANCHES} expressions")
        items = []
        for i, item in enumerate(value):
            items.append(_parse(item, f"{here}[{i}]", depth + 1, counter, in_all=key == "all"))
        if key == "all":
            if all(isinstance(item, Not) for item in items):
                raise RuleError(here, "an `all` holding a `not` needs at least one positive expression "
                                      "(a `not` alone would match the whole catalogue)")
            return AllOf(tuple(items))
        return AnyOf(tuple(items))
    if key == "not":
        if not in_all:
            raise RuleError(here, _BARE_NOT)
        return Not(_parse(value, here, depth + 1, counter, in_all=False))
    spec = ATOM_SPECS.get(key)
    if spec is None:
        raise RuleError(here, f"unknown atom or operator {key!r}: use all, any, not or one of "
                              f"{', '.join(ATOM_SPECS)}")
    counter[0] += 1
    if counter[0] > MAX_ATOMS:
        raise RuleError(here, f"a rule holds at most {MAX_ATOMS} atoms")
    return Atom(key, _literal(spec, value, here, allow_placeholder=True), here)


_BARE_NOT = ("`not` must be an item of an `all` that also holds a positive expression "
             "(a `not` alone would match the whole catalogue)")


def _literal(spec: AtomSpec, value: Any, path: str, *, allow_placeholder: bool = False) -> AtomValue:
    """The canonical literal of an atom value (or the placeholder itself, where allowed)."""
    if isinstance(value, str) and value.startswith("$"):
        if not allow_placeholder:
            raise RuleError(path, f"unexpected placeholder {value}")
        if value not in PLACEHOLDERS:
            known = ", ".join(sorted(PLACEHOLDERS))
            raise RuleError(path, f"unknown placeholder {value!r}: use one of {known}")
        if value not in spec.placeholders:
            allowed = ", ".join(sorted(spec.placeholders)) or "none"
            raise RuleError(path, f"placeholder {value} does not fit `{spec.kind}` (allowed: {allowed})")
        return value
    if spec.value_type is str:
        if not isinstance(value, str) or not value.strip():
            raise RuleError(path, f"`{spec.kind}` takes a non-empty string")
        text = value.strip().lower() if spec.lowercase else value.strip()
        if len(text) > 100:
            raise RuleError(path, f"`{spec.kind}` takes at most 100 characters")
        if spec.choices and text not in spec.choices:
            raise RuleError(path, f"`{spec.kind}` takes one of {', '.join(spec.choices)}, not {value!r}")
        return text
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(path, f"`{spec.kind}` takes a number")
    number: int | float
    if spec.value_type is int:
        if value != int(value):
            raise RuleError(path, f"`{spec.kind}` takes a whole number, not {value}")
        number = int(value)
    else:
        number = float(value)
    if spec.minimum is not None and number < spec.minimum:
        raise RuleError(path, f"`{spec.kind}` must be at least {spec.minimum:g}, not {number}")
    if spec.maximum is not None and number > spec.maximum:
        raise RuleError(path, f"`{spec.kind}` must be at most {spec.maximum:g}, not {number}")
    if spec.kind == "price_below" and number <= 0:
        raise RuleError(path, "`price_below` must be above 0 (nothing costs less than 0)")
    return number


def _validate_where(raw: Any) -> Expr:
    if isinstance(raw, Atom | AllOf | AnyOf | Not):
        return raw
    try:
        return parse_expr(raw)
    except RuleError as exc:
        raise PydanticCustomError("rule_expression", "{message}",
                                  {"path": exc.field or "where", "message": exc.message}) from None


_EXPR_SCHEMA: dict[str, Any] = {
    "description": "A boolean tree: {\"all\": [expr, ...]}, {\"any\": [expr, ...]}, {\"not\": expr} "
                   "(inside an `all` with a positive expression) or one atom: "
                   + "; ".join(f"{{\"{s.kind}\": ...}} {s.help}" for s in ATOM_SPECS.values()),
    "type": "object", "minProperties": 1, "maxProperties": 1,
}

WhereExpr = Annotated[Expr, PlainValidator(_validate_where), PlainSerializer(expr_to_json),
                      WithJsonSchema(_EXPR_SCHEMA)]


class Rule(BaseModel):
    """A rule of rule-based recall, as PUT to `/v1/rules/{name}` and stored in MongoDB."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              arbitrary_types_allowed=True)

    where: WhereExpr
    """Which items: a boolean tree of atoms (see the module docstring and `ATOM_SPECS`)."""
    order: Order = Order.POPULARITY
    """How the matching items are ordered: popularity, recency, price_asc or price_desc."""
    limit: int = Field(200, ge=1, le=1000)
    """How many items the rule recalls at most (after ordering)."""
    scenes: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field((), max_length=32)
    """Scenes the rule serves (e.g. "home", "cart"); empty means every scene."""
    enabled: bool = True
    """A disabled rule is kept but recalls nothing (preview still evaluates it)."""
    description: str = Field("", max_length=500)
    """Free text for operators: what the rule is for."""

    def atoms(self) -> list[Atom]:
        return list(atoms(self.where))

    def serves(self, scene: str | None) -> bool:
        return self.enabled and (not self.scenes or scene is None or scene in self.scenes)


def parse_rule(body: Any) -> Rule:
    """A validated rule from JSON; RuleError names the first bad field (JSON path)."""
    if not isinstance(body, dict):
        raise RuleError("body", "the body must be a JSON object (a rule)")
    if "where" not in body:
        raise RuleError("where", "a rule needs `where`: the expression selecting its items")
    try:
        return Rule.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        ctx = error.get("ctx") or {}
        if error["type"] == "rule_expression":
            raise RuleError(str(ctx["path"]), str(ctx["message"])) from None
        raise RuleError(_json_path(error["loc"]), error["msg"]) from None


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def check_rule_name(name: str) -> str:
    if not RULE_NAME_PATTERN.match(name):
        raise RuleError("name", f"bad rule name {name!r}: 1 to 64 of a-z, 0-9, '_', '-', starting with a "
                                "letter or digit")
    return name
