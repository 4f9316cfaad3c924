"""The kvstore client library (async and blocking). See kvstore/client/core.py."""

from kvstore.client.core import (
    AsyncClient,
    Client,
    ConnectionFailed,
    GetResult,
    PutResult,
    Version,
    parse_endpoints,
    trace_to_dict,
)
from kvstore.core.errors import (
    Conflict,
    Corruption,
    Fenced,
    InvalidArgument,
    KVError,
    NotLeader,
    NotReady,
    Timeout,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Corruption",
    "Fenced",
    "GetResult",
    "InvalidArgument",
    "KVError",
    "NotLeader",
    "NotReady",
    "PutResult",
    "Timeout",
    "Unavailable",
    "Version",
    "parse_endpoints",
    "trace_to_dict",
]
