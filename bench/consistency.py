#!/usr/bin/env python3
"""Scripted sweeps over workloads x key distributions x consistency levels.

The same engine as `kv bench` (kvstore.bench); one cluster serves the whole sweep.

    python bench/consistency.py --local 3 --workloads a,b,c,f,w --distributions uniform,zipfian \\
        --levels ONE,QUORUM,ALL --duration 20s --out bench/out/sweep

Writes OUT/<workload>-<distribution>/results.{json,png} per run and OUT/summary.json, and
prints one Markdown table (ops/s, p50/p99, errors, staleness per level) for all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from kvstore.bench import report
from kvstore.bench.levels import parse_duration, parse_levels
from kvstore.bench.runner import BenchConfig, free_ports, run_async
from kvstore.node.local_cluster import LocalCluster


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", type=int, metavar="N", help="start a local N-node cluster")
    where.add_argument("--endpoints", help="host:port,... of a running cluster")
    p.add_argument("--sync", default="full", choices=["full", "normal", "off"])
    p.add_argument("--workloads", default="a")
    p.add_argument("--distributions", default="uniform")
    p.add_argument("--levels", default="ONE,QUORUM,ALL")
    p.add_argument("--duration", default="20s")
    p.add_argument("--warmup", default="2s")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the ceilings (they run once, in the first run, otherwise)")
    p.add_argument("--fault", action="store_true", help="kill a node mid-run (--local only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out") / time.strftime("%Y%m%d-%H%M%S"))
    p.add_argument("--no-png", action="store_true")
    return p.parse_args(argv)


def markdown(runs: list[dict]) -> str:
    lines = ["| workload | keys | level | ops/s | % of null ceiling | p50 ms | p99 ms | errors "
             "| stale (workload) | stale (probes) |", "|" + "---|" * 10]
    for res in runs:
        cfg = res["config"]
        for lv in res["levels"]:
            def stale(st):
                return "-" if not st or not st["reads_checked"] else (
                    f"{st['probability'] * 100:.2f}% of {st['reads_checked']}")
            frac = lv.get("fraction_of_null_ceiling")
            lines.append(
                f"| {cfg['workload']} | {cfg['distribution']} | {lv['level']} | "
                f"{lv['ops_per_s']:,.0f} | {'-' if frac is None else f'{frac * 100:.1f}%'} | "
                f"{lv['p50_ms']} | {lv['p99_ms']} | {lv['errors_total']} | "
                f"{stale(lv.get('staleness'))} | {stale(lv.get('staleness_probes'))} |")
    return "\n".join(lines)


async def sweep(args: argparse.Namespace, cluster: LocalCluster | None) -> list[dict]:
    runs = []
    ceiling_done = args.no_ceiling
    for workload in args.workloads.split(","):
        for dist in args.distributions.split(","):
            cfg = BenchConfig(
                endpoints=args.endpoints.split(",") if args.endpoints else [],
                local_nodes=args.local or 0, sync=args.sync, workload=workload.strip(),
                distribution=dist.strip(), levels=[lv.name for lv in parse_levels(args.levels)],
                duration_s=parse_duration(args.duration), warmup_s=parse_duration(args.warmup),
                concurrency=args.concurrency, records=args.records,
                value_size=args.value_size, rate=args.rate, probes=args.probes,
                ceiling=not ceiling_done, fault=args.fault, seed=args.seed)
            print(f"== workload {cfg.workload}, {cfg.distribution} keys, levels "
                  f"{','.join(cfg.levels)}", file=sys.stderr, flush=True)
            res = await run_async(cfg, cluster=cluster)
            ceiling_done = True
            if runs and runs[0]["ceiling"] and not res["ceiling"]:
                res["ceiling"] = runs[0]["ceiling"]  # measured once, in the first run
                for lv in res["levels"]:
                    for name, c in res["ceiling"].items():
                        lv[f"fraction_of_{name}_ceiling"] = lv["ops_per_s"] / c["ops_per_s"]
            out = args.out / f"{cfg.workload}-{cfg.distribution}"
            report.write_outputs(res, out, png=not args.no_png)
            report.print_results(res)
            runs.append(res)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.local:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kv-sweep-")))
            cluster = LocalCluster(root / "data", nodes=args.local, ports=free_ports(args.local),
                                   replication_factor=min(3, args.local),
                                   extra_args=["--sync", args.sync])
            stack.callback(cluster.stop)
            cluster.start()
            cluster.wait_healthy(timeout=60)
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runs = runner.run(sweep(args, cluster))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(runs, indent=2) + "\n")
    table = markdown(runs)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
