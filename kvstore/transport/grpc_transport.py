"""The gRPC implementation of `Transport`: one channel per peer, a deadline on every call.

Inbound: an Internode servicer registered on the node's grpc.aio server hands every
message of a batch to the handler concurrently and answers them in order.
Outbound: the shared `Coalescer` sends at most one batch per peer (and lane) at a time.

Batches travel as frames on one long-lived `PeerStream.Stream` per peer (`streams=True`,
the default; KV_PEER_STREAMS=0 turns it off): a round trip on an open stream costs about a
third of the CPU of a unary Exchange call, and replica batches are small. A frame that
could not be delivered (the stream could not connect) goes by the unary path, which waits
for the channel and says PeerUnreachable; a stream that breaks fails its frames in flight
as "may have been applied", and an idempotent batch is sent once more, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore._proto import internode_pb2_grpc as pb_grpc
from kvstore._proto import peerstream_pb2 as spb
from kvstore._proto import peerstream_pb2_grpc as spb_grpc
from kvstore.transport.base import (
    Handler,
    PeerTimeout,
    PeerUnreachable,
    TransportError,
    idempotent,
)
from kvstore.transport.batching import Coalescer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_WAIT = 0.25  # seconds a refused call waits for the channel to (re)connect
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class _InternodeServicer(pb_grpc.InternodeServicer):
    def __init__(self, transport: GrpcTransport) -> None:
        self.transport = transport

    async def Exchange(
        self, request: pb.PeerBatch, context: grpc.aio.ServicerContext
    ) -> pb.PeerBatchReply:
        handler = self.transport.handler
        if handler is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node is starting")
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


class _PeerStreamServicer(spb_grpc.PeerStreamServicer):
    """Frames of one stream are handled concurrently; each reply names its frame."""

    def __init__(self, transport: GrpcTransport) -> None:
        self.transport = transport

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext):
        lock = asyncio.Lock()  # one write at a time on the stream
        running: set[asyncio.Task] = set()  # this stream's frames being handled
        everyone = self.transport.inbound_answers
        me = asyncio.current_task()
        if me is not None:
            self.transport.inbound_streams.add(me)
            me.add_done_callback(self.transport.inbound_streams.discard)

        async def answer(frame: spb.PeerFrame, handler: Handler) -> None:
            results = await asyncio.gather(
                *(_safe(handler, frame.batch.source, m) for m in frame.batch.messages))
            reply = spb.PeerFrameReply(id=frame.id, reply=pb.PeerBatchReply(results=results))
            try:
                async with lock:
                    await context.write(reply)
            except Exception:  # the sender went away: it sees the stream break
                log.debug("could not answer frame %d", frame.id, exc_info=True)

        async for frame in request_iterator:
            handler = self.transport.handler
            if handler is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node is starting")
            task = asyncio.get_running_loop().create_task(answer(frame, handler))
            running.add(task)
            task.add_done_callback(running.discard)
            everyone.add(task)
            task.add_done_callback(everyone.discard)
        if running:  # the sender is done writing: finish what it sent
            await asyncio.gather(*running, return_exceptions=True)


class _NotDelivered(Exception):
    """The stream could not carry the frame (never connected): safe to send another way."""


class _OutStream:
    """One open stream to a peer: frames out, replies matched to them by id."""

    def __init__(self, peer: str, stub: spb_grpc.PeerStreamStub) -> None:
        self.peer = peer
        self.call = stub.Stream()
        self.waiting: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.lock = asyncio.Lock()
        self.failure: BaseException | None = None
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        error: BaseException
        try:
            async for reply in self.call:
                future = self.waiting.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply.reply)
            error = TransportError(self.peer, "the peer closed the stream; the message may "
                                              "have been applied")
        except grpc.aio.AioRpcError as exc:
            error = exc
        except asyncio.CancelledError:
            error = TransportError(self.peer, "the stream was closed")
        except Exception as exc:  # never leave frames waiting on a dead reader
            error = TransportError(self.peer, f"stream failed: {exc!r}")
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_as_error(self.peer, error))

    @property
    def broken(self) -> bool:
        return self.failure is not None

    async def send(self, batch: pb.PeerBatch, timeout: float) -> pb.PeerBatchReply:
        if self.failure is not None:
            raise _as_error(self.peer, self.failure)
        loop = asyncio.get_running_loop()
        self.next_id += 1
        frame_id = self.next_id
        future = loop.create_future()
        self.waiting[frame_id] = future
        try:
            async with self.lock:
                await self.call.write(spb.PeerFrame(id=frame_id, batch=batch))
        except grpc.aio.AioRpcError as exc:
            self.waiting.pop(frame_id, None)
            self._fail(exc)
            raise _as_error(self.peer, exc) from None
        except Exception as exc:  # the call ended (grpc raises InvalidStateError/UsageError)
            self.waiting.pop(frame_id, None)
            failure = self.failure or TransportError(self.peer, f"stream ended: {exc!r}")
            raise _as_error(self.peer, failure) from None
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.waiting.pop(frame_id, None)
            raise PeerTimeout(self.peer, f"timed out after {timeout * 1000:.0f} ms") from None

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader


def _as_error(peer: str, error: BaseException) -> Exception:
    """What a frame's sender sees when its stream failed with `error`."""
    if isinstance(error, grpc.aio.AioRpcError):
        if _not_delivered(error):
            return _NotDelivered(str(error.details()))
        return TransportError(peer, f"connection lost ({error.code().name}: {error.details()}); "
                                    "the message may have been applied")
    if isinstance(error, TransportError):
        return TransportError(error.peer, error.reason)
    return TransportError(peer, repr(error))


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
        return TransportError(peer, f"connection lost during the call ({exc.details()}); "
                                    "the message may have been applied")
    return TransportError(peer, f"{code.name}: {exc.details()}")


