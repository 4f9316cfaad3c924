"""The one interface services use to talk to peers.

Services never touch grpc: they call `Transport.call(peer_id, message, timeout)` and get a
`PeerResult`, or an exception saying why not. Implementations coalesce every message
pending for one peer into a single batch (one batch in flight per peer), which is where
most of the throughput comes from (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from kvstore._proto import internode_pb2 as pb

# Handles one inbound message from `source` and returns its result.
Handler = Callable[[str, pb.PeerMessage], Awaitable[pb.PeerResult]]
# Handles one inbound batch from `source`: a result per message, in order (the node merges
# a batch's replica writes with one storage call). Optional: without one, each message
# goes to the Handler on its own.
BatchHandler = Callable[[str, Sequence[pb.PeerMessage]], Awaitable[list[pb.PeerResult]]]


class TransportError(Exception):
    """A message could not be delivered or answered."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class PeerTimeout(TransportError):
    """No answer within the deadline (the message may still have been applied)."""


class PeerUnreachable(TransportError):
    """The peer could not be reached (the message was not delivered)."""


def idempotent(batch: pb.PeerBatch) -> bool:
    """Whether applying the batch twice is harmless: everything but forwarded client
    requests (a forwarded write would mint a second version) and raft admin requests (a
    JSON membership change, tag 2, has no session). Forwarded metadata requests (`meta`)
    carry a client session, so the state machine applies them at most once. Only such
    batches may be resent, or (in the simulated network) duplicated."""
    return not any(m.HasField("forward") or (m.HasField("raft") and m.raft[:1] == b"\x02")
                   for m in batch.messages)


class Lane(Protocol):
    """A set of per-peer queues: `call` as on a Transport, and `close`."""

    async def call(self, peer: str, message: pb.PeerMessage, timeout: float) -> pb.PeerResult:
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    node_id: str

    async def start(self, handler: Handler, batch_handler: BatchHandler | None = None) -> None:
        """Begin delivering inbound messages to `handler`, or whole batches to
        `batch_handler` when given."""
        ...

    async def call(self, peer: str, message: pb.PeerMessage, timeout: float) -> pb.PeerResult:
        """Send one message to `peer` and wait for its result, at most `timeout` seconds."""
        ...

    def set_address(self, peer: str, address: str) -> None:
        """Learn or update where `peer` listens (membership feeds this)."""
        ...

    def new_lane(self) -> Lane:
        """A second set of per-peer queues over the same connections, for requests whose
        answer waits on later messages to the same peer: on the shared one-batch-in-flight
        queue they would hold those messages back (head-of-line blocking; e.g. a forwarded
        metadata write waits for its commit, which needs the raft acknowledgements queued
        behind it). `close()` closes the lanes too."""
        ...

    async def close(self) -> None: ...
