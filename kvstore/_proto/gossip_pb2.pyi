from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_STATUS_UNSPECIFIED: _ClassVar[MemberStatus]
    MEMBER_JOINING: _ClassVar[MemberStatus]
    MEMBER_NORMAL: _ClassVar[MemberStatus]
    MEMBER_LEAVING: _ClassVar[MemberStatus]
    MEMBER_LEFT: _ClassVar[MemberStatus]
MEMBER_STATUS_UNSPECIFIED: MemberStatus
MEMBER_JOINING: MemberStatus
MEMBER_NORMAL: MemberStatus
MEMBER_LEAVING: MemberStatus
MEMBER_LEFT: MemberStatus

class GossipDigest(_message.Message):
    __slots__ = ("node_id", "generation", "max_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    generation: int
    max_version: int
    def __init__(self, node_id: _Optional[str] = ..., generation: _Optional[int] = ..., max_version: _Optional[int] = ...) -> None: ...

class GossipMeta(_message.Message):
    __slots__ = ("version", "address", "status", "tokens")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    version: int
    address: str
    status: MemberStatus
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[int] = ..., address: _Optional[str] = ..., status: _Optional[_Union[MemberStatus, str]] = ..., tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class GossipLoad(_message.Message):
    __slots__ = ("version", "load")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    version: int
    load: int
    def __init__(self, version: _Optional[int] = ..., load: _Optional[int] = ...) -> None: ...

class GossipEndpoint(_message.Message):
    __slots__ = ("node_id", "generation", "heartbeat", "meta", "load")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    generation: int
    heartbeat: int
    meta: GossipMeta
    load: GossipLoad
    def __init__(self, node_id: _Optional[str] = ..., generation: _Optional[int] = ..., heartbeat: _Optional[int] = ..., meta: _Optional[_Union[GossipMeta, _Mapping]] = ..., load: _Optional[_Union[GossipLoad, _Mapping]] = ...) -> None: ...

class GossipSyn(_message.Message):
    __slots__ = ("sender", "cluster", "digests")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    sender: str
    cluster: str
    digests: _containers.RepeatedCompositeFieldContainer[GossipDigest]
    def __init__(self, sender: _Optional[str] = ..., cluster: _Optional[str] = ..., digests: _Optional[_Iterable[_Union[GossipDigest, _Mapping]]] = ...) -> None: ...

class GossipAck(_message.Message):
    __slots__ = ("sender", "states", "requests")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    sender: str
    states: _containers.RepeatedCompositeFieldContainer[GossipEndpoint]
    requests: _containers.RepeatedCompositeFieldContainer[GossipDigest]
    def __init__(self, sender: _Optional[str] = ..., states: _Optional[_Iterable[_Union[GossipEndpoint, _Mapping]]] = ..., requests: _Optional[_Iterable[_Union[GossipDigest, _Mapping]]] = ...) -> None: ...

class GossipAck2(_message.Message):
    __slots__ = ("sender", "states")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    states: _containers.RepeatedCompositeFieldContainer[GossipEndpoint]
    def __init__(self, sender: _Optional[str] = ..., states: _Optional[_Iterable[_Union[GossipEndpoint, _Mapping]]] = ...) -> None: ...

class GossipMessage(_message.Message):
    __slots__ = ("syn", "ack", "ack2")
    SYN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ACK2_FIELD_NUMBER: _ClassVar[int]
    syn: GossipSyn
    ack: GossipAck
    ack2: GossipAck2
    def __init__(self, syn: _Optional[_Union[GossipSyn, _Mapping]] = ..., ack: _Optional[_Union[GossipAck, _Mapping]] = ..., ack2: _Optional[_Union[GossipAck2, _Mapping]] = ...) -> None: ...
