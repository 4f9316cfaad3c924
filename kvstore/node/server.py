"""A node as a real process: gRPC servers around a Node, durable storage, clean shutdown.

One port serves the client API (KV), the internode API, the admin API, the security API
and the standard grpc.health.v1 service, unless a separate peer listener is configured
(--peer-listen; see docs/security.md). Health says SERVING once the node knows its
cluster's membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from kvstore import __version__
from kvstore._proto import (
    admin_pb2,
    admin_pb2_grpc,
    chaos_pb2_grpc,
    client_pb2_grpc,
    meta_pb2_grpc,
    observe_pb2_grpc,
    security_pb2_grpc,
    txn_pb2_grpc,
)
from kvstore._proto import (
    client_pb2 as cpb,
)
from kvstore._proto import security_pb2 as spb
from kvstore.core import auth as core_auth
from kvstore.core.auth import AuthError
from kvstore.core.errors import KVError
from kvstore.node.config import NodeConfig
from kvstore.node.meta_service import MetaServicer
from kvstore.node.node import Node
from kvstore.node.observe import ChaosServicer, Observer, ObserveServicer
from kvstore.node.security import ADMIN, READONLY, Guard, needed_for_batch
from kvstore.node.txn_service import TxnServicer
from kvstore.services.antientropy import summary_pb
from kvstore.services.auth import (
    AuthService,
    MetaUnavailable,
    MetaUsers,
    from_meta_reply,
    to_meta_request,
)
from kvstore.storage import AsyncStore, open_engine
from kvstore.transport.grpc_transport import CHANNEL_OPTIONS, GrpcTransport
from kvstore.transport.tls import TlsFiles

log = logging.getLogger(__name__)

# gRPC servers set SO_REUSEPORT by default: a second process could then bind a node's port
# too and the kernel would split connections between them (seen when two test runs on one
# machine picked the same free port: some requests met a server without the KV service).
# Off, a port that is taken fails the start with "address in use".
SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


class KVServicer(client_pb2_grpc.KVServicer):
    def __init__(self, node: Node, observer: Observer, guard: Guard | None = None) -> None:
        self.node = node
        self.observer = observer
        self.guard = guard or Guard(node.node_id, None, None)

    async def Execute(self, request: cpb.ClientBatch, context) -> cpb.ClientBatchReply:
        if self.guard.auth is not None:
            need = needed_for_batch(request)
            await self.guard.client(context, need, "read" if need == READONLY else "write")
        execute = self.observer.execute  # the coordinator, timed and counted for /metrics
        if len(request.requests) == 1:
            return cpb.ClientBatchReply(replies=[await execute(request.requests[0])])
        replies = await asyncio.gather(*(execute(r) for r in request.requests))
        return cpb.ClientBatchReply(replies=replies)

    async def Ping(self, request: cpb.PingRequest, context) -> cpb.PingReply:
        await self.guard.client(context, READONLY, "ping")
        return cpb.PingReply(payload=request.payload)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: Node, guard: Guard | None = None) -> None:
        self.node = node
        self.guard = guard or Guard(node.node_id, None, None)

    async def Info(self, request: admin_pb2.InfoRequest, context) -> admin_pb2.NodeInfo:
        await self.guard.client(context, READONLY, "read node status")
        return await node_info(self.node)

    async def Repair(self, request: admin_pb2.RepairRequest, context):
        """Anti-entropy with every peer now, streaming progress after each peer."""
        await self.guard.client(context, ADMIN, "run repair")
        service = self.node.antientropy
        known = set(service.peers())
        unknown = [p for p in request.peers if p not in known]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown peers {unknown}; this node shares keys with "
                                f"{sorted(known)}")
        queue: asyncio.Queue = asyncio.Queue()
        purged_before = service.metrics["tombstones_purged"]
        started = asyncio.get_running_loop().time()

        def progress(peer: str, done: int, total: int, stats) -> None:
            seconds = asyncio.get_running_loop().time() - started
            queue.put_nowait(admin_pb2.RepairProgress(
                node=self.node.node_id, peer=peer, done=done, total=total,
                summary=summary_pb(stats, seconds,
                                   service.metrics["tombstones_purged"] - purged_before, done)))

        task = asyncio.ensure_future(service.repair(list(request.peers) or None, progress))
        total = len(request.peers) or len(known)
        for _ in range(total):
            yield await queue.get()
        stats, seconds, errors = await task
        yield admin_pb2.RepairProgress(
            node=self.node.node_id, done=total, total=total, finished=True,
            error="; ".join(errors),
            summary=summary_pb(stats, seconds,
                               service.metrics["tombstones_purged"] - purged_before, total))


    async def Decommission(self, request: admin_pb2.DecommissionRequest, context):
        """Leave the ring: stream this node's ranges out, then LEFT; progress twice a second."""
        await self.guard.client(context, ADMIN, "decommission a node")
        node = self.node
        if request.node_id and request.node_id != node.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"this is {node.node_id}, not {request.node_id}: ask "
                                f"{request.node_id} itself")
        try:
            progress = node.streamer.start_decommission()
        except KVError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        async for message in self._follow(progress):
            yield message

    async def Remove(self, request: admin_pb2.RemoveRequest, context):
        """Force a dead member out, re-replicating from the survivors; progress streamed."""
        await self.guard.client(context, ADMIN, "remove a node")
        try:
            progress = self.node.streamer.start_remove(request.node_id)
        except KVError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        async for message in self._follow(progress):
            yield message

    async def _follow(self, progress):
        while True:
            message = progress.to_pb(self.node.node_id, self.node.streamer.monotonic())
            yield message
            if message.finished:
                return
            await asyncio.sleep(0.5)


