"""Hinted handoff: hold writes for replicas that were down, deliver them when they are back.

A fallback node stores a sloppy-quorum write as a hint naming the intended owner
(durably, in the hint store). Every `interval` this service drops hints that are too old
or whose owner left the cluster (logged and counted, never retried), then, for each owner
that membership says is up, sends a batch of its hints as ordinary replica writes (the
transport coalesces them into one call) and deletes only the ones the owner acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.core.errors import Unavailable
from kvstore.core.versions import Sibling
from kvstore.storage.hints import DEFAULT_MAX_AGE_MS, HintStore, HintStoreFull
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)

# Runs a blocking call off the event loop (asyncio.to_thread), or inline in simulations.
Offload = Callable[..., Awaitable[Any]]


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class HandoffService:
    def __init__(
        self,
        node_id: str,
        hints: HintStore,
        transport: Transport,
        membership,
        *,
        clock_ms: Callable[[], int],
        offload: Offload = asyncio.to_thread,
        enabled: bool = True,
        interval: float = 1.0,
        batch: int = 500,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        timeout: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.hints = hints
        self.transport = transport
        self.membership = membership
        self.clock_ms = clock_ms
        self.offload = offload
        self.enabled = enabled
        self.interval = interval
        self.batch = batch
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
        """One pass: expire, then deliver a batch to every owner that is up. Returns count."""
        await self.expire()
        delivered = 0
        for target, count in sorted((await self.pending_by_target()).items()):
            if count and target != self.node_id and self.membership.is_up(target):
                # drain while the owner keeps acknowledging whole batches
                while (sent := await self._deliver(target)) == self.batch:
                    delivered += sent
                delivered += sent
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
