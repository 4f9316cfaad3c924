from kvstore._proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TxnState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TXN_UNKNOWN: _ClassVar[TxnState]
    TXN_PENDING: _ClassVar[TxnState]
    TXN_COMMITTED: _ClassVar[TxnState]
    TXN_ABORTED: _ClassVar[TxnState]
TXN_UNKNOWN: TxnState
TXN_PENDING: TxnState
TXN_COMMITTED: TxnState
TXN_ABORTED: TxnState

class TxnVersion(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    version: _common_pb2.Version
    def __init__(self, key: _Optional[bytes] = ..., version: _Optional[_Union[_common_pb2.Version, _Mapping]] = ...) -> None: ...

class TxnBegin(_message.Message):
    __slots__ = ("txn_id", "keys", "coordinator", "deadline_ms", "now_ms", "protocol")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    coordinator: str
    deadline_ms: int
    now_ms: int
    protocol: str
    def __init__(self, txn_id: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., coordinator: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., now_ms: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class TxnDecide(_message.Message):
    __slots__ = ("txn_id", "state", "by", "now_ms", "reason", "versions", "by_coordinator", "commit_hlc")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BY_COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    COMMIT_HLC_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    state: TxnState
    by: str
    now_ms: int
    reason: str
    versions: _containers.RepeatedCompositeFieldContainer[TxnVersion]
    by_coordinator: bool
    commit_hlc: int
    def __init__(self, txn_id: _Optional[str] = ..., state: _Optional[_Union[TxnState, str]] = ..., by: _Optional[str] = ..., now_ms: _Optional[int] = ..., reason: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[TxnVersion, _Mapping]]] = ..., by_coordinator: _Optional[bool] = ..., commit_hlc: _Optional[int] = ...) -> None: ...

class TxnForget(_message.Message):
    __slots__ = ("txn_id",)
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    def __init__(self, txn_id: _Optional[str] = ...) -> None: ...

class TxnRecord(_message.Message):
    __slots__ = ("txn_id", "state", "keys", "coordinator", "deadline_ms", "created_revision", "created_at_ms", "decided_by", "decided_revision", "decided_at_ms", "reason", "versions", "protocol", "commit_hlc")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_REVISION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    COMMIT_HLC_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    state: TxnState
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    coordinator: str
    deadline_ms: int
    created_revision: int
    created_at_ms: int
    decided_by: str
    decided_revision: int
    decided_at_ms: int
    reason: str
    versions: _containers.RepeatedCompositeFieldContainer[TxnVersion]
    protocol: str
    commit_hlc: int
    def __init__(self, txn_id: _Optional[str] = ..., state: _Optional[_Union[TxnState, str]] = ..., keys: _Optional[_Iterable[bytes]] = ..., coordinator: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., created_revision: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., decided_by: _Optional[str] = ..., decided_revision: _Optional[int] = ..., decided_at_ms: _Optional[int] = ..., reason: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[TxnVersion, _Mapping]]] = ..., protocol: _Optional[str] = ..., commit_hlc: _Optional[int] = ...) -> None: ...

class TxnQuery(_message.Message):
    __slots__ = ("txn_id",)
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    def __init__(self, txn_id: _Optional[str] = ...) -> None: ...

class TxnCondition(_message.Message):
    __slots__ = ("kind", "context")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[TxnCondition.Kind]
        CONTEXT: _ClassVar[TxnCondition.Kind]
        ABSENT: _ClassVar[TxnCondition.Kind]
    NONE: TxnCondition.Kind
    CONTEXT: TxnCondition.Kind
    ABSENT: TxnCondition.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    kind: TxnCondition.Kind
    context: bytes
    def __init__(self, kind: _Optional[_Union[TxnCondition.Kind, str]] = ..., context: _Optional[bytes] = ...) -> None: ...

