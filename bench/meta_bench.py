"""Metadata puts/s: kvstore's Raft group next to a 3-member etcd, same machine, same run.

    python bench/meta_bench.py --duration 10 --concurrency 64 [--no-etcd] [--out FILE.json]

Starts a private 3-node kvstore cluster (`--raft-voters n1,n2,n3`, fsync on, the node
default) and, if `etcd` is on PATH (Debian: `etcd-server`), a 3-member etcd cluster on
free ports in a temp directory; both are stopped at the end. Each side gets the same
workload: `--concurrency` concurrent writers putting 100-byte values to distinct keys for
`--duration` seconds after a 2 s warm-up. kvstore is driven through the Python client
(`AsyncMetaClient`: gRPC, one session, exactly-once puts); etcd through its v3 HTTP/JSON
gateway with keep-alive connections (one per writer), also from Python - so both sides
pay a Python client's cost, and the comparison is of the servers under the same client
load, not of client libraries. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kvstore.client.meta import AsyncMetaClient  # noqa: E402
from kvstore.node.local_cluster import LocalCluster  # noqa: E402


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def drive(put, concurrency: int, warmup: float, duration: float) -> dict:
    lat: list[float] = []
    done = 0
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    end = measure_from + duration

    async def writer(w: int) -> None:
        nonlocal done, errors
        i = 0
        while True:
            t0 = loop.time()
            if t0 >= end:
                return
            try:
                await put(f"bench/{w}/{i}", "x" * 100)
            except Exception:
                errors += 1
                continue
            t1 = loop.time()
            if t0 >= measure_from:
                done += 1
                lat.append(t1 - t0)
            i += 1

    await asyncio.gather(*(writer(w) for w in range(concurrency)))
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    return {"ops": done, "ops_per_s": round(done / duration, 1), "errors": errors,
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


async def bench_kvstore(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="meta-bench-"))
    cluster = LocalCluster(tmp / "data", ports=free_ports(3),
                           extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
    cluster.start()
    try:
        cluster.wait_healthy(timeout=30)
        client = AsyncMetaClient(cluster.endpoints(), timeout=10.0)
        for _ in range(100):  # wait for a leader
            try:
                await client.put("bench/ready", "1")
                break
            except Exception:
                await asyncio.sleep(0.2)

        async def put(k, v):
            await client.put(k, v)

        res = await drive(put, args.concurrency, args.warmup, args.duration)
        await client.close()
        return res
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class _Http:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r = self.w = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        await self.w.drain()
        status = await self.r.readline()
        length = 0
        while (line := await self.r.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        data = await self.r.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"etcd: {status!r} {data[:200]!r}")
        return data


async def bench_etcd(args) -> dict | None:
    etcd = shutil.which("etcd")
    if etcd is None:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    ports = free_ports(6)
    names = ["e1", "e2", "e3"]
    peers = ",".join(f"{n}=http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names))
    procs = []
    try:
        for i, n in enumerate(names):
            procs.append(subprocess.Popen(
                [etcd, "--name", n, "--data-dir", str(tmp / n),
                 "--listen-client-urls", f"http://127.0.0.1:{ports[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{ports[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{ports[3 + i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports[3 + i]}",
                 "--initial-cluster", peers, "--initial-cluster-state", "new",
                 "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conns: dict = {}

        async def put(k, v):  # one keep-alive connection per writer task
            task = asyncio.current_task()
            c = conns.get(task)
            if c is None:
                c = conns[task] = _Http("127.0.0.1", ports[len(conns) % 3])
            body = json.dumps({"key": base64.b64encode(k.encode()).decode(),
                               "value": base64.b64encode(v.encode()).decode()}).encode()
            await c.post("/v3/kv/put", body)

        ready = _Http("127.0.0.1", ports[0])
        for _ in range(100):
            try:
                await ready.post("/v3/kv/put", json.dumps({"key": "YQ==", "value": "YQ=="})
                                 .encode())
                break
            except Exception:
                ready = _Http("127.0.0.1", ports[0])
                await asyncio.sleep(0.2)
        res = await drive(put, args.concurrency, args.warmup, args.duration)
        for c in conns.values():
            if c.w is not None:
                c.w.close()
        return res
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-etcd", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    results = {"kvstore": asyncio.run(bench_kvstore(args))}
    if not args.no_etcd:
        results["etcd"] = asyncio.run(bench_etcd(args))
    print(f"{'system':<10}{'puts/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in results.items():
        if r is None:
            print(f"{name:<10}{'(not installed)':>30}")
            continue
        print(f"{name:<10}{r['ops_per_s']:>10}{r['p50_ms']:>10}{r['p99_ms']:>10}"
              f"{r['errors']:>8}")
    results["config"] = {"duration": args.duration, "concurrency": args.concurrency,
                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
