"""Encoding of stored and streamed values: protobuf bytes, deterministic so that equal messages give
equal bytes (map fields are sorted), which the golden-bytes tests and checksums rely on."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from finegrain.errors import DataError

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def decode(message_type: type[M], data: bytes) -> M:
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise DataError(f"not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from None
    return message
