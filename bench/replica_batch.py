"""CPU per replicated write on the replica side: one task + one merge per message (the
path before issue 13's batch handler) against one `Replica.merge_many` per inbound batch.

    python bench/replica_batch.py [--batch 8] [--streams 4] [--seconds 3] [--rounds 3]

A real `AsyncStore` over a durable SQLite engine (`--sync full`, writer and reader
threads) in a temp directory, uvloop; `--streams` batches in flight at once, each of
`--batch` writes of fresh 100-byte versions to random keys out of 10,000 (decoded from
protobuf as a peer's would be). The two ways alternate `--rounds` times; it prints the
process CPU (user + system, all threads) per write and writes per second for each.
Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from kvstore.core import versions
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, SqliteEngine
from kvstore.storage.epochs import EpochAllocator


def _message(rng: random.Random, counter: list[int]):
    counter[0] += 1
    key = f"key{rng.randrange(10_000)}".encode()
    state = versions.to_pb(versions.update([], {}, "n2@1", rng.randbytes(100),
                                           now_ms=1, floor=counter[0]))
    return key, state.SerializeToString()


async def _per_message(replica: Replica, batch) -> None:
    async def one(key: bytes, raw: bytes) -> None:
        state = versions.pb.VersionSet.FromString(raw)
        await replica.merge(key, versions.from_pb(state))

    await asyncio.gather(*(one(k, raw) for k, raw in batch))


async def _batched(replica: Replica, batch) -> None:
    items = []
    for key, raw in batch:
        state = versions.pb.VersionSet.FromString(raw)
        items.append((key, versions.from_pb(state), None, 0, None))
    await replica.merge_many(items)


async def _run(way, replica: Replica, args, rng: random.Random, counter) -> tuple[float, float]:
    done = 0
    stop_at = time.perf_counter() + args.seconds

    async def stream() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            batch = [_message(rng, counter) for _ in range(args.batch)]
            await way(replica, batch)
            done += len(batch)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(args.streams)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / done * 1e6, done / wall


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = AsyncStore(SqliteEngine(Path(tmp) / "data.db", sync=args.sync))
        replica = Replica("n1", store, lambda: int(time.time() * 1000),
                          EpochAllocator(None, lambda: int(time.time() * 1000)))
        rng, counter = random.Random(1), [0]
        for r in range(args.rounds):
            for name, way in (("per message", _per_message), ("merge_many", _batched)):
                cpu_us, rate = await _run(way, replica, args, rng, counter)
                print(f"round {r + 1}  {name:12s} {cpu_us:7.1f} us CPU/write  "
                      f"{rate:8.0f} writes/s")
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", default="full", choices=("full", "normal", "off"))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parser.parse_args()))