class TxnPrepare(_message.Message):
    __slots__ = ("txn_id", "key", "write", "value", "tombstone", "condition", "deadline_ms", "coordinator", "hlc", "protocol", "timeout_ms", "peers")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    key: bytes
    write: bool
    value: bytes
    tombstone: bool
    condition: TxnCondition
    deadline_ms: int
    coordinator: str
    hlc: int
    protocol: str
    timeout_ms: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, txn_id: _Optional[str] = ..., key: _Optional[bytes] = ..., write: _Optional[bool] = ..., value: _Optional[bytes] = ..., tombstone: _Optional[bool] = ..., condition: _Optional[_Union[TxnCondition, _Mapping]] = ..., deadline_ms: _Optional[int] = ..., coordinator: _Optional[str] = ..., hlc: _Optional[int] = ..., protocol: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class TxnAsk(_message.Message):
    __slots__ = ("txn_id",)
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    def __init__(self, txn_id: _Optional[str] = ...) -> None: ...

class TxnPreCommit(_message.Message):
    __slots__ = ("txn_id", "key", "version", "hlc")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    key: bytes
    version: _common_pb2.Version
    hlc: int
    def __init__(self, txn_id: _Optional[str] = ..., key: _Optional[bytes] = ..., version: _Optional[_Union[_common_pb2.Version, _Mapping]] = ..., hlc: _Optional[int] = ...) -> None: ...

class TxnResolve(_message.Message):
    __slots__ = ("txn_id", "key", "commit", "version", "hlc")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    key: bytes
    commit: bool
    version: _common_pb2.Version
    hlc: int
    def __init__(self, txn_id: _Optional[str] = ..., key: _Optional[bytes] = ..., commit: _Optional[bool] = ..., version: _Optional[_Union[_common_pb2.Version, _Mapping]] = ..., hlc: _Optional[int] = ...) -> None: ...

class TxnRead(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class TxnPeer(_message.Message):
    __slots__ = ("prepare", "resolve", "read", "precommit", "ask")
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PRECOMMIT_FIELD_NUMBER: _ClassVar[int]
    ASK_FIELD_NUMBER: _ClassVar[int]
    prepare: TxnPrepare
    resolve: TxnResolve
    read: TxnRead
    precommit: TxnPreCommit
    ask: TxnAsk
    def __init__(self, prepare: _Optional[_Union[TxnPrepare, _Mapping]] = ..., resolve: _Optional[_Union[TxnResolve, _Mapping]] = ..., read: _Optional[_Union[TxnRead, _Mapping]] = ..., precommit: _Optional[_Union[TxnPreCommit, _Mapping]] = ..., ask: _Optional[_Union[TxnAsk, _Mapping]] = ...) -> None: ...

class TxnIntent(_message.Message):
    __slots__ = ("txn_id", "write", "value", "tombstone", "deadline_ms", "coordinator", "protocol", "precommitted", "version", "phase_deadline_ms", "timeout_ms", "peers")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PRECOMMITTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PHASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    write: bool
    value: bytes
    tombstone: bool
    deadline_ms: int
    coordinator: str
    protocol: str
    precommitted: bool
    version: _common_pb2.Version
    phase_deadline_ms: int
    timeout_ms: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, txn_id: _Optional[str] = ..., write: _Optional[bool] = ..., value: _Optional[bytes] = ..., tombstone: _Optional[bool] = ..., deadline_ms: _Optional[int] = ..., coordinator: _Optional[str] = ..., protocol: _Optional[str] = ..., precommitted: _Optional[bool] = ..., version: _Optional[_Union[_common_pb2.Version, _Mapping]] = ..., phase_deadline_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class TxnPeerReply(_message.Message):
    __slots__ = ("outcome", "error", "conflict_txn", "state", "intent", "has_intent", "hlc", "conflict_protocol", "phase")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[TxnPeerReply.Outcome]
        CONFLICT: _ClassVar[TxnPeerReply.Outcome]
        CONDITION_FAILED: _ClassVar[TxnPeerReply.Outcome]
        REFUSED: _ClassVar[TxnPeerReply.Outcome]
    OK: TxnPeerReply.Outcome
    CONFLICT: TxnPeerReply.Outcome
    CONDITION_FAILED: TxnPeerReply.Outcome
    REFUSED: TxnPeerReply.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_TXN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    HAS_INTENT_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    outcome: TxnPeerReply.Outcome
    error: str
    conflict_txn: str
    state: _common_pb2.VersionSet
    intent: TxnIntent
    has_intent: bool
    hlc: int
    conflict_protocol: str
    phase: str
    def __init__(self, outcome: _Optional[_Union[TxnPeerReply.Outcome, str]] = ..., error: _Optional[str] = ..., conflict_txn: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.VersionSet, _Mapping]] = ..., intent: _Optional[_Union[TxnIntent, _Mapping]] = ..., has_intent: _Optional[bool] = ..., hlc: _Optional[int] = ..., conflict_protocol: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class TxnWrite(_message.Message):
    __slots__ = ("key", "value", "tombstone")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    tombstone: bool
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., tombstone: _Optional[bool] = ...) -> None: ...