class GrpcTransport:
    def __init__(self, node_id: str, server: grpc.aio.Server, *, streams: bool = True) -> None:
        self.node_id = node_id
        self.streams = streams
        self.out_streams: dict[str, _OutStream] = {}
        self.inbound_streams: set[asyncio.Task] = set()  # peers' streams to this node
        self.inbound_answers: set[asyncio.Task] = set()  # frames being handled
        self.handler: Handler | None = None
        self.addresses: dict[str, str] = {}
        self.channels: dict[str, tuple[str, grpc.aio.Channel, pb_grpc.InternodeStub]] = {}
        self.coalescer = Coalescer(node_id, self._send)
        self.lanes: list[Coalescer] = []
        pb_grpc.add_InternodeServicer_to_server(_InternodeServicer(self), server)
        spb_grpc.add_PeerStreamServicer_to_server(_PeerStreamServicer(self), server)

    async def end_inbound(self, grace: float) -> None:
        """On shutdown: let the frames being handled finish (at most `grace` seconds), then
        end the peers' streams to this node, which would otherwise hold the server's
        graceful stop for its whole grace period (they never end by themselves)."""
        if self.inbound_answers:
            await asyncio.wait(list(self.inbound_answers), timeout=grace)
        for task in list(self.inbound_streams):
            task.cancel()

    async def start(self, handler: Handler) -> None:
        self.handler = handler

    def set_address(self, peer: str, address: str) -> None:
        self.addresses[peer] = address

    def _stub(self, peer: str) -> pb_grpc.InternodeStub:
        address = self.addresses.get(peer)
        if address is None:
            raise PeerUnreachable(peer, "no known address for this node")
        cached = self.channels.get(peer)
        if cached and cached[0] == address:
            return cached[2]
        if cached:
            asyncio.get_running_loop().create_task(cached[1].close())
            old = self.out_streams.pop(peer, None)
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub = pb_grpc.InternodeStub(channel)
        self.channels[peer] = (address, channel, stub)
        return stub

    def _out_stream(self, peer: str) -> _OutStream:
        self._stub(peer)  # (re)opens the channel if the address changed
        stream = self.out_streams.get(peer)
        if stream is None or stream.broken:
            channel = self.channels[peer][1]
            stream = self.out_streams[peer] = _OutStream(peer, spb_grpc.PeerStreamStub(channel))
        return stream

    async def _send(self, peer: str, batch: pb.PeerBatch, timeout: float) -> pb.PeerBatchReply:
        if not self.streams:
            return await self._send_unary(peer, batch, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await self._out_stream(peer).send(batch, timeout)
        except _NotDelivered:
            pass  # never reached the peer: the unary path waits for a connection
        except PeerTimeout:
            raise
        except TransportError:
            # The stream broke with the batch on it. As on the unary path: a batch that is
            # safe to repeat is sent once more, the others fail as "may have been applied".
            if not (idempotent(batch) and deadline - loop.time() > 0.05):
                raise
            log.info("resending a batch to %s after its stream broke", peer)
        return await self._send_unary(peer, batch, max(0.001, deadline - loop.time()))

    async def _send_unary(self, peer: str, batch: pb.PeerBatch,
                          timeout: float) -> pb.PeerBatchReply:
        stub = self._stub(peer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await stub.Exchange(batch, timeout=timeout)
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
        channel = self.channels[peer][1]
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
        for stream in self.out_streams.values():
            await stream.close()
        self.out_streams.clear()
        for _, channel, _ in self.channels.values():
            await channel.close()
        self.channels.clear()
