from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "address", "status", "up", "phi", "ownership", "hints_pending", "committed_status")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    OWNERSHIP_FIELD_NUMBER: _ClassVar[int]
    HINTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    status: str
    up: bool
    phi: float
    ownership: float
    hints_pending: int
    committed_status: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., status: _Optional[str] = ..., up: _Optional[bool] = ..., phi: _Optional[float] = ..., ownership: _Optional[float] = ..., hints_pending: _Optional[int] = ..., committed_status: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "replication_factor", "vnodes", "members", "version", "keys_stored", "data_dir", "max_key_bytes", "max_value_bytes", "move", "ring_agreed", "ring_epoch")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_STORED_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    MAX_KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    RING_AGREED_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    replication_factor: int
    vnodes: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    version: str
    keys_stored: int
    data_dir: str
    max_key_bytes: int
    max_value_bytes: int
    move: MoveProgress
    ring_agreed: bool
    ring_epoch: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., replication_factor: _Optional[int] = ..., vnodes: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., version: _Optional[str] = ..., keys_stored: _Optional[int] = ..., data_dir: _Optional[str] = ..., max_key_bytes: _Optional[int] = ..., max_value_bytes: _Optional[int] = ..., move: _Optional[_Union[MoveProgress, _Mapping]] = ..., ring_agreed: _Optional[bool] = ..., ring_epoch: _Optional[int] = ...) -> None: ...

class MoveProgress(_message.Message):
    __slots__ = ("node", "kind", "state", "ranges_done", "ranges_total", "keys", "bytes", "seconds", "eta_seconds", "error", "finished", "leaves_differing", "corrupt_skipped", "replaces")
    NODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RANGES_DONE_FIELD_NUMBER: _ClassVar[int]
    RANGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    LEAVES_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    node: str
    kind: str
    state: str
    ranges_done: int
    ranges_total: int
    keys: int
    bytes: int
    seconds: float
    eta_seconds: float
    error: str
    finished: bool
    leaves_differing: int
    corrupt_skipped: int
    replaces: str
    def __init__(self, node: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., ranges_done: _Optional[int] = ..., ranges_total: _Optional[int] = ..., keys: _Optional[int] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., error: _Optional[str] = ..., finished: _Optional[bool] = ..., leaves_differing: _Optional[int] = ..., corrupt_skipped: _Optional[int] = ..., replaces: _Optional[str] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DecommissionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RepairSummary(_message.Message):
    __slots__ = ("ranges_compared", "leaves_differing", "keys_sent", "keys_received", "bytes_transferred", "seconds", "tombstones_purged", "peers")
    RANGES_COMPARED_FIELD_NUMBER: _ClassVar[int]
    LEAVES_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    KEYS_SENT_FIELD_NUMBER: _ClassVar[int]
    KEYS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_PURGED_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ranges_compared: int
    leaves_differing: int
    keys_sent: int
    keys_received: int
    bytes_transferred: int
    seconds: float
    tombstones_purged: int
    peers: int
    def __init__(self, ranges_compared: _Optional[int] = ..., leaves_differing: _Optional[int] = ..., keys_sent: _Optional[int] = ..., keys_received: _Optional[int] = ..., bytes_transferred: _Optional[int] = ..., seconds: _Optional[float] = ..., tombstones_purged: _Optional[int] = ..., peers: _Optional[int] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peers: _Optional[_Iterable[str]] = ...) -> None: ...

class RepairProgress(_message.Message):
    __slots__ = ("node", "peer", "done", "total", "summary", "finished", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    peer: str
    done: int
    total: int
    summary: RepairSummary
    finished: bool
    error: str
    def __init__(self, node: _Optional[str] = ..., peer: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., summary: _Optional[_Union[RepairSummary, _Mapping]] = ..., finished: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
