"""Per-peer coalescing: results in order, and deadlines kept with one timer per batch."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvstore._proto import internode_pb2 as pb
from kvstore.transport.base import PeerTimeout, PeerUnreachable
from kvstore.transport.batching import Coalescer


def _msg(i: int) -> pb.PeerMessage:
    return pb.PeerMessage(read=pb.ReplicaRead(key=str(i).encode()))


def _echo(batch: pb.PeerBatch) -> pb.PeerBatchReply:
    return pb.PeerBatchReply(results=[pb.PeerResult(raw=m.read.key) for m in batch.messages])


def test_messages_pending_together_ride_in_one_batch_and_get_their_own_results() -> None:
    batches = []

    async def sender(peer, batch, timeout):
        batches.append(len(batch.messages))
        await asyncio.sleep(0.01)
        return _echo(batch)

    async def main():
        c = Coalescer("n1", sender)
        got = await asyncio.gather(*(c.call("n2", _msg(i), 1.0) for i in range(50)))
        assert [r.raw for r in got] == [str(i).encode() for i in range(50)]
        await c.close()

    asyncio.run(main())
    assert batches == [50]  # all submitted before the pump ran: one batch


def test_each_message_times_out_at_its_own_deadline_in_flight_and_pending() -> None:
    """A hung peer: the message in flight and those queued behind it fail at their own
    deadlines (not the batch's longest one), and a late reply is ignored."""
    release = asyncio.Event

    async def main():
        gate = release()

        async def sender(peer, batch, timeout):
            await gate.wait()
            return _echo(batch)

        c = Coalescer("n1", sender)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def timed(i, timeout):
            try:
                await c.call("n2", _msg(i), timeout)
            except PeerTimeout as exc:
                return loop.time() - t0, str(exc)
            return loop.time() - t0, "ok"

        first = asyncio.ensure_future(timed(0, 0.30))  # in flight, never answered in time
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(timed(i, t)) for i, t in ((1, 0.10), (2, 0.20))]
        results = await asyncio.gather(first, *queued)
        for (at, text), want in zip(results, (0.30, 0.11, 0.21), strict=True):
            assert "timed out after" in text
            assert want - 0.02 <= at < want + 0.15, (at, want)
        gate.set()  # the late reply finds every caller gone
        await asyncio.sleep(0.01)
        await c.close()

    asyncio.run(main())


def test_transport_errors_reach_every_message_of_the_batch() -> None:
    async def sender(peer, batch, timeout):
        raise PeerUnreachable(peer, "connection refused")

    async def main():
        c = Coalescer("n1", sender)
        results = await asyncio.gather(*(c.call("n2", _msg(i), 1.0) for i in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, PeerUnreachable) for r in results)
        await c.close()

    asyncio.run(main())


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    async def sender(peer, batch, timeout):
        await asyncio.sleep(0.05)
        return _echo(batch)

    async def main():
        c = Coalescer("n1", sender)
        a = asyncio.ensure_future(c.call("n2", _msg(1), 1.0))
        b = asyncio.ensure_future(c.call("n2", _msg(2), 1.0))
        await asyncio.sleep(0.01)
        a.cancel()
        assert (await b).raw == b"2"
        with pytest.raises(asyncio.CancelledError):
            await a
        start = time.perf_counter()
        await c.close()
        assert time.perf_counter() - start < 0.5

    asyncio.run(main())
