"""The Python request path alone: CPU per QUORUM put (and get) through the coordinator and
the replicas of a 3-node in-process cluster, without gRPC, threads, disks or other
processes.

    python bench/request_path_cpu.py [--ops 3000] [--concurrency 64] [--rounds 3]
                                     [--profile DIR]

The nodes are real `Node`s on the simulation's in-memory network and inline memory
engine (tests/simkit), driven in virtual time, so a run is deterministic and its process
CPU (`time.process_time`) is all request-path Python: validation, placement, minting,
encoding, the coalescer, the peer handlers, merges, quorum counting and the reply. It is
the figure to watch for changes to that Python, and it is robust to a busy machine
(the end-to-end `kv bench` CPU per op moves +-15% with the load). It does not include
the gRPC and storage-thread costs the real node adds (docs/benchmarks.md).
`--profile DIR` also writes a cProfile of each measured phase (DIR/<phase>.prof, the last
round's) for `python -m pstats`. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from simkit.cluster import SimCluster
from simkit.cluster import run_scenario as run


def measure(args) -> dict[str, float]:
    results: dict[str, float] = {}

    async def scenario(c: SimCluster) -> None:
        rng = random.Random(1)
        keys = [f"key{i}".encode() for i in range(args.records)]
        contexts: dict[bytes, bytes] = {}
        nodes = list(c.nodes)

        async def phase(name: str, op) -> None:
            left = [args.ops]

            async def worker(w: int) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await op(nodes[w % len(nodes)], keys[rng.randrange(len(keys))])

            profiler = cProfile.Profile() if args.profile and "warm" not in name else None
            started = time.process_time()
            if profiler is not None:
                profiler.enable()
            await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
            if profiler is not None:
                profiler.disable()
            results[name] = (time.process_time() - started) / args.ops * 1e6
            if profiler is not None:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(Path(args.profile) / f"{name.replace(' ', '_')}.prof")
            await c.settle()

        async def put(via: str, key: bytes) -> None:
            reply = await c.put(via, key, rng.randbytes(100), "QUORUM",
                                context=contexts.get(key, b""))
            assert not reply.HasField("error"), reply.error.message
            contexts[key] = reply.put.context

        async def get(via: str, key: bytes) -> None:
            reply = await c.get(via, key, "QUORUM")
            assert not reply.HasField("error"), reply.error.message

        async def get_one(via: str, key: bytes) -> None:
            reply = await c.get(via, key, "ONE")
            assert not reply.HasField("error"), reply.error.message

        await phase("warm-up put", put)
        await phase("QUORUM put", put)
        await phase("QUORUM get", get)
        await phase("ONE get", get_one)

    run(scenario, seed=1, antientropy_interval=0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="DIR", default="",
                        help="write a cProfile of each measured phase to DIR/<phase>.prof")
    args = parser.parse_args()
    for r in range(args.rounds):
        out = measure(args)
        print(f"round {r + 1}: " + ", ".join(f"{name} {us:.0f} us CPU/op"
                                             for name, us in out.items() if "warm" not in name))


if __name__ == "__main__":
    main()
