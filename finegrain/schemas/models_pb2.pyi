from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataSnapshot(_message.Message):
    __slots__ = ("as_of_date", "events_uri", "features_version", "rows", "events_sha256")
    AS_OF_DATE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_URI_FIELD_NUMBER: _ClassVar[int]
    FEATURES_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    as_of_date: str
    events_uri: str
    features_version: str
    rows: int
    events_sha256: str
    def __init__(self, as_of_date: _Optional[str] = ..., events_uri: _Optional[str] = ..., features_version: _Optional[str] = ..., rows: _Optional[int] = ..., events_sha256: _Optional[str] = ...) -> None: ...

class ModelManifest(_message.Message):
    __slots__ = ("name", "version", "artifact_uri", "sha256", "metrics", "features", "data_snapshot", "created_at_ms", "framework", "params")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DATA_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    artifact_uri: str
    sha256: str
    metrics: _containers.ScalarMap[str, float]
    features: _containers.RepeatedScalarFieldContainer[str]
    data_snapshot: DataSnapshot
    created_at_ms: int
    framework: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Iterable[str]] = ..., data_snapshot: _Optional[_Union[DataSnapshot, _Mapping]] = ..., created_at_ms: _Optional[int] = ..., framework: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...
