"""Where a request's CPU goes on a real 3-node cluster: node CPU per operation, and a
sampled profile of the node processes cut into parts, for QUORUM put, QUORUM get and
ONE get (and the null request and Ping, the floors under them).

    python bench/request_path_profile.py [--duration 8] [--concurrency 64] [--no-spy]
                                         [--out bench/out/request-path]

Starts a 3-node durable local cluster (`--sync full`, N=3) on 127.0.0.1, loads the
records at ALL, then runs each phase closed-loop from this process (kvstore's pipelining
client), as `bench/vs_etcd.py` runs its kvstore phases. For every phase it reports the CPU
the three node processes spent per operation (summed over them, from /proc: the figure
that does not depend on machine load) and the load average. With py-spy installed
(`pip install py-spy`; `--no-spy` to skip) it samples every node during the measured
window (`py-spy record --nonblocking --format raw`: the nodes are not paused) and sorts
each sample by the innermost frame that says what it is doing:

* C: loop + gRPC core: no Python frame below the event loop's `run` (uvloop, grpc's
  Cython aio poller and callbacks, the C task/future machinery, protobuf parsing of the
  RPC messages);
* transport: grpc's Python and Cython layers (grpc/, grpc/aio), the peer coalescer, the
  internode servicer (kvstore/transport);
* asyncio: the event loop, tasks, futures, handles (asyncio/, uvloop);
* codecs: protobuf and the versions <-> protobuf codecs (google/protobuf, *_pb2,
  `versions.*_pb`/`encode_*`/`decode_*`/`parse_context`);
* versions: the rest of kvstore/core/versions.py (clocks, sync, update, contexts);
* storage: kvstore/storage, sqlite3, the storage threads' queues;
* request logic: coordinator, replica, node handlers, membership, ring;
* other: everything else (gossip, logging, threading, ...).

A sample is charged to the first of those found walking from the innermost frame out,
so time inside protobuf called by the coordinator counts as codecs. Samples of idle
threads are dropped by py-spy. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kvstore.bench.levels import Level
from kvstore.bench.runner import Bench, BenchConfig, free_ports
from kvstore.bench.workloads import CEILINGS, get_workload
from kvstore.client import AsyncClient
from kvstore.node.local_cluster import LocalCluster

_TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("C: loop + gRPC core", "transport", "asyncio", "codecs", "versions", "storage",
         "request logic", "other")
_CODEC_NAMES = ("_pb", "fill_", "encode_", "decode_", "parse_context", "_clock_to", "_clock_from",
                "marker_from", "fence_from", "fence_to")


def classify(frame: str) -> str | None:
    """The part one py-spy frame ("function (file:line)") belongs to; None: look further
    out."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if path.endswith("asyncio/runners.py") or name in ("run_forever", "run_until_complete"):
        return "C: loop + gRPC core"
    if "google/protobuf" in path or path.endswith("_pb2.py") or "_pb2_grpc" in path:
        return "codecs"
    if "kvstore/core/versions.py" in path:
        return "codecs" if any(c in name for c in _CODEC_NAMES) else "versions"
    top = path.split("/", 1)[0]
    if top == "grpc" or "/grpc/" in path or "kvstore/transport/" in path:
        return "transport"
    if top in ("asyncio", "uvloop") or "/asyncio/" in path or "/uvloop/" in path:
        return "asyncio"
    if "kvstore/storage/" in path or "sqlite3" in path or path.endswith("queue.py"):
        return "storage"
    if any(p in path for p in ("kvstore/services/coordinator.py", "kvstore/services/replica.py",
                               "kvstore/node/node.py", "kvstore/core/ring.py",
                               "kvstore/services/gossip.py", "kvstore/node/server.py")):
        return "request logic"
    return None


