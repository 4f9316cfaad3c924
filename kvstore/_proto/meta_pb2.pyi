from kvstore._proto import txn_pb2 as _txn_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetaCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    META_OK: _ClassVar[MetaCode]
    META_COMPARE_FAILED: _ClassVar[MetaCode]
    META_NOT_FOUND: _ClassVar[MetaCode]
    META_NO_LEASE: _ClassVar[MetaCode]
    META_SESSION_EXPIRED: _ClassVar[MetaCode]
    META_BAD_REQUEST: _ClassVar[MetaCode]
    META_NOT_HOLDER: _ClassVar[MetaCode]
    META_UNAVAILABLE: _ClassVar[MetaCode]
    META_UNKNOWN: _ClassVar[MetaCode]
    META_QUEUED: _ClassVar[MetaCode]
    META_COMPACTED: _ClassVar[MetaCode]
META_OK: MetaCode
META_COMPARE_FAILED: MetaCode
META_NOT_FOUND: MetaCode
META_NO_LEASE: MetaCode
META_SESSION_EXPIRED: MetaCode
META_BAD_REQUEST: MetaCode
META_NOT_HOLDER: MetaCode
META_UNAVAILABLE: MetaCode
META_UNKNOWN: MetaCode
META_QUEUED: MetaCode
META_COMPACTED: MetaCode

class Session(_message.Message):
    __slots__ = ("client_id", "seq", "acked")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    acked: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., acked: _Optional[int] = ...) -> None: ...

class MetaPut(_message.Message):
    __slots__ = ("key", "value", "lease")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    lease: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., lease: _Optional[int] = ...) -> None: ...

class MetaDelete(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class MetaCas(_message.Message):
    __slots__ = ("key", "expect_absent", "expected", "delete", "value", "lease")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    key: str
    expect_absent: bool
    expected: str
    delete: bool
    value: str
    lease: int
    def __init__(self, key: _Optional[str] = ..., expect_absent: _Optional[bool] = ..., expected: _Optional[str] = ..., delete: _Optional[bool] = ..., value: _Optional[str] = ..., lease: _Optional[int] = ...) -> None: ...

class RegisterClient(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaseGrant(_message.Message):
    __slots__ = ("ttl_ms",)
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    ttl_ms: int
    def __init__(self, ttl_ms: _Optional[int] = ...) -> None: ...

class LeaseKeepAlive(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    def __init__(self, lease: _Optional[int] = ...) -> None: ...

class LeaseRevoke(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    def __init__(self, lease: _Optional[int] = ...) -> None: ...

class LeaseExpire(_message.Message):
    __slots__ = ("lease", "refreshed")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    lease: int
    refreshed: int
    def __init__(self, lease: _Optional[int] = ..., refreshed: _Optional[int] = ...) -> None: ...

class LeaseRemaining(_message.Message):
    __slots__ = ("lease", "remaining_ms")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    lease: int
    remaining_ms: int
    def __init__(self, lease: _Optional[int] = ..., remaining_ms: _Optional[int] = ...) -> None: ...

class LeaseCheckpoint(_message.Message):
    __slots__ = ("leases", "as_of")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRemaining]
    as_of: int
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseRemaining, _Mapping]]] = ..., as_of: _Optional[int] = ...) -> None: ...

class LockAcquire(_message.Message):
    __slots__ = ("name", "lease")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease: int
    def __init__(self, name: _Optional[str] = ..., lease: _Optional[int] = ...) -> None: ...

