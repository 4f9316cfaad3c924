"""CPU per replicated write on one replica, as a put's replica writes arrive: a chain of
versions per key (each write's context covers the key's previous version, as `kv bench`'s
puts do), minted by two other coordinators, pre-encoded as a peer sends them.

    python bench/replica_merge_cpu.py [--sync off] [--batch 8] [--streams 4] [--rounds 3]
                                      [--inline] [--profile FILE]

Measured per write (process CPU, every thread): the protobuf parse and `from_pb` of the
incoming state (what `Node.handle_peer_batch` does on the loop), one `Replica.merge_many`
per inbound batch on a real `AsyncStore` over a `SqliteEngine` in a temp directory (writer
thread, group commit), and the reply message. A warm-up round writes every key first, so
the measured rounds merge into stored records, as a steady-state put does. Unlike
`replica_batch.py` the messages are built before the clock starts. It runs against an
older tree too (`PYTHONPATH=/old/tree`): without `merge_many(items, states)` it passes no
states. `--inline`: no threads (with `--profile FILE`, a cProfile of the last round).
Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import random
import statistics
import tempfile
import time
from pathlib import Path

from kvstore._proto import internode_pb2 as ipb
from kvstore.core import versions
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, SqliteEngine
from kvstore.storage.epochs import EpochAllocator

HAS_STATES = "states" in inspect.signature(Replica.merge_many).parameters


def messages(n: int, keys: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    state: dict[bytes, list] = {}
    out = []
    for i in range(n):
        key = f"key{rng.randrange(keys)}".encode()
        siblings = state.get(key, [])
        actor = rng.choice(["n2@1", "n3@1"])
        floor = max([s.counter for s in siblings if s.node == actor] + [0])
        new = versions.update(siblings, versions.context_of(siblings), actor,
                              rng.randbytes(100), now_ms=1_700_000_000_000 + i, floor=floor)
        state[key] = new
        out.append((key, versions.to_pb(new).SerializeToString()))
    return out


async def run(args) -> list[float]:
    msgs = messages(args.writes * (args.rounds + 1), args.keys, random.Random(1))
    with tempfile.TemporaryDirectory() as tmp:
        store = AsyncStore(SqliteEngine(Path(tmp) / "data.db", sync=args.sync),
                           inline=args.inline)
        clock = lambda: int(time.time() * 1000)  # noqa: E731
        replica = Replica("n1", store, clock, EpochAllocator(None, clock))
        pos = [0]

        async def stream(left: list[int]) -> None:
            while left[0] > 0:
                left[0] -= args.batch
                batch = msgs[pos[0]:pos[0] + args.batch]
                pos[0] += args.batch
                items, states = [], []
                for key, raw in batch:
                    state = versions.pb.VersionSet.FromString(raw)
                    purged, at = versions.marker_from_pb(state)
                    items.append((key, versions.from_pb(state), purged, at, None))
                    states.append(state)
                if HAS_STATES:
                    answers = await replica.merge_many(items, states)
                else:
                    answers = await replica.merge_many(items)
                for _ in answers:
                    ipb.PeerResult(found=True)

        async def round_() -> None:
            await asyncio.gather(*(stream([args.writes // args.streams])
                                   for _ in range(args.streams)))

        await round_()  # warm-up: every key stored once
        results = []
        for _ in range(args.rounds):
            profiler = cProfile.Profile() if args.profile else None
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            await round_()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            results.append((time.process_time() - cpu) / args.writes * 1e6)
        await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=8000, help="per round")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="writes per inbound batch")
    parser.add_argument("--streams", type=int, default=4, help="batches in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", default="off", choices=("full", "normal", "off"))
    parser.add_argument("--inline", action="store_true", help="no threads")
    parser.add_argument("--profile", help="write a cProfile of the last round here")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args))
    print(f"{'with states' if HAS_STATES else 'no states'}, sync {args.sync}: "
          + " ".join(f"{x:.1f}" for x in results)
          + f"  median {statistics.median(results):.1f} us CPU per replicated write")


if __name__ == "__main__":
    main()
