from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ItemFeatures(_message.Message):
    __slots__ = ("item_id", "description", "price", "price_band", "category", "terms", "popularity_7d", "popularity_30d", "popularity_90d", "distinct_buyers", "repurchase_rate", "trend", "first_seen_ms", "last_seen_ms", "as_of_ms", "units_sold", "revenue", "version")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_BAND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_7D_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_30D_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_90D_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_BUYERS_FIELD_NUMBER: _ClassVar[int]
    REPURCHASE_RATE_FIELD_NUMBER: _ClassVar[int]
    TREND_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    UNITS_SOLD_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    description: str
    price: float
    price_band: int
    category: str
    terms: _containers.RepeatedScalarFieldContainer[str]
    popularity_7d: int
    popularity_30d: int
    popularity_90d: int
    distinct_buyers: int
    repurchase_rate: float
    trend: float
    first_seen_ms: int
    last_seen_ms: int
    as_of_ms: int
    units_sold: int
    revenue: float
    version: str
    def __init__(self, item_id: _Optional[str] = ..., description: _Optional[str] = ..., price: _Optional[float] = ..., price_band: _Optional[int] = ..., category: _Optional[str] = ..., terms: _Optional[_Iterable[str]] = ..., popularity_7d: _Optional[int] = ..., popularity_30d: _Optional[int] = ..., popularity_90d: _Optional[int] = ..., distinct_buyers: _Optional[int] = ..., repurchase_rate: _Optional[float] = ..., trend: _Optional[float] = ..., first_seen_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., as_of_ms: _Optional[int] = ..., units_sold: _Optional[int] = ..., revenue: _Optional[float] = ..., version: _Optional[str] = ...) -> None: ...

class ItemFeatureMatrix(_message.Message):
    __slots__ = ("version", "as_of_ms", "feature_names", "item_ids", "values")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    version: str
    as_of_ms: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, version: _Optional[str] = ..., as_of_ms: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., item_ids: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...
