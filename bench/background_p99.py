"""What background work costs the foreground: the p99 of the same QUORUM load while hinted
handoff delivers, anti-entropy moves keys, or reads repair a stale replica, against a
baseline with none of them, all in one run on one 3-node durable cluster.

    python bench/background_p99.py [--rounds 2] [--duration 8] [--keys 3000]
                                   [--out bench/out/background-p99]

Starts a 3-node local cluster (`--sync full`, N=3, anti-entropy off: interval 0, hinted
handoff on) with /metrics on every node, loads `--keys` records at ALL, then runs
`--rounds` rounds of four phases, the order rotated each round so the machine's load
falls on all alike. Every phase is the same foreground load: `kv bench`'s closed-loop
runner (workload A: 50% QUORUM reads, 50% QUORUM updates, 100-byte values,
`--concurrency` in flight, uniform over the records) from this process for `--duration`
measured seconds, with no warm-up by default (the client's connections are warm from the
load; a warm-up would hide the start of the background work). Before every phase n3 is
restarted (so each phase starts from the same cold n3), and what differs is the state it
comes back to:

* baseline: the steps of the anti-entropy and read repair phases below (n3's data
  directory copied, every record rewritten at QUORUM with n3 up, n3 stopped and started)
  but the copy is not put back, so the phase starts as long after the same writes (the
  store's after-effects of them, e.g. WAL checkpoints, fall on it too) and nothing is
  left to do in the background (no hints pending, replicas agree, no anti-entropy);
* hints: n3 was stopped while every record was rewritten at QUORUM through n1 and n2,
  so their coordinators hold a hint for n3 per record; n3 starts just before the phase
  and handoff delivers them during it;
* anti-entropy: n3 missed the rewrite of every record with no hint for it (its data
  directory was copied before the rewrite and put back after, with n3 stopped; n3
  coordinated nothing in between, so no dot it minted is lost) and starts with
  `--antientropy-interval` (default 1 s): its sessions move the keys during the phase;
* read repair: the same divergence, anti-entropy off: QUORUM reads that include n3 find
  it stale and repair it (before answering, as QUORUM reads do).

The background work done is read from every node's /metrics (hints delivered, keys
pushed + fetched by anti-entropy sessions, read repairs), both during the measured
window and between n3's start and that window (work the phase missed). After each phase
the cluster is made to agree again (hints drained, `kv repair` from n3) so the next
phase starts clean. Reported per phase: ops/s, p50/p99/p99.9, errors, load average, and
per kind the p99 over the same round's baseline p99 (median over rounds). Writes
DIR/results.json and, with matplotlib, DIR/results.png. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kvstore.bench.levels import Level
from kvstore.bench.runner import Bench, BenchConfig, free_ports, machine_info
from kvstore.bench.workloads import get_workload
from kvstore.client import AsyncClient
from kvstore.node.local_cluster import LocalCluster

KINDS = ("baseline", "hints", "anti-entropy", "read repair")
TARGET_RATIO = 1.2  # issue 13: background work raises the foreground p99 by <= 20%
# /metrics counters (summed over the nodes) that say how much background work ran
WORK = {"hints_delivered": (("kv_hints_total", "delivered"),),
        "ae_keys_moved": (("kv_repair_total", "keys_pushed"), ("kv_repair_total", "keys_fetched")),
        "ae_sessions": (("kv_repair_total", "sessions"),),
        "read_repairs": (("kv_coordinator_total", "read_repair_ok"),)}


def parse_work(text: str) -> dict[str, float]:
    """The WORK counters of one node's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    seen: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            seen[(s.name, s.labels.get("event", ""))] = s.value
    return {name: sum(seen.get(k, 0.0) for k in keys) for name, keys in WORK.items()}


