"""A node's own exactly-once session on the Raft metadata group.

Services that write to the group from inside a node (transaction records, ring changes)
register a client id once and number every command, so a command retried after a lost
answer is applied once (core/meta.py keeps each session's answers). Each command also
says which sequence numbers are answered (`acked`: below the lowest still open), so the
group can forget those answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.errors import Unavailable

# (request, deadline) -> reply; retries until a definite answer or the deadline
MetaCall = Callable[[mpb.MetaRequest, float], Awaitable[mpb.MetaReply]]


class MetaSession:
    def __init__(self, call: MetaCall) -> None:
        self._call = call
        self.client_id = 0
        self._seq = 0
        self._open: set[int] = set()
        self._register = asyncio.Lock()

    async def command(self, deadline: float, **op) -> mpb.MetaResult:
        """Send one MetaCommand (`op`: its body) in this session; registers first if needed.

        A result with META_SESSION_EXPIRED is returned as it is: whether repeating the
        command is safe is the caller's to say (`forget()`, then send it again).
        """
        async with self._register:
            if not self.client_id:
                reply = await self._call(mpb.MetaRequest(command=mpb.MetaCommand(
                    register=mpb.RegisterClient())), deadline)
                if reply.result.code != mpb.META_OK:
                    raise Unavailable(reply.result.error)
                self.client_id = reply.result.client_id
        self._seq += 1
        seq = self._seq
        self._open.add(seq)
        cmd = mpb.MetaCommand(session=mpb.Session(
            client_id=self.client_id, seq=seq, acked=min(self._open) - 1), **op)
        try:
            reply = await self._call(mpb.MetaRequest(command=cmd), deadline)
        finally:
            self._open.discard(seq)
        return reply.result

    def forget(self) -> None:
        """The group no longer knows this session: the next command registers again."""
        self.client_id = 0