async def node_info(node: Node) -> admin_pb2.NodeInfo:
    config = node.config
    membership = node.membership
    shares = membership.ring.ownership()
    hints = await node.handoff.pending_by_target()
    members = [
        admin_pb2.Member(id=member, address=address, status=membership.status(member),
                         up=membership.is_up(member),
                         phi=round(membership.phi(member), 3),
                         ownership=round(shares.get(member, 0.0), 6),
                         hints_pending=hints.get(member, 0),
                         committed_status=node.ring_log.status(member))
        for member, address in sorted(membership.members.items())
    ]
    return admin_pb2.NodeInfo(
        node_id=node.node_id, address=config.address,
        replication_factor=config.replication_factor, vnodes=config.vnodes,
        members=members, version=__version__, keys_stored=await node.store.count(),
        data_dir=str(config.data_dir or ""), max_key_bytes=config.max_key_bytes,
        max_value_bytes=config.max_value_bytes,
        move=(node.streamer.progress.to_pb(node.node_id, node.streamer.monotonic())
              if node.streamer.progress else None),
        ring_agreed=node.ring_log.enabled, ring_epoch=node.ring_log.epoch,
    )


class SecurityServicer(security_pb2_grpc.SecurityServicer):
    def __init__(self, server: NodeServer) -> None:
        self.server = server

    async def Login(self, request: spb.LoginRequest, context) -> spb.LoginReply:
        auth = self.server.auth
        if auth is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this node runs without --auth: no login needed")
        try:
            return await auth.login(request.user, request.password)
        except AuthError as exc:
            self.server.guard.stats["refused_unauthenticated"] += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except MetaUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"cannot check credentials now (metadata group: {exc}); retry")

    async def Stats(self, request, context) -> spb.SecurityStats:
        await self.server.guard.client(context, READONLY, "read security counters")
        srv = self.server
        auth_stats = srv.auth.stats if srv.auth else {"logins": 0, "logins_failed": 0}
        return spb.SecurityStats(tls=srv.tls is not None, auth=srv.auth is not None,
                                 certificate_reloads=srv.tls.generation if srv.tls else 0,
                                 peer_address=srv.config.peer_address,
                                 **srv.guard.stats, **auth_stats)


AUTH_READ_WAIT = 1.0  # seconds an auth lookup waits for the raft group


