"""`kv bench --workload bank` (issue 12): runs kvstore/bench/bank.py against given endpoints
or a private local cluster (--local N, started with the Raft group), prints the figures and
exits 1 when the total changed or a committed transfer is not reflected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import click

from kvstore.bench.bank import run_bank
from kvstore.core.errors import KVError


def run_bank_cli(ctx: click.Context, bench_endpoints: str | None, *, accounts: int,
                 duration: float, concurrency: int, local_nodes: int, sync: str, fault: bool,
                 seed: int, as_json: bool, protocol: str = "raft") -> None:
    from kvstore.bench.runner import free_ports
    from kvstore.node.local_cluster import LocalCluster

    if fault and not local_nodes:
        raise click.UsageError("--fault with the bank workload kills and pauses nodes, so "
                               "it needs a cluster the harness owns: add --local 3")
    if local_nodes and local_nodes < 3:
        raise click.UsageError("the bank workload needs --local 3 or more (a Raft group of "
                               "three voters)")
    note = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    with contextlib.ExitStack() as stack:
        cluster = None
        credentials = None
        if local_nodes:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kv-bank-")))
            voters = ",".join(f"n{i + 1}" for i in range(3))
            cluster = LocalCluster(root / "data", nodes=local_nodes,
                                   ports=free_ports(local_nodes), raft_bootstrap=True,
                                   extra_args=["--sync", sync, "--raft-voters", voters])
            note(f"starting a local cluster of {local_nodes} nodes (raft voters {voters}) "
                 f"in {root}")
            stack.callback(cluster.stop)
            cluster.start()
            cluster.wait_healthy(timeout=60)
            endpoints = cluster.endpoints()
        else:
            from kvstore.cli.main import default_endpoints
            from kvstore.client import parse_endpoints

            text = bench_endpoints or getattr(ctx.obj, "endpoints", None) or default_endpoints()
            endpoints = parse_endpoints(text)
            credentials = getattr(ctx.find_root().obj, "credentials", None)
        try:
            result = asyncio.run(run_bank(
                endpoints, accounts=accounts, duration_s=duration, concurrency=concurrency,
                seed=seed, cluster=cluster, fault=fault, credentials=credentials, note=note,
                protocol=protocol))
        except KVError as exc:
            raise click.ClickException(exc.message) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        lat = result["latency_ms"]
        click.echo(f"bank ({protocol}): {result['committed']} transfers committed in "
                   f"{result['duration_s']} s = {result['transfers_per_s']}/s "
                   f"({result['attempts_per_s']} attempts/s; {result['aborted']} aborted, "
                   f"{result['unknown']} unknown, {result['errors']} errors)")
        click.echo(f"latency (read + transfer) p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
                   f"max {lat['max']} ms")
        for f in result["faults"]:
            click.echo(f"fault: {f}")
        click.echo(f"total {result['total']} (expected {result['expected_total']}): "
                   f"{'OK' if result['total_ok'] else 'CHANGED'}; every committed transfer "
                   f"reflected: {'OK' if result['reflected_ok'] else result['mismatched']}")
    if not (result["total_ok"] and result["reflected_ok"]):
        sys.exit(1)
