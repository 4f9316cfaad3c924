"""What TLS and authentication cost: `kv bench` throughput and CPU per request, three local
clusters in one run (only a comparison in the same run means anything on a shared machine).

    .venv/bin/python bench/tls_overhead.py [--duration 10] [--concurrency 64] [--out FILE]

Variants: insecure (one port, the default), tls (mutual TLS between nodes on a peer port,
TLS to clients), tls+auth (and a login token checked on every client call). Workload A
(50% reads, 50% updates) at QUORUM, N=3, sync=normal (so the disk does not hide the CPU).
CPU per request = user+system time of the three node processes (and of this client
process) over the run, divided by the requests it served (warm-up included, estimated at
the measured rate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvstore.bench.runner import BenchConfig, free_ports, run
from kvstore.client import Credentials
from kvstore.node.local_cluster import LocalCluster
from kvstore.transport import certs

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def variant(name: str, root: Path, args) -> dict:
    tls_dir = root / "certs"
    secure = name != "insecure"
    ports = free_ports(6)
    extra = ["--sync", "normal", "--raft-voters", "n1,n2,n3"]
    if name == "tls+auth":
        extra += ["--auth"]
    cluster = LocalCluster(root / name, ports=ports[:3],
                           peer_ports=ports[3:] if secure else None,
                           tls_dir=tls_dir if secure else None, raft_bootstrap=True,
                           extra_args=extra)
    cluster.start()
    try:
        cluster.wait_healthy(timeout=60)
        creds = Credentials(tls_dir=tls_dir) if secure else None
        if name == "tls+auth":
            time.sleep(2)  # the raft group elects its first leader
            pw = root / "pw"
            pw.write_text("bench-password\n")
            peers = ",".join(n.peer_address for n in cluster.nodes)
            for _ in range(30):
                res = subprocess.run(
                    [sys.executable, "-m", "kvstore", "--endpoints", peers, "--tls",
                     str(tls_dir), "--cert", "n1", "user", "add", "bench", "--role",
                     "readwrite", "--password-file", str(pw)], capture_output=True, text=True)
                if res.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(res.stderr)
            creds = Credentials(tls_dir=tls_dir, user="bench", password="bench-password")
        config = BenchConfig(endpoints=cluster.endpoints(), workload="a", levels=["QUORUM"],
                             duration_s=args.duration, warmup_s=1.0,
                             concurrency=args.concurrency, load=False, ceiling=False,
                             probes=0, records=10_000)
        pids = [p.pid for p in cluster.procs.values()]
        node0 = sum(cpu_seconds(p) for p in pids)
        self0 = os.times()
        wall0 = time.monotonic()
        results = run(config, credentials=creds)
        wall = time.monotonic() - wall0
        node_cpu = sum(cpu_seconds(p) for p in pids) - node0
        self1 = os.times()
        client_cpu = (self1.user - self0.user) + (self1.system - self0.system)
        level = results["levels"][0]
        ops_per_s = level["ops_per_s"]
        served = ops_per_s * (args.duration + 1.0)
        return {"variant": name, "ops_per_s": round(ops_per_s),
                "p99_ms": level.get("p99_ms"),
                "node_cpu_us_per_op": round(node_cpu / served * 1e6, 1),
                "client_cpu_us_per_op": round(client_cpu / served * 1e6, 1),
                "wall_s": round(wall, 1), "errors": level.get("errors_total")}
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-tls-bench-") as tmp:
        root = Path(tmp)
        certs.init_ca(root / "certs")
        for n in ("n1", "n2", "n3"):
            certs.issue(root / "certs", certs.KIND_NODE, n)
        rows = [variant(name, root, args) for name in ("insecure", "tls", "tls+auth")]
    base = rows[0]
    print(f"{'variant':<10} {'ops/s':>8} {'vs insecure':>12} {'p99 ms':>8} "
          f"{'node CPU us/op':>15} {'client CPU us/op':>17}")
    for r in rows:
        print(f"{r['variant']:<10} {r['ops_per_s']:>8} "
              f"{r['ops_per_s'] / base['ops_per_s'] - 1:>+11.1%} "
              f"{r['p99_ms'] if r['p99_ms'] is not None else '-':>8} "
              f"{r['node_cpu_us_per_op']:>15} {r['client_cpu_us_per_op']:>17}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