async def _meta_call(raft, req: dict) -> dict:
    """A metadata request for the auth service, on the typed metadata API. Reads are
    serializable (answered from this node's own copy of the metadata state machine when it
    is a member: behind the leader by at most the replication lag; the auth cache is 5 s
    anyway), so clients can still log in while the Raft group elects or lacks a quorum,
    and give up after AUTH_READ_WAIT (the caller falls back on what it knew)."""
    try:
        if req.get("op") == "get":
            reply = await asyncio.wait_for(raft.handle_meta(to_meta_request(req)),
                                           AUTH_READ_WAIT)
        else:
            reply = await raft.handle_meta(to_meta_request(req))
    except TimeoutError:
        return {"ok": False, "error": f"no answer from the raft group in {AUTH_READ_WAIT} s"}
    return from_meta_reply(req, reply)


class Guarded:
    """A servicer whose every (unary) method first checks the caller's role (--auth)."""

    def __init__(self, inner, guard: Guard, role: str, what: str) -> None:
        self._inner, self._guard, self._role, self._what = inner, guard, role, what

    def __getattr__(self, name: str):
        method = getattr(self._inner, name)
        if not name[:1].isupper():
            return method

        async def checked(request, context):
            await self._guard.client(context, self._role, self._what)
            return await method(request, context)

        return checked


