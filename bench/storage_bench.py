"""Storage benchmark: updates/s (group commit) and then gets/s (batched reads) through
AsyncStore per sync mode and concurrency, and (with --pragmas) the SQLite pragma sweep
behind SqliteEngine's defaults.

    .venv/bin/python bench/storage_bench.py                    # the main table
    .venv/bin/python bench/storage_bench.py --pragmas          # page size / cache / mmap
    .venv/bin/python bench/storage_bench.py --duration 0.3 --concurrency 1,16 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN
from kvstore.storage import AsyncStore, MemoryEngine, SqliteEngine
from kvstore.storage.engine import Engine


def make_engine(mode: str, directory: Path, **pragmas: int) -> Engine:
    if mode == "memory":
        return MemoryEngine()
    return SqliteEngine(directory / f"{mode}-{time.monotonic_ns()}.db", sync=mode, **pragmas)


async def run_updates(
    engine: Engine,
    concurrency: int,
    duration: float,
    keys: int,
    value_size: int,
    seed: int,
    read_duration: float = 0.0,
) -> dict:
    """`concurrency` tasks doing read-modify-write updates for `duration` seconds, then
    (if `read_duration`) the same number of tasks doing gets."""
    store = AsyncStore(engine)
    rng = random.Random(seed)
    payload = rng.randbytes(value_size)
    latencies: list[float] = []
    done = 0

    def merge(current: bytes | None) -> bytes:  # a stand-in for the versions merge
        return payload if current is None else current[:8] + payload[8:]

    async def worker(wid: int) -> None:
        nonlocal done
        local = random.Random(seed * 1000 + wid)
        perf = time.perf_counter
        while perf() < deadline:
            key = b"key-%08d" % local.randrange(keys)
            t0 = perf()
            await store.update(key, merge)
            latencies.append(perf() - t0)
            done += 1

    start = time.perf_counter()
    cpu = time.process_time()  # all threads of this process: robust to other load
    deadline = start + duration
    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    batches = store.batches
    latencies.sort()
    result = {
        "updates": done,
        "updates_per_s": done / elapsed,
        "avg_batch": done / max(batches, 1),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "cpu_us_per_update": 1e6 * cpu / max(done, 1),
    }
    if read_duration > 0:
        gets = 0

        async def reader(wid: int) -> None:
            nonlocal gets
            local = random.Random(seed * 2000 + wid)
            while time.perf_counter() < read_deadline:
                await store.get(b"key-%08d" % local.randrange(keys))
                gets += 1

        start = time.perf_counter()
        cpu = time.process_time()
        read_deadline = start + read_duration
        await asyncio.gather(*[reader(w) for w in range(concurrency)])
        result["gets_per_s"] = gets / (time.perf_counter() - start)
        result["cpu_us_per_get"] = 1e6 * (time.process_time() - cpu) / max(gets, 1)
    await store.close()
    return result


def updates_table(args: argparse.Namespace, directory: Path) -> list[dict]:
    rows = []
    print(
        f"{'engine':<8} {'conc':>5} {'updates/s':>10} {'avg batch':>9} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'cpu us/upd':>10} {'gets/s':>8} {'cpu us/get':>10}"
    )
    for mode in args.modes.split(","):
        for conc in [int(c) for c in args.concurrency.split(",")]:
            engine = make_engine(mode, directory)
            res = asyncio.run(
                run_updates(
                    engine, conc, args.duration, args.keys, args.value_size, args.seed,
                    read_duration=args.duration,
                )
            )
            res.update(engine=mode, concurrency=conc)
            rows.append(res)
            print(
                f"{mode:<8} {conc:>5} {res['updates_per_s']:>10,.0f} {res['avg_batch']:>9.1f}"
                f" {res['p50_ms']:>7.2f} {res['p99_ms']:>7.2f} {res['cpu_us_per_update']:>10.1f}"
                f" {res['gets_per_s']:>8,.0f} {res['cpu_us_per_get']:>10.1f}",
                flush=True,
            )
    return rows


def pragma_sweep(args: argparse.Namespace, directory: Path) -> list[dict]:
    """Load N records, then time random gets, a full scan and fsynced group-commit updates."""
    mib = 1024 * 1024
    configs = [  # (name, page size, cache KiB, mmap bytes, WAL checkpoint pages)
        ("4K, 2 MiB cache, no mmap, ckpt 1000 (SQLite defaults)", 4096, 2048, 0, 1000),
        ("4K, 16 MiB cache, no mmap, ckpt 1000", 4096, 16 * 1024, 0, 1000),
        ("4K, 16 MiB cache, no mmap, ckpt 10000 (chosen)", 4096, 16 * 1024, 0, 10000),
        ("4K, 16 MiB cache, 256 MiB mmap, ckpt 10000", 4096, 16 * 1024, 256 * mib, 10000),
        ("4K, 64 MiB cache, no mmap, ckpt 10000", 4096, 64 * 1024, 0, 10000),
        ("2K, 16 MiB cache, no mmap, ckpt 20000", 2048, 16 * 1024, 0, 20000),
        ("8K, 16 MiB cache, no mmap, ckpt 5000", 8192, 16 * 1024, 0, 5000),
        ("16K, 16 MiB cache, no mmap, ckpt 2500", 16384, 16 * 1024, 0, 2500),
    ]
    n = args.records
    rng = random.Random(args.seed)
    payload = rng.randbytes(args.value_size)
    rows = []
    print(f"{n:,} records of {args.value_size} bytes; gets and scan on a freshly opened engine")
    print("cpu = process CPU time per operation (robust when other work shares the machine)")
    print(
        f"{'config':<55} {'load cpu':>8} {'get cpu':>7} {'scan cpu':>8}"
        f" {'upd/s c64':>9} {'upd cpu':>7} {'MiB':>4}"
    )
    for name, page, cache, mmap, ckpt in configs:
        pragmas = {
            "page_size": page, "cache_kib": cache, "mmap_bytes": mmap, "checkpoint_pages": ckpt
        }
        path = directory / f"sweep-{page}-{cache}-{mmap}-{ckpt}.db"
        eng = SqliteEngine(path, sync="normal", **pragmas)
        t0 = time.process_time()
        for i in range(0, n, 1000):
            eng.apply([(b"key-%08d" % j, lambda _c: payload) for j in range(i, min(i + 1000, n))])
        load = (time.process_time() - t0) / n
        eng.close()
        eng = SqliteEngine(path, sync="full", **pragmas)
        keys = [b"key-%08d" % rng.randrange(n) for _ in range(args.gets)]
        t0 = time.process_time()
        for k in keys:
            eng.get(k)
        gets = (time.process_time() - t0) / len(keys)
        t0 = time.process_time()
        scanned = sum(1 for _ in eng.scan(TOKEN_MIN - 1, TOKEN_MAX))
        scan = (time.process_time() - t0) / scanned
        upd = asyncio.run(run_updates(eng, 64, args.duration, n, args.value_size, args.seed))
        size = path.stat().st_size / mib
        rows.append(
            {"config": name, **pragmas, "load_cpu_us_per_row": 1e6 * load,
             "get_cpu_us": 1e6 * gets, "scan_cpu_us_per_row": 1e6 * scan,
             "updates_per_s_c64": upd["updates_per_s"],
             "update_cpu_us_c64": upd["cpu_us_per_update"], "mib": size}
        )
        print(
            f"{name:<55} {1e6 * load:>8.1f} {1e6 * gets:>7.1f} {1e6 * scan:>8.2f}"
            f" {upd['updates_per_s']:>9,.0f} {upd['cpu_us_per_update']:>7.1f} {size:>4.0f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="full,normal,off,memory",
                        help="engines: SqliteEngine sync modes and/or 'memory'")
    parser.add_argument("--concurrency", default="1,16,64,256", help="updates in flight")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--keys", type=int, default=100_000, help="key space of the updates")
    parser.add_argument("--value-size", type=int, default=100, help="record size in bytes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pragmas", action="store_true", help="run the pragma sweep instead")
    parser.add_argument("--records", type=int, default=200_000, help="records for --pragmas")
    parser.add_argument("--gets", type=int, default=50_000, help="random gets for --pragmas")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = pragma_sweep(args, Path(tmp)) if args.pragmas else updates_table(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.pragmas and rows:
        best = max(rows, key=lambda r: r["updates_per_s"])
        print(f"best: {best['engine']} at concurrency {best['concurrency']}: "
              f"{best['updates_per_s']:,.0f} updates/s (median of cells "
              f"{statistics.median(r['updates_per_s'] for r in rows):,.0f})")


if __name__ == "__main__":
    main()
