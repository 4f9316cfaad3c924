"""MetaSession: one registration, numbered commands, and `acked` below the lowest open."""

from __future__ import annotations

import asyncio

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.errors import Unavailable
from kvstore.services.meta_session import MetaSession


class Group:
    """Answers like the metadata group: a client id on register, OK with the session seen."""

    def __init__(self) -> None:
        self.registrations = 0
        self.sessions: list[tuple[int, int, int]] = []
        self.release = asyncio.Event()
        self.refuse = False

    async def call(self, req: mpb.MetaRequest, deadline: float) -> mpb.MetaReply:
        cmd = req.command
        if cmd.HasField("register"):
            self.registrations += 1
            if self.refuse:
                return mpb.MetaReply(result=mpb.MetaResult(code=mpb.META_UNAVAILABLE,
                                                           error="no leader"))
            return mpb.MetaReply(result=mpb.MetaResult(code=mpb.META_OK,
                                                       client_id=10 + self.registrations))
        s = cmd.session
        self.sessions.append((s.client_id, s.seq, s.acked))
        if s.seq == 1:
            await self.release.wait()  # the first command stays open a while
        return mpb.MetaReply(result=mpb.MetaResult(code=mpb.META_OK, revision=s.seq))


def test_commands_are_numbered_and_acked_below_the_lowest_open() -> None:
    async def main() -> Group:
        group = Group()
        session = MetaSession(group.call)
        first = asyncio.ensure_future(session.command(0.0, put=mpb.MetaPut(key="a", value="1")))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        second = await session.command(0.0, put=mpb.MetaPut(key="b", value="2"))
        assert second.revision == 2
        group.release.set()
        assert (await first).revision == 1
        await session.command(0.0, put=mpb.MetaPut(key="c", value="3"))
        session.forget()
        await session.command(0.0, put=mpb.MetaPut(key="d", value="4"))
        return group

    group = asyncio.run(main())
    assert group.registrations == 2  # once, and again after forget()
    # seq 2 was sent while 1 was open (acked 0); seq 3 after both answered (acked 2)
    assert group.sessions == [(11, 1, 0), (11, 2, 0), (11, 3, 2), (12, 4, 3)]


def test_a_refused_registration_is_unavailable() -> None:
    async def main() -> None:
        group = Group()
        group.refuse = True
        with pytest.raises(Unavailable, match="no leader"):
            await MetaSession(group.call).command(0.0, put=mpb.MetaPut(key="a", value="1"))

    asyncio.run(main())
