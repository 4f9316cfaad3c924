from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_UNSPECIFIED: _ClassVar[ErrorCode]
    INVALID_ARGUMENT: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
    TIMEOUT: _ClassVar[ErrorCode]
    CORRUPTION: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    NOT_READY: _ClassVar[ErrorCode]
    NOT_LEADER: _ClassVar[ErrorCode]
    CONFLICT: _ClassVar[ErrorCode]
    FENCED: _ClassVar[ErrorCode]
ERROR_UNSPECIFIED: ErrorCode
INVALID_ARGUMENT: ErrorCode
UNAVAILABLE: ErrorCode
TIMEOUT: ErrorCode
CORRUPTION: ErrorCode
INTERNAL: ErrorCode
NOT_READY: ErrorCode
NOT_LEADER: ErrorCode
CONFLICT: ErrorCode
FENCED: ErrorCode

class ClockEntry(_message.Message):
    __slots__ = ("node", "counter")
    NODE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    node: str
    counter: int
    def __init__(self, node: _Optional[str] = ..., counter: _Optional[int] = ...) -> None: ...

class Fence(_message.Message):
    __slots__ = ("lock", "token")
    LOCK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    lock: str
    token: int
    def __init__(self, lock: _Optional[str] = ..., token: _Optional[int] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("dot", "past", "value", "tombstone", "written_at_ms", "seen", "fence", "fences")
    DOT_FIELD_NUMBER: _ClassVar[int]
    PAST_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    FENCES_FIELD_NUMBER: _ClassVar[int]
    dot: ClockEntry
    past: _containers.RepeatedCompositeFieldContainer[ClockEntry]
    value: bytes
    tombstone: bool
    written_at_ms: int
    seen: _containers.RepeatedCompositeFieldContainer[ClockEntry]
    fence: Fence
    fences: _containers.RepeatedCompositeFieldContainer[Fence]
    def __init__(self, dot: _Optional[_Union[ClockEntry, _Mapping]] = ..., past: _Optional[_Iterable[_Union[ClockEntry, _Mapping]]] = ..., value: _Optional[bytes] = ..., tombstone: _Optional[bool] = ..., written_at_ms: _Optional[int] = ..., seen: _Optional[_Iterable[_Union[ClockEntry, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ..., fences: _Optional[_Iterable[_Union[Fence, _Mapping]]] = ...) -> None: ...

class VersionSet(_message.Message):
    __slots__ = ("versions", "actor_epoch", "actor_counter", "purged", "purged_at_ms")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACTOR_COUNTER_FIELD_NUMBER: _ClassVar[int]
    PURGED_FIELD_NUMBER: _ClassVar[int]
    PURGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    actor_epoch: int
    actor_counter: int
    purged: _containers.RepeatedCompositeFieldContainer[ClockEntry]
    purged_at_ms: int
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ..., actor_epoch: _Optional[int] = ..., actor_counter: _Optional[int] = ..., purged: _Optional[_Iterable[_Union[ClockEntry, _Mapping]]] = ..., purged_at_ms: _Optional[int] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("clock", "dots", "fences")
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    DOTS_FIELD_NUMBER: _ClassVar[int]
    FENCES_FIELD_NUMBER: _ClassVar[int]
    clock: _containers.RepeatedCompositeFieldContainer[ClockEntry]
    dots: _containers.RepeatedCompositeFieldContainer[ClockEntry]
    fences: _containers.RepeatedCompositeFieldContainer[Fence]
    def __init__(self, clock: _Optional[_Iterable[_Union[ClockEntry, _Mapping]]] = ..., dots: _Optional[_Iterable[_Union[ClockEntry, _Mapping]]] = ..., fences: _Optional[_Iterable[_Union[Fence, _Mapping]]] = ...) -> None: ...

class Fenced(_message.Message):
    __slots__ = ("lock", "token", "highest", "refused_by", "accepted_by")
    LOCK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_FIELD_NUMBER: _ClassVar[int]
    REFUSED_BY_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_BY_FIELD_NUMBER: _ClassVar[int]
    lock: str
    token: int
    highest: int
    refused_by: _containers.RepeatedScalarFieldContainer[str]
    accepted_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lock: _Optional[str] = ..., token: _Optional[int] = ..., highest: _Optional[int] = ..., refused_by: _Optional[_Iterable[str]] = ..., accepted_by: _Optional[_Iterable[str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "fenced")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    fenced: Fenced
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., fenced: _Optional[_Union[Fenced, _Mapping]] = ...) -> None: ...
