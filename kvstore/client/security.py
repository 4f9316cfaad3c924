"""Client credentials: TLS towards the nodes, a client certificate, or user + password.

`Credentials(tls_dir=..., user=..., password=...)`: channels verify the node's certificate
against `tls_dir/ca.crt`; the client logs in once (Security.Login) and sends the token as
`authorization: Bearer ...` on every call, logging in again when it expires.
`cert=NAME` presents `tls_dir/NAME.crt` instead, and then no login is made (the
certificate is the credential): the node maps it to the user NAME (or, for a node
certificate, to an admin). Nodes see client certificates only where they ask for them: a
peer port, or a single port shared by peers and clients (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from kvstore.core.errors import InvalidArgument


@dataclass
class Credentials:
    tls_dir: Path | None = None
    cert: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.tls_dir is not None:
            self.tls_dir = Path(self.tls_dir)
        if (self.user is None) != (self.password is None):
            raise InvalidArgument("--user and --password-file go together")
        if (self.cert or self.user) and self.tls_dir is None:
            raise InvalidArgument("credentials need TLS: pass --tls DIR (the directory with "
                                  "the cluster's ca.crt)")

    @property
    def secure(self) -> bool:
        return self.tls_dir is not None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.tls_dir is not None
        try:
            root = (self.tls_dir / "ca.crt").read_bytes()
            if self.cert:
                key = (self.tls_dir / f"{self.cert}.key").read_bytes()
                chain = (self.tls_dir / f"{self.cert}.crt").read_bytes()
                return grpc.ssl_channel_credentials(root, key, chain)
        except OSError as exc:
            raise InvalidArgument(f"cannot read {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_channel_credentials(root)

    def aio_channel(self, address: str, options) -> grpc.aio.Channel:
        if not self.secure:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, self.channel_credentials(), options=options)

    def channel(self, address: str, options=None) -> grpc.Channel:
        if not self.secure:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, self.channel_credentials(), options=options)


def login_metadata(credentials: Credentials, channel: grpc.Channel,
                   timeout: float) -> tuple[tuple[str, str], ...]:
    """Blocking: log in over `channel` and return the call metadata (empty without a user).
    Raises grpc.RpcError as the call does."""
    if credentials.user is None or credentials.cert:
        return ()  # a certificate, when given, is the credential
    from kvstore._proto import security_pb2 as spb
    from kvstore._proto import security_pb2_grpc

    reply = security_pb2_grpc.SecurityStub(channel).Login(
        spb.LoginRequest(user=credentials.user, password=credentials.password or ""),
        timeout=timeout)
    return (("authorization", f"Bearer {reply.token}"),)


def read_password_file(path: str | Path) -> str:
    """The first line of a password file (a trailing newline is not part of it)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read password file {path}: {exc.strerror}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise InvalidArgument(f"password file {path} is empty")
    return password
