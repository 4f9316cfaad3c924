from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaultRequest(_message.Message):
    __slots__ = ("kind", "peers", "duration_s", "delay_ms", "jitter_ms", "rate", "note")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    duration_s: float
    delay_ms: float
    jitter_ms: float
    rate: float
    note: str
    def __init__(self, kind: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ..., duration_s: _Optional[float] = ..., delay_ms: _Optional[float] = ..., jitter_ms: _Optional[float] = ..., rate: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class HealRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChaosStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ActiveFault(_message.Message):
    __slots__ = ("id", "kind", "peers", "expires_in_s", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    expires_in_s: float
    description: str
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ..., expires_in_s: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class ChaosEvent(_message.Message):
    __slots__ = ("at", "text")
    AT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    at: float
    text: str
    def __init__(self, at: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class ChaosState(_message.Message):
    __slots__ = ("node_id", "faults", "events", "healed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEALED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    faults: _containers.RepeatedCompositeFieldContainer[ActiveFault]
    events: _containers.RepeatedCompositeFieldContainer[ChaosEvent]
    healed: int
    def __init__(self, node_id: _Optional[str] = ..., faults: _Optional[_Iterable[_Union[ActiveFault, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[ChaosEvent, _Mapping]]] = ..., healed: _Optional[int] = ...) -> None: ...
