"""An in-memory network implementing `Transport`, with seeded faults.

Whole clusters run in one process over it: partitions (one-way or both ways), message
loss, delay and jitter, duplication, and crashed nodes. All randomness comes from one
seeded `random.Random`, and all waiting is `asyncio.sleep`, so under a virtual-time event
loop a run is deterministic for its seed.

A partitioned or dropped message behaves like a black hole (the caller times out); a
crashed node refuses at once (like a closed port).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from kvstore._proto import internode_pb2 as pb
from kvstore.transport.base import (
    BatchHandler,
    Handler,
    PeerTimeout,
    PeerUnreachable,
    idempotent,
)
from kvstore.transport.batching import Coalescer


@dataclass
class Faults:
    """What the network does to messages. Change it at any time during a run."""

    drop: float = 0.0            # probability a batch (or its reply) is lost
    duplicate: float = 0.0       # probability a batch is delivered twice
    delay: float = 0.0005        # base one-way latency, seconds
    jitter: float = 0.0          # extra uniform random latency, seconds (reorders batches)
    blocked: set[tuple[str, str]] = field(default_factory=set)  # (from, to) pairs cut
    crashed: set[str] = field(default_factory=set)


class MemoryNetwork:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.faults = Faults()
        self.handlers: dict[str, Handler] = {}
        self.batch_handlers: dict[str, BatchHandler] = {}
        self.addresses: dict[str, str] = {}  # address -> node id
        self.batches_sent = 0
        self.messages_sent = 0

    def transport(self, node_id: str, address: str | None = None) -> MemoryTransport:
        address = address or f"mem://{node_id}"
        self.addresses[address] = node_id
        return MemoryTransport(self, node_id)

    # -- fault controls --------------------------------------------------------------
    def partition(self, group_a: set[str], group_b: set[str]) -> None:
        """Cut every link between the two groups, both ways."""
        for a in group_a:
            for b in group_b:
                self.faults.blocked |= {(a, b), (b, a)}

    def isolate(self, node: str, others: set[str]) -> None:
        self.partition({node}, set(others) - {node})

    def cut_one_way(self, src: str, dst: str) -> None:
        self.faults.blocked.add((src, dst))

    def heal(self) -> None:
        self.faults.blocked.clear()

    def crash(self, node: str) -> None:
        self.faults.crashed.add(node)

    def restart(self, node: str) -> None:
        self.faults.crashed.discard(node)

    # -- delivery --------------------------------------------------------------------
    def _latency(self) -> float:
        f = self.faults
        return f.delay + (self.rng.random() * f.jitter if f.jitter else 0.0)

    def _lost(self, src: str, dst: str) -> bool:
        f = self.faults
        return (src, dst) in f.blocked or (f.drop > 0 and self.rng.random() < f.drop)

    async def deliver(
        self, src: str, dst: str, batch: pb.PeerBatch, timeout: float
    ) -> pb.PeerBatchReply:
        self.batches_sent += 1
        self.messages_sent += len(batch.messages)
        if dst in self.faults.crashed or dst not in self.handlers or src in self.faults.crashed:
            raise PeerUnreachable(dst, "connection refused (node is down)")
        if self._lost(src, dst):
            await asyncio.sleep(timeout)
            raise PeerTimeout(dst, f"timed out after {timeout * 1000:.0f} ms (message lost)")
        await asyncio.sleep(self._latency())
        # Duplicates model a batch resent after a broken connection, which the gRPC
        # transport does only for idempotent batches (never for forwarded writes).
        copies = 2 if self.faults.duplicate and self.rng.random() < self.faults.duplicate \
            and idempotent(batch) else 1
        reply = None
        for copy in range(copies):
            if dst in self.faults.crashed:
                if copy:  # the first copy was handled: the outcome is ambiguous (below)
                    break
                raise PeerUnreachable(dst, "node crashed before answering")
            handler = self.handlers[dst]
            # Decode a copy, as a real network would: no object is shared between nodes.
            received = pb.PeerBatch.FromString(batch.SerializeToString())
            batch_handler = self.batch_handlers.get(dst)
            if batch_handler is not None:  # its own task, as a server runs each call
                results = await asyncio.ensure_future(
                    batch_handler(src, list(received.messages)))
            else:
                results = await asyncio.gather(*(handler(src, m) for m in received.messages))
            reply = pb.PeerBatchReply(results=results)
        if self._lost(dst, src) or dst in self.faults.crashed:
            await asyncio.sleep(timeout)
            raise PeerTimeout(dst, f"timed out after {timeout * 1000:.0f} ms (reply lost)")
        await asyncio.sleep(self._latency())
        return pb.PeerBatchReply.FromString(reply.SerializeToString())


class MemoryTransport:
    """One node's endpoint on a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, node_id: str) -> None:
        self.network = network
        self.node_id = node_id
        self.peer_ids: dict[str, str] = {}
        self.coalescer = Coalescer(node_id, self._send)
        self.lanes: list[Coalescer] = []

    async def start(self, handler: Handler, batch_handler: BatchHandler | None = None) -> None:
        self.network.handlers[self.node_id] = handler
        if batch_handler is not None:
            self.network.batch_handlers[self.node_id] = batch_handler
        else:
            self.network.batch_handlers.pop(self.node_id, None)

    def set_address(self, peer: str, address: str) -> None:
        self.peer_ids[peer] = self.network.addresses.get(address, peer)

    async def _send(self, peer: str, batch: pb.PeerBatch, timeout: float) -> pb.PeerBatchReply:
        target = self.peer_ids.get(peer, peer)
        return await self.network.deliver(self.node_id, target, batch, timeout)

    async def call(self, peer: str, message: pb.PeerMessage, timeout: float) -> pb.PeerResult:
        return await self.coalescer.call(peer, message, timeout)

    def new_lane(self) -> Coalescer:
        """Own per-peer queues over the same simulated links (see `Transport.new_lane`)."""
        lane = Coalescer(self.node_id, self._send)
        self.lanes.append(lane)
        return lane

    async def close(self) -> None:
        self.network.handlers.pop(self.node_id, None)
        self.network.batch_handlers.pop(self.node_id, None)
        await self.coalescer.close()
        for lane in self.lanes:
            await lane.close()
