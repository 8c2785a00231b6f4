from finegrain.schemas import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WindowStats(_message.Message):
    __slots__ = ("days", "baskets", "lines", "spend")
    DAYS_FIELD_NUMBER: _ClassVar[int]
    BASKETS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    days: int
    baskets: int
    lines: int
    spend: float
    def __init__(self, days: _Optional[int] = ..., baskets: _Optional[int] = ..., lines: _Optional[int] = ..., spend: _Optional[float] = ...) -> None: ...

class PurchaseHistory(_message.Message):
    __slots__ = ("item_ids", "times_bought", "last_bought_day", "quantity")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMES_BOUGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_BOUGHT_DAY_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    times_bought: _containers.RepeatedScalarFieldContainer[int]
    last_bought_day: _containers.RepeatedScalarFieldContainer[int]
    quantity: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., times_bought: _Optional[_Iterable[int]] = ..., last_bought_day: _Optional[_Iterable[int]] = ..., quantity: _Optional[_Iterable[float]] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "as_of_ms", "country", "purchase_lines", "baskets", "distinct_items", "total_spend", "avg_basket_value", "avg_basket_size", "avg_item_price", "days_since_last_purchase", "days_since_first_purchase", "windows", "preferred_terms", "preferred_categories", "preferred_price_band", "history", "version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_LINES_FIELD_NUMBER: _ClassVar[int]
    BASKETS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SPEND_FIELD_NUMBER: _ClassVar[int]
    AVG_BASKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    AVG_BASKET_SIZE_FIELD_NUMBER: _ClassVar[int]
    AVG_ITEM_PRICE_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_LAST_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_FIRST_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_TERMS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_PRICE_BAND_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    as_of_ms: int
    country: str
    purchase_lines: int
    baskets: int
    distinct_items: int
    total_spend: float
    avg_basket_value: float
    avg_basket_size: float
    avg_item_price: float
    days_since_last_purchase: int
    days_since_first_purchase: int
    windows: _containers.RepeatedCompositeFieldContainer[WindowStats]
    preferred_terms: _containers.RepeatedScalarFieldContainer[str]
    preferred_categories: _containers.RepeatedScalarFieldContainer[str]
    preferred_price_band: int
    history: PurchaseHistory
    version: str
    def __init__(self, user_id: _Optional[str] = ..., as_of_ms: _Optional[int] = ..., country: _Optional[str] = ..., purchase_lines: _Optional[int] = ..., baskets: _Optional[int] = ..., distinct_items: _Optional[int] = ..., total_spend: _Optional[float] = ..., avg_basket_value: _Optional[float] = ..., avg_basket_size: _Optional[float] = ..., avg_item_price: _Optional[float] = ..., days_since_last_purchase: _Optional[int] = ..., days_since_first_purchase: _Optional[int] = ..., windows: _Optional[_Iterable[_Union[WindowStats, _Mapping]]] = ..., preferred_terms: _Optional[_Iterable[str]] = ..., preferred_categories: _Optional[_Iterable[str]] = ..., preferred_price_band: _Optional[int] = ..., history: _Optional[_Union[PurchaseHistory, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class RecentAction(_message.Message):
    __slots__ = ("item_id", "type", "timestamp_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    type: _events_pb2.EventType
    timestamp_ms: int
    def __init__(self, item_id: _Optional[str] = ..., type: _Optional[_Union[_events_pb2.EventType, str]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ActionCounts(_message.Message):
    __slots__ = ("start_ms", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    START_MS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    counts: _containers.ScalarMap[int, int]
    def __init__(self, start_ms: _Optional[int] = ..., counts: _Optional[_Mapping[int, int]] = ...) -> None: ...

class RealtimeProfile(_message.Message):
    __slots__ = ("user_id", "updated_ms", "recent", "counts_by_type", "window_start_ms", "buckets", "term_affinity", "category_affinity", "session_id", "session_items", "applied_offsets")
    class CountsByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class TermAffinityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CategoryAffinityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AppliedOffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TERM_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    updated_ms: int
    recent: _containers.RepeatedCompositeFieldContainer[RecentAction]
    counts_by_type: _containers.ScalarMap[int, int]
    window_start_ms: int
    buckets: _containers.RepeatedCompositeFieldContainer[ActionCounts]
    term_affinity: _containers.ScalarMap[str, float]
    category_affinity: _containers.ScalarMap[str, float]
    session_id: str
    session_items: _containers.RepeatedScalarFieldContainer[str]
    applied_offsets: _containers.ScalarMap[int, int]
    def __init__(self, user_id: _Optional[str] = ..., updated_ms: _Optional[int] = ..., recent: _Optional[_Iterable[_Union[RecentAction, _Mapping]]] = ..., counts_by_type: _Optional[_Mapping[int, int]] = ..., window_start_ms: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[ActionCounts, _Mapping]]] = ..., term_affinity: _Optional[_Mapping[str, float]] = ..., category_affinity: _Optional[_Mapping[str, float]] = ..., session_id: _Optional[str] = ..., session_items: _Optional[_Iterable[str]] = ..., applied_offsets: _Optional[_Mapping[int, int]] = ...) -> None: ...
