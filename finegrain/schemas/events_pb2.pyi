from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    VIEW: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    ADD_TO_CART: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
VIEW: EventType
CLICK: EventType
ADD_TO_CART: EventType
PURCHASE: EventType

class EventContext(_message.Message):
    __slots__ = ("scene", "session_id", "country", "device", "request_id", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCENE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    scene: str
    session_id: str
    country: str
    device: str
    request_id: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, scene: _Optional[str] = ..., session_id: _Optional[str] = ..., country: _Optional[str] = ..., device: _Optional[str] = ..., request_id: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BehaviorEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "type", "quantity", "price", "timestamp_ms", "context")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    quantity: int
    price: float
    timestamp_ms: int
    context: EventContext
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., quantity: _Optional[int] = ..., price: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., context: _Optional[_Union[EventContext, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[BehaviorEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[BehaviorEvent, _Mapping]]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("payload", "reason", "source", "received_ms", "field")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_MS_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    reason: str
    source: str
    received_ms: int
    field: str
    def __init__(self, payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ..., received_ms: _Optional[int] = ..., field: _Optional[str] = ...) -> None: ...