class TxnCheck(_message.Message):
    __slots__ = ("key", "condition")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    condition: TxnCondition
    def __init__(self, key: _Optional[bytes] = ..., condition: _Optional[_Union[TxnCondition, _Mapping]] = ...) -> None: ...

class TxnPutRequest(_message.Message):
    __slots__ = ("txn_id", "writes", "checks", "trace", "ttl_ms", "protocol")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    writes: _containers.RepeatedCompositeFieldContainer[TxnWrite]
    checks: _containers.RepeatedCompositeFieldContainer[TxnCheck]
    trace: bool
    ttl_ms: int
    protocol: str
    def __init__(self, txn_id: _Optional[str] = ..., writes: _Optional[_Iterable[_Union[TxnWrite, _Mapping]]] = ..., checks: _Optional[_Iterable[_Union[TxnCheck, _Mapping]]] = ..., trace: _Optional[bool] = ..., ttl_ms: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class TxnKeyResult(_message.Message):
    __slots__ = ("key", "context")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    context: bytes
    def __init__(self, key: _Optional[bytes] = ..., context: _Optional[bytes] = ...) -> None: ...

class TxnPutReply(_message.Message):
    __slots__ = ("error", "txn_id", "state", "reason", "keys", "trace", "revision", "decided_by", "commit_hlc")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    COMMIT_HLC_FIELD_NUMBER: _ClassVar[int]
    error: _common_pb2.Error
    txn_id: str
    state: TxnState
    reason: str
    keys: _containers.RepeatedCompositeFieldContainer[TxnKeyResult]
    trace: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    decided_by: str
    commit_hlc: int
    def __init__(self, error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., txn_id: _Optional[str] = ..., state: _Optional[_Union[TxnState, str]] = ..., reason: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[TxnKeyResult, _Mapping]]] = ..., trace: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ..., decided_by: _Optional[str] = ..., commit_hlc: _Optional[int] = ...) -> None: ...

class TxnGetRequest(_message.Message):
    __slots__ = ("keys", "trace")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    trace: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., trace: _Optional[bool] = ...) -> None: ...

class TxnValue(_message.Message):
    __slots__ = ("key", "values", "context")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    values: _containers.RepeatedScalarFieldContainer[bytes]
    context: bytes
    def __init__(self, key: _Optional[bytes] = ..., values: _Optional[_Iterable[bytes]] = ..., context: _Optional[bytes] = ...) -> None: ...

class TxnGetReply(_message.Message):
    __slots__ = ("error", "values", "trace", "rounds")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    error: _common_pb2.Error
    values: _containers.RepeatedCompositeFieldContainer[TxnValue]
    trace: _containers.RepeatedScalarFieldContainer[str]
    rounds: int
    def __init__(self, error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., values: _Optional[_Iterable[_Union[TxnValue, _Mapping]]] = ..., trace: _Optional[_Iterable[str]] = ..., rounds: _Optional[int] = ...) -> None: ...

class TxnStatusRequest(_message.Message):
    __slots__ = ("txn_id",)
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    def __init__(self, txn_id: _Optional[str] = ...) -> None: ...

class TxnStatusReply(_message.Message):
    __slots__ = ("error", "record", "found")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    error: _common_pb2.Error
    record: TxnRecord
    found: bool
    def __init__(self, error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., record: _Optional[_Union[TxnRecord, _Mapping]] = ..., found: _Optional[bool] = ...) -> None: ...