def breakdown(raw: str) -> dict[str, float]:
    """Share of samples per part from py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        part = "other"
        for frame in reversed(frames):  # innermost last
            found = classify(frame)
            if found is not None:
                part = found
                break
        counts[part] += int(n)
    total = sum(counts.values()) or 1
    return {p: counts[p] / total for p in PARTS} | {"samples": float(sum(counts.values()))}


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float, float]]:
    """(pid, tid) -> (thread kind, user s, system s) of every thread of the nodes. The
    kind: the main thread runs the event loop; threads named by gRPC's core are grpc's;
    the other Python threads are the storage writer and readers (and to_thread helpers)."""
    out = {}
    for pid in pids:
        main_comm = Path(f"/proc/{pid}/comm").read_text().strip()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                text = (task / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            tid = int(task.name)
            kind = ("event loop" if tid == pid else "storage threads" if comm == main_comm
                    else "grpc threads")
            out[(pid, tid)] = (kind, int(fields[11]) / _TICKS, int(fields[12]) / _TICKS)
    return out


def thread_split(before: dict, after: dict, ops: int) -> dict[str, float]:
    """CPU us per operation by thread kind, and user / system."""
    split: Counter[str] = Counter()
    for key, (kind, user, system) in after.items():
        _, user0, system0 = before.get(key, (kind, 0.0, 0.0))
        split[kind] += (user - user0 + system - system0) / ops * 1e6
        split["user"] += (user - user0) / ops * 1e6
        split["system"] += (system - system0) / ops * 1e6
    return dict(split)


def spy(pids: list[int], seconds: float, out: Path, gil: bool,
        native: bool) -> list[subprocess.Popen]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in pids:
        procs.append(subprocess.Popen(
            [exe, "record", "--pid", str(pid), *(["--native"] if native else ["--nonblocking"]),
             "--format", "raw", "--rate", "200", *(["--gil"] if gil else []),
             "--duration", str(max(1, int(seconds))), "--output", str(out / f"{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def run(opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    ports = free_ports(3)
    cluster = LocalCluster(root / "kv", nodes=3, ports=ports, replication_factor=3,
                           extra_args=["--sync", "full"])
    have_spy = opts.spy and (shutil.which("py-spy")
                             or Path(sys.executable).with_name("py-spy").exists())
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(opts).items()},
                               "py_spy": bool(have_spy), "phases": {}}
    try:
        cluster.start()
        await asyncio.to_thread(cluster.wait_healthy, 60)
        cfg = BenchConfig(endpoints=cluster.endpoints(), workload="w", levels=["QUORUM"],
                          duration_s=opts.duration, warmup_s=opts.warmup,
                          concurrency=opts.concurrency, records=opts.records,
                          value_size=100, probes=0, load_consistency="ALL",
                          timeout_s=5.0, seed=1)
        quorum, one = Level.parse("QUORUM"), Level.parse("ONE")
        phases = [("QUORUM put", "w", quorum), ("QUORUM get", "c", quorum),
                  ("ONE get", "c", one), ("null request", "null", None),
                  ("Ping (one gRPC call)", "ping", None)]
        async with AsyncClient(cluster.endpoints(), timeout=5.0) as client:
            bench = Bench(cfg, client, cluster=cluster)
            await bench.load()
            pids = [n.pid for n in cluster.nodes if n.pid]
            for name, workload, level in phases:
                w = CEILINGS[workload] if workload in CEILINGS else get_workload(workload)
                spies, spy_dir = [], root / name.replace(" ", "_").replace("(", "").replace(
                    ")", "")
                if have_spy:
                    spy_dir.mkdir()
                    asyncio.get_running_loop().call_later(
                        opts.warmup, lambda d=spy_dir, started=spies: started.extend(
                            spy(pids, opts.duration, d, opts.gil, opts.native)))
                load_before = os.getloadavg()
                threads: list[dict] = []
                loop = asyncio.get_running_loop()
                loop.call_later(opts.warmup, lambda t=threads: t.append(thread_cpu(pids)))
                phase = await bench.phase(name, w, level, opts.duration)
                threads.append(thread_cpu(pids))
                out = {"ops_per_s": phase["ops_per_s"], "p50_ms": phase["p50_ms"],
                       "p99_ms": phase["p99_ms"], "errors": phase["errors_total"],
                       "node_cpu_us_per_op": phase.get("cpu", {}).get("node_cpu_us_per_op"),
                       "client_cpu_us_per_op": phase.get("cpu", {}).get("client_cpu_us_per_op"),
                       "loadavg_start": round(load_before[0], 2),
                       "loadavg_end": round(os.getloadavg()[0], 2)}
                ops = phase.get("cpu", {}).get("requests") or 0
                if len(threads) == 2 and ops:
                    out["threads_us_per_op"] = thread_split(threads[0], threads[1], ops)
                for p in spies:
                    try:
                        p.wait(timeout=opts.duration + 30)
                    except subprocess.TimeoutExpired:
                        p.send_signal(signal.SIGINT)
                        p.wait(timeout=10)
                raw = "".join(f.read_text() for f in spy_dir.glob("*.txt")) if spies else ""
                if raw:
                    out["profile"] = breakdown(raw)
                    opts.out.mkdir(parents=True, exist_ok=True)
                    (opts.out / f"{spy_dir.name}.collapsed.txt").write_text(raw)
                results["phases"][name] = out
                print(line(name, out), file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(cluster.stop)
    return results


def line(name: str, p: dict[str, Any]) -> str:
    text = (f"{name}: {p['ops_per_s']:,.0f} ops/s, p50 {p['p50_ms']:.1f} ms, node CPU "
            f"{p['node_cpu_us_per_op'] or 0:,.0f} us/op, client "
            f"{p['client_cpu_us_per_op'] or 0:,.0f} us/op, errors {p['errors']}, "
            f"load {p['loadavg_start']} -> {p['loadavg_end']}")
    split = p.get("threads_us_per_op")
    if split:
        text += "\n    us/op by thread: " + ", ".join(f"{k} {v:.0f}" for k, v in split.items())
    prof = p.get("profile")
    if prof:
        text += "\n    " + ", ".join(f"{k} {prof[k]:.0%}" for k in PARTS) + \
            f" ({prof['samples']:.0f} samples)"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--no-spy", dest="spy", action="store_false", help="no py-spy profile")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (Python CPU)")
    p.add_argument("--native", action="store_true",
                   help="also sample C frames (grpc core, uvloop, protobuf); pauses the "
                        "nodes at each sample, so their CPU per operation rises")
    p.add_argument("--out", type=Path, default=Path("bench/out/request-path"))
    opts = p.parse_args(argv)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="kv-request-path-") as tmp, \
            asyncio.Runner(loop_factory=loop_factory) as runner:
        results = runner.run(run(opts, Path(tmp)))
    results["started_at"] = started
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {opts.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