class GuardedMeta(meta_pb2_grpc.MetaServicer):
    """The Meta service with --auth: roles per request and key prefix (core/auth.py
    `meta_needed`): the users' keys are admin only, other keys readable by readonly and
    writable (with leases and locks) by readwrite."""

    def __init__(self, inner, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard

    async def Call(self, request, context):
        needed, what = core_auth.meta_needed(request)
        await self.guard.client(context, needed, what)
        return await self.inner.Call(request, context)

    async def CallBatch(self, request, context):
        # the batch needs what its most demanding request needs (checked once)
        needs = [core_auth.meta_needed(r) for r in request.requests] or [
            (READONLY, "send an empty batch")]
        needed, what = max(needs, key=lambda n: core_auth.ROLES.index(n[0]))
        await self.guard.client(context, needed, what)
        return await self.inner.CallBatch(request, context)


class NodeServer:
    """Builds and runs one node process.

    One listener serves everything, unless `peer_listen` names a second one: then peers
    talk there (mutual TLS with --tls) and clients on `listen` (TLS, tokens with --auth).
    """

    def __init__(self, config: NodeConfig, logs=None) -> None:
        """`logs`: the RequestLogBuffer (node/logs.py) the Logs RPC answers from."""
        config.validate()
        self.config = config
        self.tls = TlsFiles(config.tls_dir, config.node_id) if config.tls_dir else None
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.separate = bool(config.peer_listen) and config.peer_listen != config.listen
        self.peer_server = (grpc.aio.server(options=SERVER_OPTIONS) if self.separate
                            else self.server)
        self.transport = GrpcTransport(config.node_id, self.peer_server, tls=self.tls)
        if self.separate:
            self.transport.add_client_port_servicer(self.server)
        self.store = AsyncStore(open_engine(config.data_dir, config.sync))
        self.node = Node(config, self.transport, self.store)
        self.auth = None
        if config.auth:
            raft = self.node.raft
            self.auth = AuthService(config.node_id,
                                    MetaUsers(lambda req: _meta_call(raft, req)),
                                    token_ttl=config.token_ttl,
                                    state_path=(config.data_dir / "auth-cache.json"
                                                if config.data_dir else None))
        self.guard = Guard(config.node_id, self.tls, self.auth)
        self.transport.admit = self.guard.admit
        self.health = health_aio.HealthServicer()
        host = config.listen.rpartition(":")[0]
        self.observer = Observer(self.node, self.transport.faults,
                                 f"http://{host}:{config.metrics_port}/"
                                 if config.metrics_port else "")
        self.http = None
        if config.metrics_port:
            from kvstore.node.http import HttpServer

            self.http = HttpServer(self.observer, host, config.metrics_port, self.tls)
        chaos = ChaosServicer(self.node, self.transport.faults, config.chaos)
        observe = ObserveServicer(self.observer, logs)
        if self.auth is not None:  # faults are an admin's; cluster state a reader's
            chaos = Guarded(chaos, self.guard, ADMIN, "inject or heal faults")
            observe = Guarded(observe, self.guard, READONLY, "read the cluster's state")
        chaos_pb2_grpc.add_ChaosServicer_to_server(chaos, self.server)
        observe_pb2_grpc.add_ObserveServicer_to_server(observe, self.server)
        if self.separate:  # the dashboards of other nodes ask here, with node certificates
            observe_pb2_grpc.add_ObserveServicer_to_server(observe, self.peer_server)
        client_pb2_grpc.add_KVServicer_to_server(
            KVServicer(self.node, self.observer, self.guard), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.node, self.guard),
                                                   self.server)
        security_pb2_grpc.add_SecurityServicer_to_server(SecurityServicer(self), self.server)
        meta = GuardedMeta(MetaServicer(self.node), self.guard)
        meta_pb2_grpc.add_MetaServicer_to_server(meta, self.server)
        if self.separate:  # admins with a node certificate (the first `kv user add`)
            meta_pb2_grpc.add_MetaServicer_to_server(meta, self.peer_server)
        txn_pb2_grpc.add_TxnServicer_to_server(TxnServicer(self.node, self.guard), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._health_task: asyncio.Task | None = None

    def _listen(self, server: grpc.aio.Server, address: str, peers: bool) -> None:
        try:
            if self.tls is None:
                port = server.add_insecure_port(address)
            else:  # peers (and everyone on a shared port) must show a certificate
                creds = self.tls.server_credentials(require_client_auth=peers)
                port = server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address} (address in use?)")

    def reload_tls(self) -> None:
        """SIGHUP: re-read the certificate files (new connections use them)."""
        if self.tls is not None and self.tls.reload():
            log.info("node %s: certificates reloaded (generation %d)", self.config.node_id,
                     self.tls.generation)

    async def start(self) -> None:
        self._listen(self.server, self.config.listen, peers=not self.separate)
        if self.separate:
            self._listen(self.peer_server, self.config.peer_listen, peers=True)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.separate:
            await self.peer_server.start()
        await self.node.start()
        if self.http is not None:
            await self.http.start()
        self._health_task = asyncio.get_running_loop().create_task(self._track_health())
        log.info("node %s listening on %s%s (data: %s)", self.config.node_id,
                 self.config.listen,
                 f", peers on {self.config.peer_listen}" if self.separate else "",
                 self.config.data_dir or "in memory")
        if self.tls is None:
            log.warning("node %s is INSECURE: no --tls, so any process that reaches its port "
                        "can act as a peer or a client (see docs/security.md)",
                        self.config.node_id)
        else:
            log.info("node %s: mutual TLS between nodes (%s), client authentication %s",
                     self.config.node_id, self.tls.directory, "on" if self.auth else "off")

    async def _track_health(self) -> None:
        serving = None
        while True:
            ready = self.node.membership.ready
            if ready != serving:
                status = (health_pb2.HealthCheckResponse.SERVING if ready
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                await self.health.set("", status)
                await self.health.set("kvstore.KV", status)
                serving = ready
            await asyncio.sleep(0.1)

    async def stop(self, grace: float = 2.0) -> None:
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await self.http.stop()
        await self.observer.census.stop()
        if self.node.raft is not None:
            await self.node.raft.stop()  # before the server stops: no raft work mid-shutdown
        await self.server.stop(grace)
        if self.separate:
            await self.peer_server.stop(grace)
        await self.node.stop()
        await self.store.close()
        self.node.handoff.hints.close()
        log.info("node %s stopped", self.config.node_id)


async def run_node(config: NodeConfig, logs=None) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    server = NodeServer(config, logs)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    try:
        await stop.wait()
    finally:
        await server.stop()
