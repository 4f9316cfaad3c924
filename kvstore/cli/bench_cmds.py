"""`kv bench`: what each consistency level costs (latency, throughput) and buys (freshness).

A thin wrapper over kvstore.bench (the same engine bench/consistency.py drives).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from kvstore.bench.levels import parse_duration, parse_levels
from kvstore.bench.workloads import WORKLOADS


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _levels(ctx, param, value):
    try:
        return [lv.name for lv in parse_levels(value)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--endpoints", "bench_endpoints", metavar="HOST:PORT[,...]", default=None,
              help="Nodes to benchmark (default: the kv --endpoints / KV_ENDPOINTS / local "
                   "cluster default). Ignored with --local.")
@click.option("--workload", "-w", type=click.Choice([*sorted(WORKLOADS), "bank"],
                                                   case_sensitive=False),
              default="a", show_default=True,
              help="a 50/50 read/update, b 95/5, c read only, f read + read-modify-write, "
                   "w write only (see bench/README.md for the YCSB mapping); bank: transfers "
                   "between --accounts in transactions, the total checked at the end "
                   "(docs/transactions.md).")
@click.option("--accounts", type=click.IntRange(min=2, max=10_000), default=20,
              show_default=True, help="Accounts of the bank workload.")
@click.option("--txn-protocol", type=click.Choice(["raft", "3pc", "saga", "all"]),
              default="raft", show_default=True,
              help="The bank workload's protocol: raft or 3pc (kv txn put --protocol), saga "
                   "(each transfer a two-step saga: no isolation, the total may change), or "
                   "all three back to back on one cluster with one table.")
@click.option("--consistency", "-c", "levels", default="ONE,QUORUM,ALL", show_default=True,
              callback=_levels,
              help="Comma-separated levels to compare; READ/WRITE pairs such as ONE/ALL too.")
@click.option("--duration", "-d", default="30s", show_default=True, callback=_duration,
              help="Measured time per level (30s, 2m, 500ms).")
@click.option("--warmup", default="2s", show_default=True, callback=_duration,
              help="Unmeasured time before each measured run.")
@click.option("--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests in flight (closed loop), or the most in flight with --rate.")
@click.option("--records", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Keys in the data set (written in the load phase).")
@click.option("--value-size", type=click.IntRange(min=8), default=100, show_default=True,
              help="Bytes per value (the first 8 carry the write id).")
@click.option("--distribution", type=click.Choice(["uniform", "zipfian"]), default="uniform",
              show_default=True, help="How keys are chosen (zipfian: YCSB's, scrambled, 0.99).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fixed rate in ops/s (latency from the intended start: coordinated-omission "
                   "corrected). Default: closed loop, as fast as it goes.")
@click.option("--no-load", is_flag=True, help="Skip the load phase (data already there).")
@click.option("--no-ceiling", is_flag=True, help="Skip the Ping / null-request ceiling runs.")
@click.option("--ceiling-duration", default=None, callback=_duration,
              help="Measured time of each ceiling run (default: --duration).")
@click.option("--local", "local_nodes", type=click.IntRange(min=0, max=32), default=0,
              help="Start a private local cluster of N nodes in a temp dir (stopped after).")
@click.option("--sync", type=click.Choice(["full", "normal", "off"]), default="full",
              show_default=True, help="Durability of the --local nodes.")
@click.option("--fault", "fault_kind", is_flag=False, flag_value="kill", default=None,
              type=click.Choice(["kill", "partition", "delay", "drop"]),
              help="A fault from 1/3 to 2/3 of each run, with errors, latency spike and "
                   "recovery per level: kill (the default; with --local: SIGKILL the last "
                   "node, restart it), or partition / delay (200±50 ms) / drop (30%) on the "
                   "last node's links through the chaos API (--local, or nodes run with "
                   "--chaos, e.g. a compose cluster with KV_CHAOS=1).")
@click.option("--probes", type=click.IntRange(min=0), default=2, show_default=True,
              help="Staleness probe workers per level: write a key, wait 0-50 ms, read it "
                   "back (PBS curve); their operations are not in the workload figures.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--interval", default="1s", show_default=True, callback=_duration,
              help="Timeline resolution (per-interval throughput and p99).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Write DIR/results.json and DIR/results.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--no-live", is_flag=True, help="No live progress display.")
@click.option("--uvloop/--no-uvloop", default=True, show_default=True,
              help="Run the client on uvloop when it is installed.")
@click.option("--no-route", is_flag=True,
              help="Spread requests round-robin over the endpoints instead of sending each "
                   "to a replica of its key (token-aware routing; matters when there are "
                   "more nodes than N: a node that is not a replica forwards a write).")
@click.pass_context
def bench(ctx: click.Context, bench_endpoints: str | None, workload: str, levels: list[str],
          duration: float, warmup: float, concurrency: int, records: int, value_size: int,
          distribution: str, rate: float | None, no_load: bool, no_ceiling: bool,
          ceiling_duration: float | None, local_nodes: int, sync: str, fault_kind: str | None,
          probes: int, seed: int, interval: float, out_dir: Path | None, as_json: bool,
          no_live: bool, uvloop: bool, no_route: bool = False, accounts: int = 20,
          txn_protocol: str = "raft") -> None:
    """Measure throughput, latency and staleness per consistency level.

    \b
    kv bench --local 3 --workload a --consistency ONE,QUORUM,ALL --duration 30s --out out/
    kv bench --endpoints 127.0.0.1:7001,127.0.0.1:7002 -w b --distribution zipfian
    kv bench --local 3 --fault --duration 30s      # a node dies mid-run
    kv bench --local 3 --fault partition -c QUORUM # one node cut off from 1/3 to 2/3
    """
    if workload.lower() == "bank":
        from kvstore.cli.bank_cmd import run_bank_cli

        source = ctx.get_parameter_source("levels")
        if source is not None and source.name != "DEFAULT" and levels != ["QUORUM"]:
            raise click.UsageError("the bank workload's transactions use strict quorums: "
                                   "give --consistency QUORUM (or leave it out)")
        run_bank_cli(ctx, bench_endpoints, accounts=accounts, duration=duration,
                     concurrency=concurrency, local_nodes=local_nodes, sync=sync,
                     fault=fault_kind is not None, seed=seed, as_json=as_json,
                     protocol=txn_protocol)
        return
    try:  # the engine needs the bench extras; `kv` itself must work without them
        from kvstore.bench import report
        from kvstore.bench.runner import BenchConfig, run
    except ImportError as exc:
        raise click.ClickException(
            f"kv bench needs the benchmark extras ({exc.name} is missing): "
            "pip install -e '.[bench]'") from None
    endpoints: list[str] = []
    if not local_nodes:
        from kvstore.cli.main import default_endpoints
        from kvstore.client import parse_endpoints

        settings = ctx.obj
        text = bench_endpoints or getattr(settings, "endpoints", None) or default_endpoints()
        endpoints = parse_endpoints(text)
    config = BenchConfig(
        endpoints=endpoints, workload=workload.lower(), levels=levels, duration_s=duration,
        warmup_s=warmup, concurrency=concurrency, records=records, value_size=value_size,
        distribution=distribution, rate=rate, load=not no_load, ceiling=not no_ceiling,
        ceiling_duration_s=ceiling_duration, local_nodes=local_nodes, sync=sync,
        fault=fault_kind is not None, fault_kind=fault_kind or "kill",
        probes=probes, seed=seed, interval_s=interval or 1.0,
        timeout_s=getattr(ctx.obj, "timeout", 5.0), uvloop=uvloop,
        route=not no_route and getattr(ctx.obj, "route", True))
    try:
        config.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    credentials = getattr(ctx.obj, "credentials", None)  # kv --tls/--user (not --local)
    console = Console(stderr=as_json)
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(stderr=as_json, width=160)
    progress_console = Console(stderr=True)
    if not no_live and progress_console.is_terminal:
        with report.LiveProgress(progress_console) as progress:
            results = run(config, progress=progress, credentials=credentials)
    else:
        results = run(config, credentials=credentials)
    if out_dir is not None:
        for path in report.write_outputs(results, out_dir):
            console.print(f"wrote {path}")
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        report.print_results(results, console)
