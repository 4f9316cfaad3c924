"""Per-peer coalescing: every message pending for one peer rides in one batch.

One batch is in flight per peer; messages that arrive meanwhile fill the next batch.
This turns N small RPCs into one, which is worth an order of magnitude in throughput on
a 2-core machine (docs/architecture.md has the numbers). Both transports use it, so the
simulated network exercises the same code path as gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kvstore._proto import internode_pb2 as pb
from kvstore.transport.base import PeerTimeout, TransportError
from kvstore.transport.context import REQUEST_ID

# Sends one batch to a peer and returns its reply (raises TransportError subclasses).
BatchSender = Callable[[str, pb.PeerBatch, float], Awaitable[pb.PeerBatchReply]]

MAX_BATCH_MESSAGES = 1024


class _PeerQueue:
    """Messages pending for one peer, the batch in flight, and their deadlines.

    Deadlines cost one timer per batch, not one per message: the pending messages share
    one timer (armed at the earliest of their deadlines) and so does the batch in flight;
    when it fires, every message past its deadline fails with PeerTimeout and the timer is
    armed again for the earliest one left. Callers just await their future.
    """

    def __init__(self, peer: str, source: str, sender: BatchSender) -> None:
        self.peer = peer
        self.source = source
        self.sender = sender
        # (message, future, deadline, timeout)
        self.pending: list[tuple[pb.PeerMessage, asyncio.Future, float, float]] = []
        self.pending_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None

    def submit(self, message: pb.PeerMessage, deadline: float, timeout: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self.pending.append((message, future, deadline, timeout))
        timer = self.pending_timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self.pending_timer = loop.call_at(deadline, self._expire_pending)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._pump())
        return future

    def _expire(self, entries, now: float) -> float | None:
        """Fail the entries past their deadline; the earliest deadline left (None: none)."""
        earliest = None
        for _, future, deadline, timeout in entries:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(
                    PeerTimeout(self.peer, f"timed out after {timeout * 1000:.0f} ms"))
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return earliest

    def _expire_pending(self) -> None:
        loop = asyncio.get_running_loop()
        self.pending_timer = None
        earliest = self._expire(self.pending, loop.time())
        if earliest is not None:
            self.pending_timer = loop.call_at(earliest, self._expire_pending)

    def _watch(self, live, loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
        """One timer for the batch in flight (a list holding the current handle)."""
        handle: list[asyncio.TimerHandle] = []

        def fire() -> None:
            earliest = self._expire(live, loop.time())
            if earliest is not None:
                handle[0] = loop.call_at(earliest, fire)

        handle.append(loop.call_at(min(d for _, _, d, _ in live), fire))
        return handle

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch = self.pending[:MAX_BATCH_MESSAGES]
            del self.pending[:MAX_BATCH_MESSAGES]
            if not self.pending and self.pending_timer is not None:
                self.pending_timer.cancel()
                self.pending_timer = None
            now = loop.time()
            live = []
            for entry in batch:
                _, future, deadline, _ = entry
                if future.done():
                    continue  # the caller gave up waiting, or it timed out while pending
                if deadline <= now:
                    future.set_exception(PeerTimeout(self.peer, "deadline passed before sending"))
                else:
                    live.append(entry)
            if not live:
                continue
            timeout = max(d for _, _, d, _ in live) - now
            request = pb.PeerBatch(source=self.source, messages=[m for m, _, _, _ in live])
            timer = self._watch(live, loop)
            try:
                reply = await self.sender(self.peer, request, timeout)
            except asyncio.CancelledError:  # closing: the batch in flight gets no answer
                for _, f, _, _ in live:
                    if not f.done():
                        f.set_exception(TransportError(self.peer, "transport closed"))
                raise
            except TransportError as exc:
                for _, f, _, _ in live:
                    if not f.done():
                        f.set_exception(type(exc)(exc.peer, exc.reason))
                continue
            except Exception as exc:  # a bug or an unexpected transport failure
                for _, f, _, _ in live:
                    if not f.done():
                        f.set_exception(TransportError(self.peer, f"transport failed: {exc!r}"))
                continue
            finally:
                timer[0].cancel()
            results = list(reply.results)
            for i, (_, f, _, _) in enumerate(live):
                if f.done():
                    continue
                if i < len(results):
                    f.set_result(results[i])
                else:
                    f.set_exception(TransportError(self.peer, "reply had too few results"))


class Coalescer:
    """Routes each message into its peer's queue and waits for its own result."""

    def __init__(self, source: str, sender: BatchSender) -> None:
        self.source = source
        self.sender = sender
        self.queues: dict[str, _PeerQueue] = {}

    async def call(self, peer: str, message: pb.PeerMessage, timeout: float) -> pb.PeerResult:
        """The peer's result, or PeerTimeout once `timeout` seconds have passed."""
        queue = self.queues.get(peer)
        if queue is None:
            queue = self.queues[peer] = _PeerQueue(peer, self.source, self.sender)
        request_id = REQUEST_ID.get()
        if request_id and not message.request_id:
            message.request_id = request_id  # the receiver logs under the same id
        loop = asyncio.get_running_loop()
        return await queue.submit(message, loop.time() + timeout, timeout)

    async def close(self) -> None:
        for queue in list(self.queues.values()):  # a call may open a queue meanwhile
            if queue.task and not queue.task.done():
                queue.task.cancel()
                try:
                    await queue.task
                except (asyncio.CancelledError, Exception):
                    pass
            if queue.pending_timer is not None:
                queue.pending_timer.cancel()
                queue.pending_timer = None
            for _, f, _, _ in queue.pending:
                if not f.done():  # an error the caller handles, not a cancellation of it
                    f.set_exception(TransportError(queue.peer, "transport closed"))
            queue.pending.clear()
