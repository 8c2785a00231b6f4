from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ScoredItemList(_message.Message):
    __slots__ = ("key", "version", "generated_ms", "channels", "item_ids", "scores", "channel_mask")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATED_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MASK_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: str
    generated_ms: int
    channels: _containers.RepeatedScalarFieldContainer[str]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    channel_mask: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., version: _Optional[str] = ..., generated_ms: _Optional[int] = ..., channels: _Optional[_Iterable[str]] = ..., item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., channel_mask: _Optional[_Iterable[int]] = ...) -> None: ...
