"""Ring changes agreed through the Raft metadata group (issue 15; the table: core/ringlog.py).

Every change a node makes to the ring - its own join with its tokens, NORMAL, LEAVING,
LEFT, a replacement taking a dead member's place, a forced removal - is committed here
first (`commit`), and announced by gossip only once it is committed. A change the
committed ring contradicts (tokens another member holds, a second replacement of the same
dead node, a member that left turning NORMAL) is refused with `RingChangeRefused`, and
nothing is gossiped.

A node whose cluster has no Raft group (started without --raft-voters) has no `meta_send`:
`enabled` is False, `commit` does nothing, and gossip alone carries ring changes, as
before. The committed ring this node last read (`view`, `epoch`) is what `kv ring` shows
beside the gossiped one; it is refreshed after each commit and every `refresh_every`
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.errors import InvalidArgument, Unavailable
from kvstore.core.ringlog import STATUS_NAMES
from kvstore.services.meta_session import MetaSession

log = logging.getLogger(__name__)

MetaSend = Callable[[mpb.MetaRequest], Awaitable[mpb.MetaReply]]
RETRY_S = 0.2


class RingChangeRefused(InvalidArgument):
    """The Raft group refused a ring change: it contradicts the committed ring."""


class RingLog:
    def __init__(self, node_id: str, meta_send: MetaSend | None, *,
                 monotonic: Callable[[], float] = time.monotonic, timeout: float = 60.0,
                 refresh_every: float = 10.0) -> None:
        self.node_id = node_id
        self.meta_send = meta_send
        self.monotonic = monotonic
        self.timeout = timeout
        self.refresh_every = refresh_every
        self.view: dict[str, mpb.RingRecord] = {}
        self.epoch = 0
        self.commits = 0
        self.commit_seconds = 0.0  # total time spent committing (the Raft round trips)
        self._session = MetaSession(self._call)
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.meta_send is not None

    # -- the metadata group ---------------------------------------------------------------
    async def _call(self, req: mpb.MetaRequest, deadline: float) -> mpb.MetaReply:
        assert self.meta_send is not None
        problem = "no answer"
        while True:
            left = deadline - self.monotonic()
            if left <= 0:
                raise Unavailable(f"the raft group did not record the ring change within "
                                  f"{self.timeout:.0f}s ({problem}); try again once it has "
                                  "a leader (kv raft status)")
            try:
                reply = await asyncio.wait_for(self.meta_send(req), left)
                if reply.result.code not in (mpb.META_UNKNOWN, mpb.META_UNAVAILABLE):
                    return reply
                problem = reply.result.error
            except TimeoutError:
                pass
            await asyncio.sleep(min(RETRY_S, max(0.001, deadline - self.monotonic())))

    async def _command(self, deadline: float, **op) -> mpb.MetaResult:
        while True:
            result = await self._session.command(deadline, **op)
            if result.code != mpb.META_SESSION_EXPIRED:
                return result
            # The session was forgotten: a ring change repeats safely (the table accepts
            # the state a member is already in), so register again and send it again.
            self._session.forget()

    async def commit(self, node: str, status: int, tokens: Iterable[int] = (), *,
                     replaces: str = "", by: str = "") -> int:
        """Record `node` turning `status` (core/ringlog.py values); the revision, 0 when
        there is no Raft group. Raises RingChangeRefused when the committed ring says no,
        Unavailable when the group gives no answer within `timeout`."""
        if not self.enabled:
            return 0
        started = self.monotonic()
        change = mpb.RingChange(node=node, status=status, tokens=sorted(tokens),
                                replaces=replaces, by=by or self.node_id)
        result = await self._command(started + self.timeout, ring_change=change)
        took = self.monotonic() - started
        self.commits += 1
        self.commit_seconds += took
        if result.code == mpb.META_COMPARE_FAILED:
            log.error("the raft group refused %s turning %s: %s", node, STATUS_NAMES[status],
                      result.error)
            raise RingChangeRefused(f"ring change refused by the raft group: {result.error}")
        if result.code != mpb.META_OK:
            raise Unavailable(f"ring change of {node} to {STATUS_NAMES[status]} failed: "
                              f"{result.error}")
        log.info("ring change committed: %s %s%s at revision %d (%.1f ms)", node,
                 STATUS_NAMES[status], f" in place of {replaces}" if replaces else "",
                 result.revision, took * 1000)
        with contextlib.suppress(Unavailable):
            await self.refresh(timeout=2.0)
        return result.revision

    async def refresh(self, timeout: float | None = None) -> dict[str, mpb.RingRecord]:
        """Read the committed ring (linearizable) into `view` and `epoch`."""
        if not self.enabled:
            return {}
        reply = await self._call(mpb.MetaRequest(ring_read=mpb.RingRead()),
                                 self.monotonic() + (timeout or self.timeout))
        if reply.result.code != mpb.META_OK:
            raise Unavailable(reply.result.error)
        if reply.ring_epoch >= self.epoch:
            self.view = {r.node: r for r in reply.ring}
            self.epoch = reply.ring_epoch
        return self.view

    def status(self, node: str) -> str:
        """The committed status of `node` as last read ("" if not recorded)."""
        record = self.view.get(node)
        return STATUS_NAMES.get(record.status, "") if record is not None else ""

    # -- background -----------------------------------------------------------------------
    def start(self, first: Callable[[], Awaitable[None]] | None = None,
              on_view: Callable[[dict[str, mpb.RingRecord]], None] | None = None) -> None:
        """Run `first` (e.g. recording this node's place; retried until it is done or
        refused), then refresh the view every `refresh_every` seconds, passing it to
        `on_view`."""
        if not self.enabled:
            return
        self._task = asyncio.ensure_future(self._run(first, on_view))

    async def _run(self, first, on_view) -> None:
        while first is not None:
            try:
                await first()
                break
            except RingChangeRefused:
                break  # logged; `kv ring` shows the disagreement
            except Unavailable as exc:
                log.info("the ring change is not recorded yet (%s); trying again", exc)
                await asyncio.sleep(1.0)
        while True:
            try:
                view = await self.refresh(timeout=max(2.0, self.refresh_every))
                if on_view is not None:
                    on_view(view)
            except Unavailable:
                pass
            await asyncio.sleep(self.refresh_every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
