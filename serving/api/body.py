"""Reading a request body under a size limit, the same way on every endpoint that takes one.

A declared Content-Length over the limit is refused before a byte is read; a body without one (a
chunked upload) is read up to the limit plus one byte, so a huge body never sits in a worker's memory.
"""

from __future__ import annotations

from typing import Protocol

import falcon

from serving.api.errors import invalid, too_large

_READ_CHUNK = 64 * 1024


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def read_bounded(stream: _Readable, limit: int) -> tuple[bytes, bool]:
    """At most `limit` + 1 bytes of `stream`, and whether the body went over `limit`."""
    read = stream.read
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), size > limit


def declared_length(req: falcon.Request) -> int | None:
    """The request's Content-Length (None without one); a 400 naming it if it is not a number."""
    try:
        return req.content_length
    except falcon.HTTPError:
        raise invalid("Content-Length", "Content-Length must be a non-negative integer",
                      code="invalid_body") from None


def stream_of(req: falcon.Request, declared: int | None) -> _Readable:
    # Without a Content-Length (a chunked upload) only the raw stream sees the body.
    return req.bounded_stream if declared is not None else req.stream


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The whole body, or a 413 with the limit in the message."""
    declared = declared_length(req)
    if declared is not None and declared > limit:
        raise too_large(limit, declared)
    body, over = read_bounded(stream_of(req, declared), limit)
    if over:
        raise too_large(limit, None)
    return body
