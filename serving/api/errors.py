"""One JSON error shape for every refusal, so a client can always tell which field was wrong.

Body: `{"error": {"status": 400, "code": "invalid_parameter", "message": "...", "field": "n"}}`;
`field` names the query parameter or the JSON path (`events[3].type`) at fault, or is null.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal with a status, a stable machine-readable code and a message a person can act on."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 details: list[dict[str, Any]] | None = None, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message,
                                 "field": self.field}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid(field: str | None, message: str, *, code: str = "invalid_parameter",
            details: list[dict[str, Any]] | None = None) -> ApiError:
    """HTTP 400 naming the bad field."""
    return ApiError(400, code, message, field, details)


def not_found(message: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", message, field)


def unavailable(message: str, *, retry_after_s: int | None = None) -> ApiError:
    """HTTP 503: a dependency the request cannot do without (e.g. the event broker) is down."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return ApiError(503, "unavailable", message, headers=headers)


def too_large(limit: int, size: int | None, field: str = "body") -> ApiError:
    """HTTP 413 with the limit in the message; `size` None: over the limit (a body without Content-Length)."""
    shown = f"{size:,} bytes" if size is not None else f"over {limit:,} bytes"
    return ApiError(413, "body_too_large",
                    f"the body is {shown}; this endpoint takes at most {limit:,} bytes", field)


def conflict(field: str, message: str) -> ApiError:
    """HTTP 409: the request is valid but would break a limit on what is stored (e.g. rules per scene)."""
    return ApiError(409, "limit_reached", message, field)


def _api_error(req: falcon.Request, resp: falcon.Response, error: ApiError, params: dict[str, Any]) -> None:
    resp.status = falcon.code_to_http_status(error.status)
    resp.media = error.body()
    for name, value in error.headers.items():
        resp.set_header(name, value)


def _http_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError,
                params: dict[str, Any]) -> None:
    # Falcon's own refusals (unknown route, bad method, unparseable JSON) in the same shape as ours.
    status = int(error.status_code)
    code = "not_found" if status == 404 else "method_not_allowed" if status == 405 else "bad_request"
    message = error.description or error.title or falcon.code_to_http_status(status)
    resp.status = falcon.code_to_http_status(status)
    resp.media = ApiError(status, code, str(message)).body()
    headers = error.headers
    if isinstance(headers, Mapping):
        headers = headers.items()
    for name, value in headers or ():
        resp.set_header(name, value)


def _unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]) -> None:
    # Never a traceback to the client; the log has it.
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = ApiError(500, "internal_error", "internal error; see the server log").body()


def install_error_handlers(app: falcon.App[Any, Any]) -> None:
    """Falcon picks the most specific handler, so ApiError and HTTPError win over the catch-all."""
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(ApiError, _api_error)
