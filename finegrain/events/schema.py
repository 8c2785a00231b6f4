"""What a posted behaviour event is: its fields as a client sends them (`EventIn`, `EventContextIn`),
the limits on each, the accepted event types, and the timestamp rules (epoch milliseconds or ISO-8601
with an offset, within a window around the server's clock).

The models validate one event; `serving.events.parsing` turns a whole body into them and their errors
into field-naming refusals.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from finegrain.schemas import EventType

MAX_EVENTS = 500
MAX_BODY_BYTES = 1024 * 1024
MAX_QUANTITY = 10_000
MAX_ID_CHARS = 64
MAX_CONTEXT_CHARS = 256
MAX_CONTEXT_EXTRA = 32
MAX_FUTURE_MS = 5 * 60 * 1000
MIN_TIMESTAMP_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)

TYPE_NAMES: dict[str, int] = {
    "view": EventType.VIEW,
    "click": EventType.CLICK,
    "add_to_cart": EventType.ADD_TO_CART,
    "purchase": EventType.PURCHASE,
}


def _identifier(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return value


Text = Annotated[str, Field(max_length=MAX_CONTEXT_CHARS)]
# pydantic already refuses a lone surrogate ("\ud800"), which no UTF-8 consumer downstream could read.
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_identifier)]


class EventContextIn(BaseModel):
    """Where the event happened; every field is optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    scene: Text | None = None
    session_id: Text | None = None
    country: Text | None = None
    device: Text | None = None
    request_id: Text | None = None
    extra: dict[Text, Text] = Field(default_factory=dict, max_length=MAX_CONTEXT_EXTRA)


class EventIn(BaseModel):
    """One posted event, as a client sends it in JSON. Validate with `context={"now_ms": ...}`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Identifier
    item_id: Identifier
    type: Literal["view", "click", "add_to_cart", "purchase"]
    quantity: int = Field(1, ge=1, le=MAX_QUANTITY)
    price: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    timestamp: int | None = None
    event_id: Identifier | None = None
    context: EventContextIn | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _type_case_insensitive(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in TYPE_NAMES:
            return value.lower()
        raise PydanticCustomError(
            "event_type", "must be one of {allowed} (case-insensitive), got {got}",
            {"allowed": ", ".join(TYPE_NAMES), "got": json.dumps(value, default=str)})

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_ms(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        now_ms = int((info.context or {}).get("now_ms") or time.time() * 1000)
        return parse_timestamp(value, now_ms)


def parse_timestamp(value: Any, now_ms: int) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 string with an offset, within the accepted window."""
    if isinstance(value, int) and not isinstance(value, bool):
        millis = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "timestamp", "is not an ISO-8601 date-time (e.g. 2010-12-01T08:26:00Z): {got}",
                {"got": json.dumps(value)}) from None
        if parsed.tzinfo is None:
            # A time without an offset could be any zone; guessing UTC would shift a client's events by hours.
            raise PydanticCustomError(
                "timestamp", "needs a UTC offset (e.g. 2010-12-01T08:26:00Z or +01:00): {got}",
                {"got": json.dumps(value)})
        millis = int(parsed.timestamp() * 1000)
    else:
        raise PydanticCustomError(
            "timestamp", "must be epoch milliseconds (integer) or an ISO-8601 string, got {got}",
            {"got": json.dumps(value, default=str)})
    if millis < MIN_TIMESTAMP_MS:
        # The usual cause is seconds sent where milliseconds are expected.
        raise PydanticCustomError(
            "timestamp", "{got} is before 2000-01-01; timestamps are epoch milliseconds, not seconds",
            {"got": millis})
    if millis > now_ms + MAX_FUTURE_MS:
        raise PydanticCustomError(
            "timestamp", "{got} is more than 5 minutes in the future (server time {now})",
            {"got": millis, "now": now_ms})
    return millis
