"""Hinted handoff: hold writes for replicas that were down, deliver them when they are back.

A fallback node stores a sloppy-quorum write as a hint naming the intended owner
(durably, in the hint store). Every `interval` this service drops hints that are too old
or whose owner left the cluster (logged and counted, never retried), then, for each owner
that membership says is up, sends its hints as ordinary replica writes in batches of
`batch` (the lane coalesces a batch into one call) and deletes only the ones the owner
acknowledged.

Delivery is background work and must not take the foreground's latency with it
(issue 13: a node back from an outage is a replica of every key the foreground touches).
So it is paced: at most `batch` hint writes in flight, never more than `rate` hints per
second over a pass (0: unpaced), and it has its own lane (`Transport.new_lane`), so a
batch of hints in flight never holds back the foreground's replica writes to the same
peer. Pacing never makes a hint expire: a pass raises the rate so the backlog drains
within half the hints' max age (`core/pacing.drain_rate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.core.errors import Unavailable
from kvstore.core.pacing import Pacer, drain_rate
from kvstore.core.versions import Sibling
from kvstore.storage.hints import DEFAULT_MAX_AGE_MS, HintStore, HintStoreFull
from kvstore.transport.base import Lane, TransportError

log = logging.getLogger(__name__)

# Runs a blocking call off the event loop (asyncio.to_thread), or inline in simulations.
Offload = Callable[..., Awaitable[Any]]


DEFAULT_BATCH = 64  # hint writes in flight to one owner at a time
DEFAULT_RATE = 500.0  # hints per second a node delivers (over all owners); 0: unpaced


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class HandoffService:
    def __init__(
        self,
        node_id: str,
        hints: HintStore,
        transport: Lane,
        membership,
        *,
        clock_ms: Callable[[], int],
        offload: Offload = asyncio.to_thread,
        enabled: bool = True,
        interval: float = 1.0,
        batch: int = DEFAULT_BATCH,
        rate: float = DEFAULT_RATE,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`transport`: the lane hint writes go on (the node gives handoff its own);
        `monotonic`: the pacing clock (simulations pass virtual time)."""
        assert batch >= 1 and rate >= 0, (batch, rate)
        self.node_id = node_id
        self.hints = hints
        self.transport = transport
        self.membership = membership
        self.clock_ms = clock_ms
        self.offload = offload
        self.enabled = enabled
        self.interval = interval
        self.batch = batch
        self.rate = rate
        self.monotonic = monotonic
        self.max_age_ms = max_age_ms
        self.timeout = timeout
        self.metrics: Counter[str] = Counter()
        self._task: asyncio.Task | None = None

    async def store(self, target: str, key: bytes, siblings: list[Sibling]) -> None:
        """Keep a write for `target`; raises Unavailable when hints are off or full."""
        if not self.enabled:
            raise Unavailable(f"{self.node_id} does not hold hints (--no-hinted-handoff)")
        try:
            await self.offload(self.hints.add, target, key, versions.encode(siblings),
                               self.clock_ms())
        except HintStoreFull as exc:
            self.metrics["refused_full"] += 1
            raise Unavailable(f"{self.node_id} cannot hold more hints: {exc}") from exc
        self.metrics["stored"] += 1

    async def pending_by_target(self) -> dict[str, int]:
        return await self.offload(self.hints.count_by_target)

    async def expire(self) -> None:
        members = set(self.membership.members)
        dropped = await self.offload(self.hints.expire, self.clock_ms(), self.max_age_ms, members)
        dropped += await self.offload(self.hints.take_dropped)
        for hint in dropped:
            self.metrics[f"dropped_{hint.reason}"] += 1
            log.warning("dropped hint %d for %s (key %r, created %d ms): %s", hint.id,
                        hint.target, hint.key, hint.created_ms, hint.reason)

    async def deliver_once(self) -> int:
        """One pass: expire, then deliver to every owner that is up, batch by batch while
        it acknowledges whole batches, paced to the rate. Returns the count delivered."""
        await self.expire()
        delivered = 0
        started = self.monotonic()
        pending = await self.pending_by_target()
        pacer = Pacer(drain_rate(self.rate, sum(pending.values()), self.max_age_ms))
        for target, count in sorted(pending.items()):
            if not (count and target != self.node_id and self.membership.is_up(target)):
                continue
            while True:
                sent = await self._deliver(target)
                delivered += sent
                # never ahead of the rate; at least a yield, so a drain never holds the loop
                await asyncio.sleep(pacer.owed(delivered, self.monotonic() - started))
                if sent < self.batch or not self.membership.is_up(target):
                    break
        return delivered

    async def _deliver(self, target: str) -> int:
        pending = await self.offload(self.hints.pending, target, self.batch)
        if not pending:
            return 0

        async def send(hint) -> int | None:
            message = pb.PeerMessage(write=pb.ReplicaWrite(
                key=hint.key, state=versions.to_pb(versions.decode(hint.record))))
            try:
                result = await self.transport.call(target, message, self.timeout)
            except TransportError as exc:
                log.info("handoff to %s paused: %s", target, exc.reason)
                return None
            return None if result.HasField("error") else hint.id

        acked = [i for i in await asyncio.gather(*(send(h) for h in pending)) if i is not None]
        if acked:
            await self.offload(self.hints.delete, acked)
            self.metrics["delivered"] += len(acked)
            log.info("delivered %d hints to %s", len(acked), target)
        return len(acked)

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_once()
            except Exception:
                log.exception("hinted handoff pass failed; retrying")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
