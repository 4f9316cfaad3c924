"""A node as a real process: gRPC servers around a Node, durable storage, clean shutdown.

One port serves the client API (KV), the internode API, the admin API and the standard
grpc.health.v1 service. Health says SERVING once the node knows its cluster's membership.
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
    client_pb2_grpc,
)
from kvstore._proto import (
    client_pb2 as cpb,
)
from kvstore.core.errors import KVError
from kvstore.node.config import NodeConfig
from kvstore.node.node import Node
from kvstore.services.antientropy import summary_pb
from kvstore.storage import AsyncStore, open_engine
from kvstore.transport.grpc_transport import CHANNEL_OPTIONS, GrpcTransport

log = logging.getLogger(__name__)


class KVServicer(client_pb2_grpc.KVServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Execute(self, request: cpb.ClientBatch, context) -> cpb.ClientBatchReply:
        execute = self.node.coordinator.execute
        if len(request.requests) == 1:
            return cpb.ClientBatchReply(replies=[await execute(request.requests[0])])
        replies = await asyncio.gather(*(execute(r) for r in request.requests))
        return cpb.ClientBatchReply(replies=replies)

    async def Ping(self, request: cpb.PingRequest, context) -> cpb.PingReply:
        return cpb.PingReply(payload=request.payload)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Info(self, request: admin_pb2.InfoRequest, context) -> admin_pb2.NodeInfo:
        return await node_info(self.node)

    async def Repair(self, request: admin_pb2.RepairRequest, context):
        """Anti-entropy with every peer now, streaming progress after each peer."""
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
        node = self.node
        if request.node_id and request.node_id != node.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"this is {node.node_id}, not {request.node_id}: ask "
                                f"{request.node_id} itself")
        try:
            progress = node.streamer.start_decommission()
        except KVError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        while True:
            message = progress.to_pb(node.node_id, node.streamer.monotonic())
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
                         hints_pending=hints.get(member, 0))
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
    )


class NodeServer:
    """Builds and runs one node process."""

    def __init__(self, config: NodeConfig) -> None:
        config.validate()
        self.config = config
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        self.transport = GrpcTransport(config.node_id, self.server)
        self.store = AsyncStore(open_engine(config.data_dir, config.sync))
        self.node = Node(config, self.transport, self.store)
        self.health = health_aio.HealthServicer()
        client_pb2_grpc.add_KVServicer_to_server(KVServicer(self.node), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.node), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            port = self.server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.config.listen}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen} (address in use?)")
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        await self.node.start()
        self._health_task = asyncio.get_running_loop().create_task(self._track_health())
        log.info("node %s listening on %s (data: %s)", self.config.node_id, self.config.listen,
                 self.config.data_dir or "in memory")

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
        if self.node.raft is not None:
            await self.node.raft.stop()  # before the server stops: no raft work mid-shutdown
        await self.server.stop(grace)
        await self.node.stop()
        await self.store.close()
        self.node.handoff.hints.close()
        log.info("node %s stopped", self.config.node_id)


async def run_node(config: NodeConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    server = NodeServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
