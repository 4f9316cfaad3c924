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
from kvstore.client.security import Credentials, read_password_file
from kvstore.core.errors import (
    Conflict,
    Corruption,
    Fenced,
    InvalidArgument,
    KVError,
    NotLeader,
    NotReady,
    PermissionDenied,
    Timeout,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Corruption",
    "Credentials",
    "Fenced",
    "GetResult",
    "InvalidArgument",
    "KVError",
    "NotLeader",
    "NotReady",
    "PermissionDenied",
    "PutResult",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Version",
    "parse_endpoints",
    "read_password_file",
    "trace_to_dict",
]
