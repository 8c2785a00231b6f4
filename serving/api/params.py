"""Query-parameter parsing that refuses, naming the parameter, instead of guessing."""

from __future__ import annotations

import re
from collections.abc import Iterable

import falcon

from serving.api.errors import invalid

MAX_ID_CHARS = 64
# Printable ASCII without spaces, as the data's ids are.
ID_PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{MAX_ID_CHARS}}}$")
ID_RULE = f"1-{MAX_ID_CHARS} printable characters without spaces"


def check_known(req: falcon.Request, allowed: Iterable[str]) -> None:
    """A misspelt parameter (`user=` for `user_id=`) must not be silently ignored."""
    unknown = sorted(set(req.params) - set(allowed))
    if unknown:
        # `?=1` has a parameter without a name: the field named is then the query string itself.
        raise invalid(unknown[0] or "query", f"unknown query parameter {unknown[0]!r}; expected: "
                      f"{', '.join(allowed)}")


def single(req: falcon.Request, name: str) -> str | None:
    value = req.params.get(name)
    if isinstance(value, list):
        raise invalid(name, f"{name} is given {len(value)} times; give it once")
    return value


def optional(req: falcon.Request, name: str) -> str | None:
    """The value of an optional parameter, None when absent; `name=` with nothing is refused rather
    than read as absent (the document says what each parameter takes, and an empty value is none of it)."""
    value = single(req, name)
    if value == "":
        raise invalid(name, f"{name} is empty: give a value or leave the parameter out")
    return value


def identifier(req: falcon.Request, name: str, *, required: bool = True) -> str | None:
    value = single(req, name)
    if value is None or value == "":
        if required:
            raise invalid(name, f"{name} is required")
        return None
    if not ID_PATTERN.match(value):
        raise invalid(name, f"{name} must be {ID_RULE}")
    return value


def integer(req: falcon.Request, name: str, *, default: int, low: int, high: int) -> int:
    value = optional(req, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise invalid(name, f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise invalid(name, f"{name} must be between {low} and {high}, got {number}")
    return number


def boolean(req: falcon.Request, name: str, *, default: bool = False) -> bool:
    value = optional(req, name)
    if value is None:
        return default
    # Exactly the two words the OpenAPI document's boolean serialises to (any case), nothing guessed.
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise invalid(name, f"{name} must be true or false, got {value!r}")


def choice(req: falcon.Request, name: str, options: Iterable[str], *, default: str | None) -> str | None:
    value = optional(req, name)
    if value is None:
        return default
    allowed = list(options)
    if value not in allowed:
        raise invalid(name, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value
