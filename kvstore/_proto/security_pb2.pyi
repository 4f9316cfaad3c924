from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class LoginRequest(_message.Message):
    __slots__ = ("user", "password")
    USER_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user: str
    password: str
    def __init__(self, user: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("token", "expires_at_ms", "role")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at_ms: int
    role: str
    def __init__(self, token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., role: _Optional[str] = ...) -> None: ...

class TokenClaims(_message.Message):
    __slots__ = ("user", "role", "expires_at_ms", "generation", "issuer")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    expires_at_ms: int
    generation: int
    issuer: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., generation: _Optional[int] = ..., issuer: _Optional[str] = ...) -> None: ...

class SecurityStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SecurityStats(_message.Message):
    __slots__ = ("tls", "auth", "refused_source_mismatch", "refused_not_a_node", "refused_unauthenticated", "refused_permission", "logins", "logins_failed", "certificate_reloads", "peer_address")
    TLS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REFUSED_SOURCE_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    REFUSED_NOT_A_NODE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_UNAUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_PERMISSION_FIELD_NUMBER: _ClassVar[int]
    LOGINS_FIELD_NUMBER: _ClassVar[int]
    LOGINS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_RELOADS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    tls: bool
    auth: bool
    refused_source_mismatch: int
    refused_not_a_node: int
    refused_unauthenticated: int
    refused_permission: int
    logins: int
    logins_failed: int
    certificate_reloads: int
    peer_address: str
    def __init__(self, tls: _Optional[bool] = ..., auth: _Optional[bool] = ..., refused_source_mismatch: _Optional[int] = ..., refused_not_a_node: _Optional[int] = ..., refused_unauthenticated: _Optional[int] = ..., refused_permission: _Optional[int] = ..., logins: _Optional[int] = ..., logins_failed: _Optional[int] = ..., certificate_reloads: _Optional[int] = ..., peer_address: _Optional[str] = ...) -> None: ...