class LockRelease(_message.Message):
    __slots__ = ("name", "lease", "token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease: int
    token: int
    def __init__(self, name: _Optional[str] = ..., lease: _Optional[int] = ..., token: _Optional[int] = ...) -> None: ...

class RingChange(_message.Message):
    __slots__ = ("node", "status", "tokens", "replaces", "by")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    node: str
    status: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    replaces: str
    by: str
    def __init__(self, node: _Optional[str] = ..., status: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., replaces: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class RingRecord(_message.Message):
    __slots__ = ("node", "status", "tokens", "revision", "replaces", "replaced_by", "by")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    node: str
    status: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    revision: int
    replaces: str
    replaced_by: str
    by: str
    def __init__(self, node: _Optional[str] = ..., status: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., revision: _Optional[int] = ..., replaces: _Optional[str] = ..., replaced_by: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class RingRead(_message.Message):
    __slots__ = ("serializable",)
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    serializable: bool
    def __init__(self, serializable: _Optional[bool] = ...) -> None: ...

class MetaCommand(_message.Message):
    __slots__ = ("session", "put", "delete", "cas", "register", "lease_grant", "lease_keepalive", "lease_revoke", "lease_expire", "lease_checkpoint", "lock_acquire", "lock_release", "txn_begin", "txn_decide", "txn_forget", "ring_change")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_FIELD_NUMBER: _ClassVar[int]
    LEASE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LOCK_ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    LOCK_RELEASE_FIELD_NUMBER: _ClassVar[int]
    TXN_BEGIN_FIELD_NUMBER: _ClassVar[int]
    TXN_DECIDE_FIELD_NUMBER: _ClassVar[int]
    TXN_FORGET_FIELD_NUMBER: _ClassVar[int]
    RING_CHANGE_FIELD_NUMBER: _ClassVar[int]
    session: Session
    put: MetaPut
    delete: MetaDelete
    cas: MetaCas
    register: RegisterClient
    lease_grant: LeaseGrant
    lease_keepalive: LeaseKeepAlive
    lease_revoke: LeaseRevoke
    lease_expire: LeaseExpire
    lease_checkpoint: LeaseCheckpoint
    lock_acquire: LockAcquire
    lock_release: LockRelease
    txn_begin: _txn_pb2.TxnBegin
    txn_decide: _txn_pb2.TxnDecide
    txn_forget: _txn_pb2.TxnForget
    ring_change: RingChange
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., put: _Optional[_Union[MetaPut, _Mapping]] = ..., delete: _Optional[_Union[MetaDelete, _Mapping]] = ..., cas: _Optional[_Union[MetaCas, _Mapping]] = ..., register: _Optional[_Union[RegisterClient, _Mapping]] = ..., lease_grant: _Optional[_Union[LeaseGrant, _Mapping]] = ..., lease_keepalive: _Optional[_Union[LeaseKeepAlive, _Mapping]] = ..., lease_revoke: _Optional[_Union[LeaseRevoke, _Mapping]] = ..., lease_expire: _Optional[_Union[LeaseExpire, _Mapping]] = ..., lease_checkpoint: _Optional[_Union[LeaseCheckpoint, _Mapping]] = ..., lock_acquire: _Optional[_Union[LockAcquire, _Mapping]] = ..., lock_release: _Optional[_Union[LockRelease, _Mapping]] = ..., txn_begin: _Optional[_Union[_txn_pb2.TxnBegin, _Mapping]] = ..., txn_decide: _Optional[_Union[_txn_pb2.TxnDecide, _Mapping]] = ..., txn_forget: _Optional[_Union[_txn_pb2.TxnForget, _Mapping]] = ..., ring_change: _Optional[_Union[RingChange, _Mapping]] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "create_revision", "mod_revision", "lease", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int
    version: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., lease: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class LeaseInfo(_message.Message):
    __slots__ = ("id", "ttl_ms", "remaining_ms", "keys", "locks")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    id: int
    ttl_ms: int
    remaining_ms: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    locks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., remaining_ms: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., locks: _Optional[_Iterable[str]] = ...) -> None: ...

class LockInfo(_message.Message):
    __slots__ = ("name", "holder", "token", "waiters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: int
    token: int
    waiters: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[int] = ..., token: _Optional[int] = ..., waiters: _Optional[_Iterable[int]] = ...) -> None: ...

class MetaResult(_message.Message):
    __slots__ = ("code", "error", "revision", "prev", "had_prev", "client_id", "lease", "token", "position", "duplicate", "txn")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    HAD_PREV_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    code: MetaCode
    error: str
    revision: int
    prev: KeyValue
    had_prev: bool
    client_id: int
    lease: LeaseInfo
    token: int
    position: int
    duplicate: bool
    txn: _txn_pb2.TxnRecord
    def __init__(self, code: _Optional[_Union[MetaCode, str]] = ..., error: _Optional[str] = ..., revision: _Optional[int] = ..., prev: _Optional[_Union[KeyValue, _Mapping]] = ..., had_prev: _Optional[bool] = ..., client_id: _Optional[int] = ..., lease: _Optional[_Union[LeaseInfo, _Mapping]] = ..., token: _Optional[int] = ..., position: _Optional[int] = ..., duplicate: _Optional[bool] = ..., txn: _Optional[_Union[_txn_pb2.TxnRecord, _Mapping]] = ...) -> None: ...

class MetaRead(_message.Message):
    __slots__ = ("key", "prefix", "serializable")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    key: str
    prefix: bool
    serializable: bool
    def __init__(self, key: _Optional[str] = ..., prefix: _Optional[bool] = ..., serializable: _Optional[bool] = ...) -> None: ...

class LeaseQuery(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    def __init__(self, lease: _Optional[int] = ...) -> None: ...

class LockWait(_message.Message):
    __slots__ = ("name", "lease", "wait_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease: int
    wait_ms: int
    def __init__(self, name: _Optional[str] = ..., lease: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class MetaWatch(_message.Message):
    __slots__ = ("key", "prefix", "start_revision", "wait_ms", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    prefix: bool
    start_revision: int
    wait_ms: int
    limit: int
    def __init__(self, key: _Optional[str] = ..., prefix: _Optional[bool] = ..., start_revision: _Optional[int] = ..., wait_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class MetaEvent(_message.Message):
    __slots__ = ("type", "revision", "kv")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PUT: _ClassVar[MetaEvent.Type]
        DELETE: _ClassVar[MetaEvent.Type]
    PUT: MetaEvent.Type
    DELETE: MetaEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    type: MetaEvent.Type
    revision: int
    kv: KeyValue
    def __init__(self, type: _Optional[_Union[MetaEvent.Type, str]] = ..., revision: _Optional[int] = ..., kv: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class MetaRequest(_message.Message):
    __slots__ = ("command", "read", "lease_query", "lock_wait", "watch", "txn_query", "ring_read", "hops")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    LEASE_QUERY_FIELD_NUMBER: _ClassVar[int]
    LOCK_WAIT_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    TXN_QUERY_FIELD_NUMBER: _ClassVar[int]
    RING_READ_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    command: MetaCommand
    read: MetaRead
    lease_query: LeaseQuery
    lock_wait: LockWait
    watch: MetaWatch
    txn_query: _txn_pb2.TxnQuery
    ring_read: RingRead
    hops: int
    def __init__(self, command: _Optional[_Union[MetaCommand, _Mapping]] = ..., read: _Optional[_Union[MetaRead, _Mapping]] = ..., lease_query: _Optional[_Union[LeaseQuery, _Mapping]] = ..., lock_wait: _Optional[_Union[LockWait, _Mapping]] = ..., watch: _Optional[_Union[MetaWatch, _Mapping]] = ..., txn_query: _Optional[_Union[_txn_pb2.TxnQuery, _Mapping]] = ..., ring_read: _Optional[_Union[RingRead, _Mapping]] = ..., hops: _Optional[int] = ...) -> None: ...

class MetaReply(_message.Message):
    __slots__ = ("result", "kvs", "leases", "lock", "leader", "events", "compact_revision", "leader_address", "ring", "ring_epoch")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    result: MetaResult
    kvs: _containers.RepeatedCompositeFieldContainer[KeyValue]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseInfo]
    lock: LockInfo
    leader: str
    events: _containers.RepeatedCompositeFieldContainer[MetaEvent]
    compact_revision: int
    leader_address: str
    ring: _containers.RepeatedCompositeFieldContainer[RingRecord]
    ring_epoch: int
    def __init__(self, result: _Optional[_Union[MetaResult, _Mapping]] = ..., kvs: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., leases: _Optional[_Iterable[_Union[LeaseInfo, _Mapping]]] = ..., lock: _Optional[_Union[LockInfo, _Mapping]] = ..., leader: _Optional[str] = ..., events: _Optional[_Iterable[_Union[MetaEvent, _Mapping]]] = ..., compact_revision: _Optional[int] = ..., leader_address: _Optional[str] = ..., ring: _Optional[_Iterable[_Union[RingRecord, _Mapping]]] = ..., ring_epoch: _Optional[int] = ...) -> None: ...

class MetaBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[MetaRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[MetaRequest, _Mapping]]] = ...) -> None: ...

class MetaBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[MetaReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[MetaReply, _Mapping]]] = ...) -> None: ...
