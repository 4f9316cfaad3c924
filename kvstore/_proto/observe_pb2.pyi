from kvstore._proto import chaos_pb2 as _chaos_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemberView(_message.Message):
    __slots__ = ("id", "address", "status", "up", "phi", "ownership", "hints_pending", "hints_delivered_per_s", "repair_age_s", "repair_leaves_differing", "repair_keys_moved", "repair_ranges")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    HINTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    HINTS_DELIVERED_PER_S_FIELD_NUMBER: _ClassVar[int]
    REPAIR_AGE_S_FIELD_NUMBER: _ClassVar[int]
    REPAIR_LEAVES_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    REPAIR_KEYS_MOVED_FIELD_NUMBER: _ClassVar[int]
    REPAIR_RANGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    status: str
    up: bool
    phi: float
    ownership: float
    hints_pending: int
    hints_delivered_per_s: float
    repair_age_s: float
    repair_leaves_differing: int
    repair_keys_moved: int
    repair_ranges: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., status: _Optional[str] = ..., up: _Optional[bool] = ..., phi: _Optional[float] = ..., ownership: _Optional[float] = ..., hints_pending: _Optional[int] = ..., hints_delivered_per_s: _Optional[float] = ..., repair_age_s: _Optional[float] = ..., repair_leaves_differing: _Optional[int] = ..., repair_keys_moved: _Optional[int] = ..., repair_ranges: _Optional[int] = ...) -> None: ...

class RaftMemberView(_message.Message):
    __slots__ = ("id", "role", "lag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: str
    lag: int
    def __init__(self, id: _Optional[str] = ..., role: _Optional[str] = ..., lag: _Optional[int] = ...) -> None: ...

class RaftView(_message.Message):
    __slots__ = ("voter", "term", "leader", "role", "commit_index", "applied_index", "last_index", "members")
    VOTER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    voter: bool
    term: int
    leader: str
    role: str
    commit_index: int
    applied_index: int
    last_index: int
    members: _containers.RepeatedCompositeFieldContainer[RaftMemberView]
    def __init__(self, voter: _Optional[bool] = ..., term: _Optional[int] = ..., leader: _Optional[str] = ..., role: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., last_index: _Optional[int] = ..., members: _Optional[_Iterable[_Union[RaftMemberView, _Mapping]]] = ...) -> None: ...

class RequestStats(_message.Message):
    __slots__ = ("op", "level", "count", "errors", "p50_ms", "p99_ms")
    OP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    op: str
    level: str
    count: int
    errors: int
    p50_ms: float
    p99_ms: float
    def __init__(self, op: _Optional[str] = ..., level: _Optional[str] = ..., count: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class StorageView(_message.Message):
    __slots__ = ("records", "tombstones", "purge_markers", "disk_bytes", "write_p99_ms", "fsync_p99_ms", "census_age_s")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    PURGE_MARKERS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    FSYNC_P99_MS_FIELD_NUMBER: _ClassVar[int]
    CENSUS_AGE_S_FIELD_NUMBER: _ClassVar[int]
    records: int
    tombstones: int
    purge_markers: int
    disk_bytes: int
    write_p99_ms: float
    fsync_p99_ms: float
    census_age_s: float
    def __init__(self, records: _Optional[int] = ..., tombstones: _Optional[int] = ..., purge_markers: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., write_p99_ms: _Optional[float] = ..., fsync_p99_ms: _Optional[float] = ..., census_age_s: _Optional[float] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node_id", "address", "wall_time", "uptime_s", "members", "raft", "requests", "faults", "events", "keys_stored", "metrics_url", "replication_factor", "vnodes", "storage")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_STORED_FIELD_NUMBER: _ClassVar[int]
    METRICS_URL_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    wall_time: float
    uptime_s: float
    members: _containers.RepeatedCompositeFieldContainer[MemberView]
    raft: RaftView
    requests: _containers.RepeatedCompositeFieldContainer[RequestStats]
    faults: _containers.RepeatedCompositeFieldContainer[_chaos_pb2.ActiveFault]
    events: _containers.RepeatedCompositeFieldContainer[_chaos_pb2.ChaosEvent]
    keys_stored: int
    metrics_url: str
    replication_factor: int
    vnodes: int
    storage: StorageView
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., wall_time: _Optional[float] = ..., uptime_s: _Optional[float] = ..., members: _Optional[_Iterable[_Union[MemberView, _Mapping]]] = ..., raft: _Optional[_Union[RaftView, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[RequestStats, _Mapping]]] = ..., faults: _Optional[_Iterable[_Union[_chaos_pb2.ActiveFault, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[_chaos_pb2.ChaosEvent, _Mapping]]] = ..., keys_stored: _Optional[int] = ..., metrics_url: _Optional[str] = ..., replication_factor: _Optional[int] = ..., vnodes: _Optional[int] = ..., storage: _Optional[_Union[StorageView, _Mapping]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("request_id", "limit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    limit: int
    def __init__(self, request_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class LogsReply(_message.Message):
    __slots__ = ("node_id", "lines")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ...) -> None: ...
