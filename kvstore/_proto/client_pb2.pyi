from kvstore._proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    ONE: _ClassVar[Consistency]
    TWO: _ClassVar[Consistency]
    THREE: _ClassVar[Consistency]
    QUORUM: _ClassVar[Consistency]
    ALL: _ClassVar[Consistency]
    ANY: _ClassVar[Consistency]
CONSISTENCY_UNSPECIFIED: Consistency
ONE: Consistency
TWO: Consistency
THREE: Consistency
QUORUM: Consistency
ALL: Consistency
ANY: Consistency

class Quorum(_message.Message):
    __slots__ = ("level", "count")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    level: Consistency
    count: int
    def __init__(self, level: _Optional[_Union[Consistency, str]] = ..., count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "quorum")
    KEY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    quorum: Quorum
    def __init__(self, key: _Optional[bytes] = ..., quorum: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "context", "quorum", "strict", "sloppy", "fence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    SLOPPY_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    context: bytes
    quorum: Quorum
    strict: bool
    sloppy: bool
    fence: _common_pb2.Fence
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., context: _Optional[bytes] = ..., quorum: _Optional[_Union[Quorum, _Mapping]] = ..., strict: _Optional[bool] = ..., sloppy: _Optional[bool] = ..., fence: _Optional[_Union[_common_pb2.Fence, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "context", "quorum", "strict", "sloppy", "fence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    SLOPPY_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    context: bytes
    quorum: Quorum
    strict: bool
    sloppy: bool
    fence: _common_pb2.Fence
    def __init__(self, key: _Optional[bytes] = ..., context: _Optional[bytes] = ..., quorum: _Optional[_Union[Quorum, _Mapping]] = ..., strict: _Optional[bool] = ..., sloppy: _Optional[bool] = ..., fence: _Optional[_Union[_common_pb2.Fence, _Mapping]] = ...) -> None: ...

class ClientRequest(_message.Message):
    __slots__ = ("get", "put", "delete", "trace", "timeout_ms", "request_id")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    get: GetRequest
    put: PutRequest
    delete: DeleteRequest
    trace: bool
    timeout_ms: int
    request_id: str
    def __init__(self, get: _Optional[_Union[GetRequest, _Mapping]] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., trace: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReplicaTrace(_message.Message):
    __slots__ = ("node", "address", "ok", "latency_ms", "versions", "error", "local", "hint_for", "counted")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    HINT_FOR_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    ok: bool
    latency_ms: float
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Version]
    error: str
    local: bool
    hint_for: str
    counted: bool
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., ok: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., versions: _Optional[_Iterable[_Union[_common_pb2.Version, _Mapping]]] = ..., error: _Optional[str] = ..., local: _Optional[bool] = ..., hint_for: _Optional[str] = ..., counted: _Optional[bool] = ...) -> None: ...

class TraceEvent(_message.Message):
    __slots__ = ("at_ms", "event")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    at_ms: float
    event: str
    def __init__(self, at_ms: _Optional[float] = ..., event: _Optional[str] = ...) -> None: ...

class Trace(_message.Message):
    __slots__ = ("coordinator", "preference_list", "replicas", "events", "total_ms", "required", "forwarded_to", "request_id")
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_LIST_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_TO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    coordinator: str
    preference_list: _containers.RepeatedScalarFieldContainer[str]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaTrace]
    events: _containers.RepeatedCompositeFieldContainer[TraceEvent]
    total_ms: float
    required: int
    forwarded_to: str
    request_id: str
    def __init__(self, coordinator: _Optional[str] = ..., preference_list: _Optional[_Iterable[str]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaTrace, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[TraceEvent, _Mapping]]] = ..., total_ms: _Optional[float] = ..., required: _Optional[int] = ..., forwarded_to: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetResult(_message.Message):
    __slots__ = ("found", "siblings", "context")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SIBLINGS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    siblings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Version]
    context: bytes
    def __init__(self, found: _Optional[bool] = ..., siblings: _Optional[_Iterable[_Union[_common_pb2.Version, _Mapping]]] = ..., context: _Optional[bytes] = ...) -> None: ...

class PutResult(_message.Message):
    __slots__ = ("stored", "context", "concurrent")
    STORED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    stored: _containers.RepeatedCompositeFieldContainer[_common_pb2.Version]
    context: bytes
    concurrent: int
    def __init__(self, stored: _Optional[_Iterable[_Union[_common_pb2.Version, _Mapping]]] = ..., context: _Optional[bytes] = ..., concurrent: _Optional[int] = ...) -> None: ...

class ClientReply(_message.Message):
    __slots__ = ("get", "put", "error", "trace", "forwarded")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    get: GetResult
    put: PutResult
    error: _common_pb2.Error
    trace: Trace
    forwarded: bool
    def __init__(self, get: _Optional[_Union[GetResult, _Mapping]] = ..., put: _Optional[_Union[PutResult, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., trace: _Optional[_Union[Trace, _Mapping]] = ..., forwarded: _Optional[bool] = ...) -> None: ...

class ClientBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ClientRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ClientRequest, _Mapping]]] = ...) -> None: ...

class ClientBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[ClientReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[ClientReply, _Mapping]]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