def work_delta(before: dict[str, dict[str, float]],
               after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Work done between two snapshots (node -> counters), summed over the nodes. A node
    restarted in between starts from zero again: its later value is all new work."""
    total = dict.fromkeys(WORK, 0.0)
    for node, counters in after.items():
        old = before.get(node, {})
        for name, value in counters.items():
            base = old.get(name, 0.0)
            total[name] += value - base if value >= base else value
    return total


def summarize(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: medians over rounds of ops/s and the percentiles, and the median of the
    p99 over the same round's baseline p99, with whether that meets TARGET_RATIO."""
    baseline = {p["round"]: p for p in phases if p["kind"] == "baseline"}
    out: dict[str, Any] = {}
    for kind in KINDS:
        rows = [p for p in phases if p["kind"] == kind]
        if not rows:
            continue
        entry: dict[str, Any] = {"rounds": len(rows)}
        for key in ("ops_per_s", "p50_ms", "p99_ms", "p999_ms", *WORK):
            values = [p[key] for p in rows if p.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
        ratios = [p["p99_ms"] / baseline[p["round"]]["p99_ms"] for p in rows
                  if p["round"] in baseline and p.get("p99_ms")
                  and baseline[p["round"]].get("p99_ms")]
        entry["p99_ratios"] = [round(r, 3) for r in ratios]
        entry["p99_ratio"] = round(statistics.median(ratios), 3) if ratios else None
        if kind != "baseline" and entry["p99_ratio"] is not None:
            entry["meets_target"] = entry["p99_ratio"] <= TARGET_RATIO
        out[kind] = entry
    return out


def order(round_index: int) -> list[str]:
    """The phase order of one round: KINDS rotated by the round number."""
    k = round_index % len(KINDS)
    return list(KINDS[k:] + KINDS[:k])


class Harness:
    def __init__(self, opts: argparse.Namespace, root: Path) -> None:
        self.opts = opts
        self.root = root
        self.cluster = LocalCluster(root / "kv", nodes=3, ports=free_ports(3),
                                    replication_factor=3, metrics_ports=free_ports(3),
                                    extra_args=["--sync", "full", "--antientropy-interval", "0"])
        self.n3 = self.cluster.node("n3")
        self.snapshot = root / "n3-snapshot"

    def counters(self) -> dict[str, dict[str, float]]:
        out = {}
        for node in self.cluster.nodes:
            if node.id not in self.cluster.procs:
                continue
            url = f"http://127.0.0.1:{node.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                out[node.id] = parse_work(resp.read().decode())
        return out

    def hints_pending(self) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for node in self.cluster.nodes:
            if node.id not in self.cluster.procs:
                continue
            url = f"http://127.0.0.1:{node.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            total += sum(s.value for f in text_string_to_metric_families(text)
                         for s in f.samples if s.name == "kv_hints_pending")
        return total

    def stop_n3(self) -> None:
        self.cluster.kill("n3", signal.SIGTERM)

    def start_n3(self, extra: list[str] | None = None) -> None:
        self.cluster.start_node("n3", extra)
        self.cluster.wait_healthy(timeout=60, nodes=["n3"])

    async def rewrite(self, bench: Bench) -> None:
        """Rewrite every record at QUORUM through n1 and n2 only (n3 coordinates none).
        The foreground takes the new contexts, so its updates supersede these writes
        rather than stand beside them as siblings."""
        cfg = self.config(load_consistency="QUORUM")
        async with AsyncClient([n.address for n in self.cluster.nodes[:2]],
                               timeout=5.0) as client:
            writer = Bench(cfg, client)
            await writer.load()
        bench.contexts.update(writer.contexts)

    async def prepare(self, bench: Bench, kind: str) -> None:
        """Bring n3 back in the state the phase needs (see the module docstring)."""
        await asyncio.to_thread(self.stop_n3)
        if kind == "hints":
            await self.rewrite(bench)  # n3 down: the coordinators keep a hint per record for it
            await asyncio.to_thread(self.start_n3)
        else:
            # baseline: the same steps without putting the copy back, so the phase starts
            # as long after the rewrite, with nothing left to do
            shutil.rmtree(self.snapshot, ignore_errors=True)
            shutil.copytree(self.n3.data_dir, self.snapshot)
            await asyncio.to_thread(self.start_n3)
            await self.rewrite(bench)  # n3 up: it takes every write, no hints
            await asyncio.to_thread(self.stop_n3)
            if kind != "baseline":
                shutil.rmtree(self.n3.data_dir)
                shutil.copytree(self.snapshot, self.n3.data_dir)
            extra = (["--antientropy-interval", str(self.opts.ae_interval)]
                     if kind == "anti-entropy" else None)
            await asyncio.to_thread(self.start_n3, extra)

    async def settle(self) -> None:
        """Make the replicas agree again: hints drained, then a repair from n3."""
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(self.hints_pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvstore", "--endpoints", self.n3.address, "repair",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()

    def config(self, **kw) -> BenchConfig:
        o = self.opts
        return BenchConfig(endpoints=self.cluster.endpoints(), workload="a", levels=["QUORUM"],
                           duration_s=o.duration, warmup_s=o.warmup,
                           concurrency=o.concurrency, records=o.keys, value_size=100,
                           probes=0, timeout_s=5.0, seed=1, **kw)

    async def phase(self, bench: Bench, kind: str, round_index: int) -> dict[str, Any]:
        await self.prepare(bench, kind)
        loop = asyncio.get_running_loop()
        ready = await asyncio.to_thread(self.counters)  # n3 serving, phase not begun
        marks: list[asyncio.Future] = []
        loop.call_later(self.opts.warmup,
                        lambda: marks.append(asyncio.ensure_future(
                            asyncio.to_thread(self.counters))))
        load_before = os.getloadavg()[0]
        result = await bench.phase(f"{kind} {round_index}", get_workload("a"),
                                   Level.parse("QUORUM"), self.opts.duration)
        end = await asyncio.to_thread(self.counters)
        start = await marks[0]
        row: dict[str, Any] = {
            "kind": kind, "round": round_index,
            "ops_per_s": round(result["ops_per_s"]), "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "p999_ms": result["p999_ms"],
            "errors": result["errors_total"],
            "loadavg_start": round(load_before, 2), "loadavg_end": round(os.getloadavg()[0], 2),
            **{k: round(v) for k, v in work_delta(start, end).items()},
            "before_phase": {k: round(v) for k, v in work_delta(ready, start).items()},
            "node_cpu_us_per_op": result.get("cpu", {}).get("node_cpu_us_per_op"),
        }
        print(line(row), file=sys.stderr, flush=True)
        await self.settle()
        return row

    async def run(self) -> dict[str, Any]:
        cluster = self.cluster
        results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(self.opts).items()},
                                   "phases": []}
        try:
            cluster.start()
            await asyncio.to_thread(cluster.wait_healthy, 60)
            async with AsyncClient(cluster.endpoints(), timeout=5.0) as client:
                bench = Bench(self.config(load_consistency="ALL"), client, cluster=cluster)
                await bench.load()
                for r in range(self.opts.rounds):
                    for kind in order(r):
                        results["phases"].append(await self.phase(bench, kind, r))
        finally:
            await asyncio.to_thread(cluster.stop)
        results["summary"] = summarize(results["phases"])
        return results


