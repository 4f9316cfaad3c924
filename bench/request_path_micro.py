"""Micro-benchmarks of the request path's pieces that issue 13's fourth pass changed:
quorum counting, the versions codecs, a replica merge, and building replies.

    python bench/request_path_micro.py [--n 20000]

Each line is process CPU per call (best of 3 runs of `--n` calls). Run it against two
trees (PYTHONPATH=OLD_TREE) to compare a change; docs/benchmarks.md ("Where the CPU goes")
has the figures. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions as v
from kvstore.services.coordinator import Coordinator, Trace, _Answer


def timed(label: str, fn, n: int) -> None:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - started) / n * 1e6)
    print(f"{label:58s} {best:7.2f} us")


async def gather(n: int) -> None:
    """`Coordinator._gather` over 2 replica tasks answered on the next loop turn."""
    c = Coordinator.__new__(Coordinator)  # only what _gather touches
    c.metrics, c.background, c.node_id = Counter(), set(), "n1"
    loop = asyncio.get_running_loop()

    async def answer(node: str, fut: asyncio.Future) -> _Answer:
        await fut
        return _Answer(node, True, 0.1, siblings=[])

    for need, label in ((1, "W-1=1 of 2"), (2, "R=2 of 2, with spares")):
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(n):
                f1, f2 = loop.create_future(), loop.create_future()
                tasks = {"n2": asyncio.create_task(answer("n2", f1)),
                         "n3": asyncio.create_task(answer("n3", f2))}
                loop.call_soon(f1.set_result, None)
                loop.call_soon(f2.set_result, None)
                await c._gather(tasks, need, 2.0, Trace(False, "n1", time.perf_counter),
                                (lambda a: []) if need == 2 else None)
            await asyncio.sleep(0)
            best = min(best, (time.process_time() - started) / n * 1e6)
        print(f"{'_gather, ' + label + ' (incl. 2 tasks)':58s} {best:7.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    # a key written a few times: one sibling whose past names 3 actors, then a second write
    first = v.update([], v.Context({"n1@abc": 3, "n2@k1": 2, "n3@zz": 5}), "n1@abc",
                     b"x" * 100, now_ms=1_700_000_000_000, floor=3)
    stored = v.encode_record(v.Record(first, 1234, first[-1].counter))
    second = v.update(first, v.read_context(first), "n2@k1", b"y" * 100,
                      now_ms=1_700_000_000_001)
    wire = v.to_pb(second)
    sibling, message = first[0], v.sibling_to_pb(first[0])
    merged = v.sync(v.decode_record(stored).siblings, v.from_pb(wire))

    def merge() -> bytes:  # what a replica does with one replicated write
        rec = v.decode_record(stored)
        rec.siblings = v.sync(rec.siblings, v.from_pb(wire))
        return v.encode_record(rec)

    def get_reply() -> cpb.ClientReply:
        reply = cpb.ClientReply()
        result = reply.get
        result.found = True
        for s in first:
            fill(result.siblings.add(), s)
        result.context = b"ctx"
        return reply

    def get_reply_constructed() -> cpb.ClientReply:  # as the coordinator built it before
        return cpb.ClientReply(get=cpb.GetResult(
            found=True, siblings=[v.sibling_to_pb(s) for s in first], context=b"ctx"))

    fill = getattr(v, "fill_version", None) or (lambda out, s: out.CopyFrom(v.sibling_to_pb(s)))
    timed("sibling_to_pb (one version, 3-actor past)", lambda: v.sibling_to_pb(sibling), n)
    timed("sibling_from_pb", lambda: v.sibling_from_pb(message), n)
    timed("to_pb (2 versions)", lambda: v.to_pb(second), n)
    timed("encode_record (merged)", lambda: v.encode_record(v.Record(merged, 1234, 3)), n)
    timed("decode_record (stored)", lambda: v.decode_record(stored), n)
    timed("replica merge: decode, from_pb, sync, encode", merge, n)
    timed("get reply, built by constructors", get_reply_constructed, n)
    timed("get reply, filled in place", get_reply, n)
    timed("fan-out PeerMessage, built by constructors", lambda: pb.PeerMessage(
        write=pb.ReplicaWrite(key=b"key", state=wire, reply_state=False, fence=None)), n)
    timed("fan-out PeerMessage, filled in place", lambda: _fan_out(wire), n)
    try:
        import uvloop
    except ImportError:
        asyncio.run(gather(n // 4))
    else:
        uvloop.run(gather(n // 4))


def _fan_out(state) -> pb.PeerMessage:
    message = pb.PeerMessage()
    message.write.key = b"key"
    message.write.state.CopyFrom(state)
    return message


if __name__ == "__main__":
    main()
