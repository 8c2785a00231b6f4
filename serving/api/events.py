"""`POST /v1/events`: a batch of behaviour events, as JSON or as the protobuf EventBatch.

Answers 202 `{"accepted": n, "event_ids": [...]}` once the broker has acknowledged every event; 400 naming
the field (and listing every bad event in `error.details`) when anything is wrong with the batch, in which
case nothing of it is accepted; 415 for another content type; 503 when the broker does not acknowledge in
time. Mounted in `serving.app` over the worker's `EventIngest`, which the worker closes (flushes) at exit.
"""

from __future__ import annotations

from typing import ClassVar

import falcon

from finegrain.apikeys import Scope
from finegrain.events.schema import MAX_BODY_BYTES
from serving.api.auth import Access
from serving.api.body import read_bounded, stream_of
from serving.api.errors import ApiError, invalid, unavailable
from serving.events.ingest import BATCHES, EventIngest
from serving.events.parsing import (
    BODY_TOO_LARGE,
    JSON_MEDIA_TYPE,
    PROTOBUF_MEDIA_TYPES,
    BatchRejected,
    oversized,
)
from serving.events.producer import BrokerUnavailable


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class EventsResource:
    auth: ClassVar[Access] = {"POST": Scope.EVENTS}

    def __init__(self, ingest: EventIngest, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.ingest = ingest
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        kind = media_type(req.content_type)
        if kind != JSON_MEDIA_TYPE and kind not in PROTOBUF_MEDIA_TYPES:
            BATCHES.labels("rejected").inc()
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type {req.content_type or '(none)'} is not accepted; send "
                           f"{JSON_MEDIA_TYPE} or application/x-protobuf (finegrain.v1.EventBatch)",
                           "Content-Type")
        received_ms = self.ingest.now_ms()
        try:
            declared = req.content_length
        except falcon.HTTPError:
            BATCHES.labels("rejected").inc()
            raise invalid("Content-Length", "Content-Length must be a non-negative integer",
                          code="invalid_body") from None
        try:
            body = self._read(req, declared, received_ms)
        except BatchRejected as rejection:
            self.ingest.refuse(rejection)
            raise _as_api_error(rejection) from None
        try:
            accepted = self.ingest.ingest(kind, body, received_ms)
        except BatchRejected as rejection:  # already counted and dead-lettered by ingest()
            raise _as_api_error(rejection) from None
        except BrokerUnavailable as exc:
            raise unavailable(str(exc)) from None
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": len(accepted.event_ids), "event_ids": accepted.event_ids}

    def _read(self, req: falcon.Request, declared: int | None, received_ms: int) -> bytes:
        if declared is not None and declared > self.max_body_bytes:
            # Refused before reading a byte of it, so a huge body costs the worker nothing.
            raise oversized(declared, received_ms)
        body, over = read_bounded(stream_of(req, declared), self.max_body_bytes)
        if over:
            raise oversized(None, received_ms, body)
        return body

    def close(self) -> None:
        self.ingest.close()


def _as_api_error(rejection: BatchRejected) -> ApiError:
    if rejection.code == BODY_TOO_LARGE:
        return ApiError(413, rejection.code, rejection.message, rejection.field)
    return invalid(rejection.field, rejection.message, code=rejection.code, details=rejection.details)