def line(p: dict[str, Any]) -> str:
    work = ", ".join(f"{k} {p[k]}" for k in WORK if p.get(k))
    early = ", ".join(f"{k} {v}" for k, v in p["before_phase"].items() if v)
    return (f"round {p['round']} {p['kind']}: {p['ops_per_s']:,} ops/s, p50 {p['p50_ms']:.1f} "
            f"p99 {p['p99_ms']:.1f} p99.9 {p['p999_ms']:.1f} ms, errors {p['errors']}, "
            f"load {p['loadavg_start']} -> {p['loadavg_end']}"
            + (f"; during: {work}" if work else "")
            + (f"; before the phase: {early}" if early else ""))


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = sorted({p["round"] for p in results["phases"]})
    width = 0.8 / max(1, len(rounds))
    for i, r in enumerate(rounds):
        rows = {p["kind"]: p for p in results["phases"] if p["round"] == r}
        xs = [k + i * width for k in range(len(KINDS))]
        ax1.bar(xs, [rows.get(k, {}).get("p99_ms") or 0 for k in KINDS], width,
                label=f"round {r}")
        ax2.bar(xs, [rows.get(k, {}).get("ops_per_s") or 0 for k in KINDS], width,
                label=f"round {r}")
    for ax, title in ((ax1, "p99 ms (QUORUM, workload A)"), (ax2, "ops/s")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(KINDS))], KINDS)
        ax.set_title(title)
        ax.legend()
    base = results["summary"].get("baseline", {}).get("p99_ms")
    if base:
        ax1.axhline(base * TARGET_RATIO, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds of load before the measured window (its background work "
                        "counts as 'before the phase')")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--keys", type=int, default=3000,
                   help="records: the workload's keys, all of them rewritten to diverge n3")
    p.add_argument("--ae-interval", type=float, default=1.0,
                   help="n3's anti-entropy interval in the anti-entropy phase (seconds)")
    p.add_argument("--out", type=Path, default=Path("bench/out/background-p99"))
    opts = p.parse_args(argv)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="kv-background-p99-") as tmp, \
            asyncio.Runner(loop_factory=loop_factory) as runner:
        results = runner.run(Harness(opts, Path(tmp)).run())
    results["started_at"] = started
    results["machine"] = machine_info()
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2))
    for kind, s in results["summary"].items():
        ratio = s.get("p99_ratio")
        verdict = ("" if kind == "baseline" else
                   f", p99 x{ratio:.2f} of baseline ({'met' if s['meets_target'] else 'NOT met'}"
                   f": target <= x{TARGET_RATIO})" if ratio is not None else "")
        print(f"{kind}: {s['ops_per_s']:,.0f} ops/s, p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} "
              f"p99.9 {s['p999_ms']:.1f} ms{verdict}")
    with contextlib.suppress(ImportError):
        print(f"wrote {plot(results, opts.out / 'results.png')}", file=sys.stderr)
    print(f"wrote {opts.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
