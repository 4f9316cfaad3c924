"""Who may call what on a node process: peer admission (mutual TLS) and client roles.

Peers: with `--tls`, internode traffic needs a certificate from the cluster CA whose
subject says `OU=node`, and the batch's claimed `source` must be the certificate's CN; a
batch that claims another source, or comes with a client certificate, is refused
(PERMISSION_DENIED) and counted. The one exception are metadata requests (`kv meta`,
`kv raft`, `kv user`, and nodes forwarding them): a batch made only of those is a client
call, admitted like any admin call.

Clients: with `--auth`, every RPC but Login and health checks needs a principal - a
bearer token from Login, a client certificate naming a user, or a node certificate (the
node's operator: admin) - whose role allows it: readonly reads and reads status, readwrite
also writes, admin also repairs and changes metadata, users and membership.
"""

from __future__ import annotations

import logging

import grpc

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import internode_pb2 as pb
from kvstore.core import auth as core_auth
from kvstore.core.auth import AuthError
from kvstore.services.auth import AuthService, MetaUnavailable, Principal
from kvstore.services.raft_driver import TAG_CLIENT
from kvstore.transport.certs import KIND_CLIENT, KIND_NODE
from kvstore.transport.tls import TlsFiles, peer_identity

log = logging.getLogger(__name__)

READONLY, READWRITE, ADMIN = core_auth.ROLES
NO_CREDENTIALS = ("no credentials: this cluster requires authentication; pass --user NAME "
                  "--password-file FILE (or a client certificate with --cert)")


def needed_for_batch(batch: cpb.ClientBatch) -> str:
    """The role a client batch needs: readonly for gets only, else readwrite."""
    if all(r.WhichOneof("op") == "get" for r in batch.requests):
        return READONLY
    return READWRITE


def metadata_only(batch: pb.PeerBatch) -> bool:
    return bool(batch.messages) and all(
        m.WhichOneof("body") == "raft" and m.raft[:1] == bytes([TAG_CLIENT])
        for m in batch.messages)


class Guard:
    def __init__(self, node_id: str, tls: TlsFiles | None, auth: AuthService | None) -> None:
        self.node_id = node_id
        self.tls = tls
        self.auth = auth
        self.stats = {"refused_source_mismatch": 0, "refused_not_a_node": 0,
                      "refused_unauthenticated": 0, "refused_permission": 0}

    async def _refuse(self, context, counter: str, code: grpc.StatusCode, msg: str) -> None:
        self.stats[counter] += 1
        await context.abort(code, msg)

    async def client(self, context, needed: str, what: str) -> Principal | None:
        """The caller's principal if it may do `what` (needs role `needed`); else abort.
        None when authentication is off."""
        if self.auth is None:
            return None
        ident = peer_identity(context) if self.tls is not None else None
        principal: Principal | None = None
        try:
            if ident is not None and ident.kind == KIND_NODE:
                principal = Principal(ident.name, ADMIN, "node")
            else:
                token = ""
                for key, value in context.invocation_metadata() or ():
                    if key == "authorization" and isinstance(value, str) and \
                            value.startswith("Bearer "):
                        token = value[len("Bearer "):]
                if token:
                    principal = await self.auth.from_token(token)
                elif ident is not None and ident.kind == KIND_CLIENT:
                    principal = await self.auth.from_certificate(ident.name)
        except AuthError as exc:
            await self._refuse(context, "refused_unauthenticated",
                               grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except MetaUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"cannot check credentials now (metadata group: {exc}); retry")
        if principal is None:
            await self._refuse(context, "refused_unauthenticated",
                               grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIALS)
        if not core_auth.allows(principal.role, needed):
            await self._refuse(context, "refused_permission", grpc.StatusCode.PERMISSION_DENIED,
                               f"user {principal.name!r} ({principal.role}) may not {what}: "
                               f"that needs {needed}")
        return principal

    async def admit(self, context, batch: pb.PeerBatch, client_port: bool) -> None:
        """Admission of an internode batch (GrpcTransport calls it before handling)."""
        if metadata_only(batch):
            await self.client(context, ADMIN, "send metadata requests")
            return
        if client_port:
            await self._refuse(context, "refused_not_a_node", grpc.StatusCode.PERMISSION_DENIED,
                               "internode traffic belongs on the peer port")
        if self.tls is None:
            return  # an insecure cluster: sources are taken on trust (docs/security.md)
        ident = peer_identity(context)
        if ident is None or ident.kind != KIND_NODE:
            who = f"{ident.kind} certificate {ident.name!r}" if ident else "no certificate"
            log.warning("refused internode batch from %s claiming %r", who, batch.source)
            await self._refuse(context, "refused_not_a_node", grpc.StatusCode.PERMISSION_DENIED,
                               f"internode traffic needs a node certificate; got {who}")
        if batch.source != ident.name:
            log.warning("refused internode batch: certificate %r claims to be %r", ident.name,
                        batch.source)
            await self._refuse(context, "refused_source_mismatch",
                               grpc.StatusCode.PERMISSION_DENIED,
                               f"source {batch.source!r} does not match the certificate "
                               f"({ident.name!r})")
