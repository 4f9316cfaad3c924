"""How long an anti-entropy tree build holds the event loop: the scan's longest stall.

    python bench/ae_scan_stall.py [--keys 10000] [--repeat 5] [--out bench/out/ae-scan-stall]

Writes `--keys` one-version records (100-byte values) into a durable SQLite store on one
node of a 3-node ring (N=3, so every key is shared with every peer), then builds the
Merkle tree anti-entropy builds at the start of a session (`AntiEntropyService._tree`,
the whole ring, with one peer) `--repeat` times after one warm-up build, twice each: as
committed (decode and digest `SCAN_SLICE` records between yields) and as before issue
13's fifth pass (a whole `SCAN_PAGE` page at once). Beside each build a probe task
sleeps 1 ms in a loop and records how late each wake-up came: what any request on that
loop would have waited. Reported per mode: the build's wall time and the probe's p50 /
p99 / max lateness (medians over the repeats). Nothing here asserts a speed; the numbers
scale with the machine's load, so the two modes alternate within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvstore.core.ring import Ring
from kvstore.core.versions import Sibling
from kvstore.services import antientropy
from kvstore.services.antientropy import WHOLE_RING, AntiEntropyService
from kvstore.services.replica import Replica
from kvstore.storage.sqlite import SqliteEngine
from kvstore.storage.store import AsyncStore

NODES = ("n1", "n2", "n3")


class Members:
    """What the scan reads of membership: the ring (no gossip runs in this benchmark)."""

    def __init__(self) -> None:
        self.ring = Ring.of_nodes(NODES)

    def is_up(self, node: str) -> bool:
        return True


async def probe(stop: asyncio.Event, late: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(0.001)
        late.append(max(0.0, loop.time() - t0 - 0.001))


async def build(service: AntiEntropyService, slice_: int) -> dict[str, float]:
    antientropy.SCAN_SLICE = slice_
    stop = asyncio.Event()
    late: list[float] = []
    task = asyncio.get_running_loop().create_task(probe(stop, late))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await service._tree("n2", *WHOLE_RING, service.depth)
    took = time.perf_counter() - started
    stop.set()
    await task
    late.sort()
    return {"build_ms": took * 1000, "p50_late_ms": late[len(late) // 2] * 1000,
            "p99_late_ms": late[int(len(late) * 0.99)] * 1000, "max_late_ms": late[-1] * 1000}


async def run(opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    store = AsyncStore(SqliteEngine(root / "data.db", "full"))
    clock = lambda: int(time.time() * 1000)  # noqa: E731
    replica = Replica("n1", store, clock)
    service = AntiEntropyService("n1", store, None, Members(), replica, replication_factor=3,
                                 clock_ms=clock, rng=random.Random(1))
    rng = random.Random(7)
    for i in range(0, opts.keys, 500):
        await asyncio.gather(*(
            replica.merge(f"key-{j}".encode(), [Sibling("n2", j + 1, {}, rng.randbytes(100),
                                                        False, clock())])
            for j in range(i, min(opts.keys, i + 500))))
    committed, before = antientropy.SCAN_SLICE, antientropy.SCAN_PAGE
    rows: dict[str, list[dict[str, float]]] = {"sliced": [], "whole page": []}
    try:
        await build(service, committed)  # warm-up (page cache, the ring's preference lists)
        for _ in range(opts.repeat):
            rows["sliced"].append(await build(service, committed))
            rows["whole page"].append(await build(service, before))
    finally:
        antientropy.SCAN_SLICE = committed
        await store.close()
    summary = {mode: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
               for mode, runs in rows.items()}
    return {"keys": opts.keys, "scan_slice": committed, "scan_page": before,
            "runs": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/out/ae-scan-stall"))
    opts = p.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kv-ae-stall-") as tmp:
        results = asyncio.run(run(opts, Path(tmp)))
    results["loadavg_start"], results["loadavg_end"] = round(load, 2), round(os.getloadavg()[0], 2)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2))
    for mode, s in results["summary"].items():
        print(f"{mode}: build {s['build_ms']:.0f} ms, loop late p50 {s['p50_late_ms']:.2f} "
              f"p99 {s['p99_late_ms']:.2f} max {s['max_late_ms']:.1f} ms")
    print(f"load {results['loadavg_start']} -> {results['loadavg_end']}; "
          f"wrote {opts.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
