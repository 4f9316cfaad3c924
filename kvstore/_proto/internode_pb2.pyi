from kvstore._proto import common_pb2 as _common_pb2
from kvstore._proto import client_pb2 as _client_pb2
from kvstore._proto import meta_pb2 as _meta_pb2
from kvstore._proto import txn_pb2 as _txn_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaRead(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class ReplicaWrite(_message.Message):
    __slots__ = ("key", "state", "hint_for", "reply_state", "fence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HINT_FOR_FIELD_NUMBER: _ClassVar[int]
    REPLY_STATE_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    state: _common_pb2.VersionSet
    hint_for: str
    reply_state: bool
    fence: _common_pb2.Fence
    def __init__(self, key: _Optional[bytes] = ..., state: _Optional[_Union[_common_pb2.VersionSet, _Mapping]] = ..., hint_for: _Optional[str] = ..., reply_state: _Optional[bool] = ..., fence: _Optional[_Union[_common_pb2.Fence, _Mapping]] = ...) -> None: ...

class Forward(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _client_pb2.ClientRequest
    def __init__(self, request: _Optional[_Union[_client_pb2.ClientRequest, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "address", "members")
    class MembersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    members: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., members: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AntiEntropyStep(_message.Message):
    __slots__ = ("session", "payload")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    session: int
    payload: bytes
    def __init__(self, session: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class StreamRead(_message.Message):
    __slots__ = ("start", "end", "has_after", "after_token", "after_key", "limit")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    HAS_AFTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AFTER_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    has_after: bool
    after_token: int
    after_key: bytes
    limit: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., has_after: _Optional[bool] = ..., after_token: _Optional[int] = ..., after_key: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class StreamEntry(_message.Message):
    __slots__ = ("key", "state")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    state: _common_pb2.VersionSet
    def __init__(self, key: _Optional[bytes] = ..., state: _Optional[_Union[_common_pb2.VersionSet, _Mapping]] = ...) -> None: ...

class StreamPage(_message.Message):
    __slots__ = ("entries", "done", "crc", "corrupt", "has_resume", "resume_token", "resume_key")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CRC_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    HAS_RESUME_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_KEY_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StreamEntry]
    done: bool
    crc: int
    corrupt: _containers.RepeatedScalarFieldContainer[bytes]
    has_resume: bool
    resume_token: int
    resume_key: bytes
    def __init__(self, entries: _Optional[_Iterable[_Union[StreamEntry, _Mapping]]] = ..., done: _Optional[bool] = ..., crc: _Optional[int] = ..., corrupt: _Optional[_Iterable[bytes]] = ..., has_resume: _Optional[bool] = ..., resume_token: _Optional[int] = ..., resume_key: _Optional[bytes] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("read", "write", "forward", "hello", "raft", "gossip", "extension", "antientropy", "meta", "stream", "txn", "request_id")
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_FIELD_NUMBER: _ClassVar[int]
    ANTIENTROPY_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    read: ReplicaRead
    write: ReplicaWrite
    forward: Forward
    hello: Hello
    raft: bytes
    gossip: bytes
    extension: bytes
    antientropy: AntiEntropyStep
    meta: _meta_pb2.MetaRequest
    stream: StreamRead
    txn: _txn_pb2.TxnPeer
    request_id: str
    def __init__(self, read: _Optional[_Union[ReplicaRead, _Mapping]] = ..., write: _Optional[_Union[ReplicaWrite, _Mapping]] = ..., forward: _Optional[_Union[Forward, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., raft: _Optional[bytes] = ..., gossip: _Optional[bytes] = ..., extension: _Optional[bytes] = ..., antientropy: _Optional[_Union[AntiEntropyStep, _Mapping]] = ..., meta: _Optional[_Union[_meta_pb2.MetaRequest, _Mapping]] = ..., stream: _Optional[_Union[StreamRead, _Mapping]] = ..., txn: _Optional[_Union[_txn_pb2.TxnPeer, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PeerResult(_message.Message):
    __slots__ = ("state", "reply", "hello", "raw", "error", "meta", "page", "txn", "found", "intent_txn")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    INTENT_TXN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.VersionSet
    reply: _client_pb2.ClientReply
    hello: Hello
    raw: bytes
    error: _common_pb2.Error
    meta: _meta_pb2.MetaReply
    page: StreamPage
    txn: _txn_pb2.TxnPeerReply
    found: bool
    intent_txn: str
    def __init__(self, state: _Optional[_Union[_common_pb2.VersionSet, _Mapping]] = ..., reply: _Optional[_Union[_client_pb2.ClientReply, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., raw: _Optional[bytes] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., meta: _Optional[_Union[_meta_pb2.MetaReply, _Mapping]] = ..., page: _Optional[_Union[StreamPage, _Mapping]] = ..., txn: _Optional[_Union[_txn_pb2.TxnPeerReply, _Mapping]] = ..., found: _Optional[bool] = ..., intent_txn: _Optional[str] = ...) -> None: ...

class PeerBatch(_message.Message):
    __slots__ = ("source", "messages")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    source: str
    messages: _containers.RepeatedCompositeFieldContainer[PeerMessage]
    def __init__(self, source: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[PeerMessage, _Mapping]]] = ...) -> None: ...

class PeerBatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PeerResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PeerResult, _Mapping]]] = ...) -> None: ...
