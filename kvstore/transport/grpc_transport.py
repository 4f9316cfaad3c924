"""The gRPC implementation of `Transport`: one channel per peer, a deadline on every call.

Inbound: an Internode servicer registered on the node's grpc.aio server hands every
message of a batch to the handler concurrently and answers them in order.
Outbound: the shared `Coalescer` sends at most one Exchange call per peer at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore._proto import internode_pb2_grpc as pb_grpc
from kvstore.transport.base import (
    BatchHandler,
    Handler,
    PeerTimeout,
    PeerUnreachable,
    TransportError,
    idempotent,
)
from kvstore.transport.batching import Coalescer
from kvstore.transport.faults import FaultFilter
from kvstore.transport.tls import TlsFiles

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_WAIT = 0.25  # seconds a refused call waits for the channel to (re)connect
REDIAL_EVERY = 0.25  # at most this often per peer, a channel backing off is replaced
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # A peer's name may not resolve yet (swarm publishes a task's DNS name only once its
    # health check passes; a Kubernetes pod's record appears with the pod): look it up
    # again within a second, not after gRPC's default 30 s between resolutions.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
    # Each channel its own connection (not one from gRPC's process-wide pool, which would
    # hand a new channel the old one's backoff): see `_redial_if_backing_off`.
    ("grpc.use_local_subchannel_pool", 1),
]


# Admission of an inbound batch: (context, batch, on_client_port) -> None, or abort the call.
Admit = Callable[[grpc.aio.ServicerContext, pb.PeerBatch, bool], Awaitable[None]]


class _InternodeServicer(pb_grpc.InternodeServicer):
    def __init__(self, transport: GrpcTransport, client_port: bool = False) -> None:
        self.transport = transport
        self.client_port = client_port

    async def Exchange(
        self, request: pb.PeerBatch, context: grpc.aio.ServicerContext
    ) -> pb.PeerBatchReply:
        if self.transport.admit is not None:
            await self.transport.admit(context, request, self.client_port)
        handler = self.transport.handler
        if handler is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node is starting")
        batch_handler = self.transport.batch_handler
        if batch_handler is not None:
            return pb.PeerBatchReply(results=await batch_handler(request.source,
                                                                 request.messages))
        results = await asyncio.gather(
            *(_safe(handler, request.source, m) for m in request.messages)
        )
        return pb.PeerBatchReply(results=results)


async def _safe(handler: Handler, source: str, message: pb.PeerMessage) -> pb.PeerResult:
    try:
        return await handler(source, message)
    except Exception as exc:  # one bad message must not fail the whole batch
        log.exception("internode handler failed for a message from %s", source)
        return pb.PeerResult(error=common_pb2.Error(code=common_pb2.INTERNAL, message=repr(exc)))


def _not_delivered(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call certainly never reached the peer (no connection was made)."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details
        or "dns resolution failed" in details)


def _transport_error(peer: str, exc: grpc.aio.AioRpcError, timeout: float) -> TransportError:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerTimeout(peer, f"timed out after {timeout * 1000:.0f} ms")
    if _not_delivered(exc):
        return PeerUnreachable(peer, f"unreachable ({exc.details()})")
    if code == grpc.StatusCode.UNAVAILABLE:
        # Delivered or not, nobody knows: the caller says what that means for its request
        # (a write "may have been applied"; a read never says so, issue 17).
        return TransportError(peer, f"connection lost during the call ({exc.details()}); "
                                    "it may have been delivered")
    return TransportError(peer, f"{code.name}: {exc.details()}")


class GrpcTransport:
    """`tls`: connect to peers with mutual TLS (each channel verifies that the peer's
    certificate names the peer id it expects). `admit` checks every inbound batch."""

    def __init__(self, node_id: str, server: grpc.aio.Server, tls: TlsFiles | None = None,
                 admit: Admit | None = None) -> None:
        self.node_id = node_id
        self.tls = tls
        self.admit = admit
        self.handler: Handler | None = None
        self.batch_handler: BatchHandler | None = None
        self.addresses: dict[str, str] = {}
        self.channels: dict[str, tuple[tuple[str, int], grpc.aio.Channel,
                                       pb_grpc.InternodeStub]] = {}
        self._redialed: dict[str, float] = {}  # peer -> loop time of its last redial
        self._retired: set[grpc.aio.Channel] = set()  # replaced channels not yet closed
        self.coalescer = Coalescer(node_id, self._send)
        self.lanes: list[Coalescer] = []
        self.faults = FaultFilter()  # chaos (kv chaos): consulted before every batch
        pb_grpc.add_InternodeServicer_to_server(_InternodeServicer(self), server)

    def add_client_port_servicer(self, server: grpc.aio.Server) -> None:
        """Serve Internode on a separate client listener too (for `kv meta`/`kv raft`:
        `admit` lets only metadata requests through there)."""
        pb_grpc.add_InternodeServicer_to_server(_InternodeServicer(self, client_port=True),
                                                server)

    async def start(self, handler: Handler, batch_handler: BatchHandler | None = None) -> None:
        self.handler = handler
        self.batch_handler = batch_handler

    def set_address(self, peer: str, address: str) -> None:
        self.addresses[peer] = address

    def _stub(self, peer: str) -> pb_grpc.InternodeStub:
        address = self.addresses.get(peer)
        if address is None:
            raise PeerUnreachable(peer, "no known address for this node")
        key = (address, self.tls.generation if self.tls else 0)
        cached = self.channels.get(peer)
        if cached and cached[0] == key:
            return cached[2]
        if cached:  # moved, or our certificate was rotated: a new connection
            asyncio.get_running_loop().create_task(cached[1].close())
        if self.tls is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            # Verify that the server's certificate names the peer we mean to reach. A
            # seed known only by its address ("seed@host:port") is checked against the
            # host instead (node certificates carry their addresses too).
            override = [] if "@" in peer else [("grpc.ssl_target_name_override", peer)]
            channel = grpc.aio.secure_channel(address, self.tls.channel_credentials(),
                                              options=[*CHANNEL_OPTIONS, *override])
        stub = pb_grpc.InternodeStub(channel)
        self.channels[peer] = (key, channel, stub)
        return stub

    def _redial_if_backing_off(self, peer: str, now: float) -> None:
        """Replace the channel to `peer` by a new one if it is backing off.

        After failed connects gRPC waits out a backoff (up to max_reconnect_backoff_ms)
        before it dials again, however soon the peer is back; a peer that restarted after a
        few seconds down was then unreachable from here for up to a second more while
        gossip already called it up, and every batch to it waited RECONNECT_WAIT and
        failed (the 0.3-0.7 s stalls of bench/background_p99.py's hints phase). A new
        channel dials at once. At most once per REDIAL_EVERY per peer, so a peer that
        stays down costs one refused connect per REDIAL_EVERY, as the backoff did."""
        old = self.channels[peer][1]
        if (old.get_state(try_to_connect=False) != grpc.ChannelConnectivity.TRANSIENT_FAILURE
                or now - self._redialed.get(peer, float("-inf")) < REDIAL_EVERY):
            return
        self._redialed[peer] = now
        del self.channels[peer]
        self._stub(peer)  # the new channel, dialled by the caller's channel_ready()
        # Closed a little later: another batch may still be waiting on its readiness.
        self._retired.add(old)
        loop = asyncio.get_running_loop()
        loop.call_later(2 * RECONNECT_WAIT, lambda: loop.create_task(self._retire(old)))

    async def _retire(self, channel: grpc.aio.Channel) -> None:
        if channel in self._retired:
            self._retired.discard(channel)
            await channel.close()

    async def _send(self, peer: str, batch: pb.PeerBatch, timeout: float) -> pb.PeerBatchReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.faults.faults:
            verdict = self.faults.decide(peer, loop.time(), time.time())
            if verdict.blocked:
                raise PeerUnreachable(peer, f"unreachable ({verdict.blocked})")
            if verdict.delay_s:
                await asyncio.sleep(min(verdict.delay_s, timeout))
                if verdict.delay_s >= timeout:
                    raise PeerTimeout(peer, f"timed out after {timeout * 1000:.0f} ms "
                                            "(delayed by chaos)")
        stub = self._stub(peer)
        try:
            return await stub.Exchange(batch, timeout=max(0.001, deadline - loop.time()))
        except grpc.aio.AioRpcError as exc:
            if not _not_delivered(exc):
                if not (exc.code() == grpc.StatusCode.UNAVAILABLE and idempotent(batch)
                        and deadline - loop.time() > 0.05):
                    raise _transport_error(peer, exc, timeout) from None
                # The connection broke mid-call (e.g. the peer's address changed and the
                # old connection timed out). Every message in the batch may be applied twice
                # (merges, reads, gossip, raft), so send it once more on a new connection.
                log.info("resending a batch to %s after a broken connection: %s", peer,
                         exc.details())
        # Not delivered (or safe to repeat). The channel may still be backing off from an
        # earlier failed connect (a peer that just started, restarted or moved): give it a
        # moment to connect, then send once more with the time that is left.
        self._redial_if_backing_off(peer, loop.time())
        stub, channel = self._stub(peer), self.channels[peer][1]
        wait = min(RECONNECT_WAIT, deadline - loop.time())
        try:
            await asyncio.wait_for(channel.channel_ready(), wait)
        except TimeoutError:
            raise PeerUnreachable(peer, "unreachable (connection refused)") from None
        try:
            return await stub.Exchange(batch, timeout=max(0.001, deadline - loop.time()))
        except grpc.aio.AioRpcError as exc:
            raise _transport_error(peer, exc, timeout) from None

    def new_lane(self) -> Coalescer:
        """A second set of per-peer queues over the same channels, for requests whose answer
        waits on later messages to the same peer (they must not hold those back)."""
        lane = Coalescer(self.node_id, self._send)
        self.lanes.append(lane)
        return lane

    async def call(self, peer: str, message: pb.PeerMessage, timeout: float) -> pb.PeerResult:
        return await self.coalescer.call(peer, message, timeout)

    async def close(self) -> None:
        await self.coalescer.close()
        for lane in self.lanes:
            await lane.close()
        for channel in list(self._retired):
            await self._retire(channel)
        for _, channel, _ in self.channels.values():
            await channel.close()
        self.channels.clear()
