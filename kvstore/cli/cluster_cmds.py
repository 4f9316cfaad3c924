"""`kv cluster ...`: a local cluster of node processes on 127.0.0.1 (no docker needed)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


@click.group()
def cluster() -> None:
    """Start, inspect and stop a local cluster."""


@cluster.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 32))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
              show_default=True, help="Each node keeps its data in DATA_DIR/<id>.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--base-port", default=7001, show_default=True, type=click.IntRange(1, 65000))
@click.option("--replication-factor", "-n", default=3, show_default=True,
              type=click.IntRange(1, 15))
@click.option("--raft-voters", "raft_voters", default=None, metavar="IDS",
              help="Nodes forming the Raft metadata group (default: the first three, or all "
                   "when fewer; '' for none).")
@click.option("--raft-join", "raft_join", default="", metavar="IDS",
              help="Start these nodes with --raft-join (e.g. n2): the way back for a voter "
                   "that lost its raft state; then kv raft remove / add --learner / promote.")
@click.option("--detach", is_flag=True,
              help="Return once the cluster is healthy; stop it later with `kv cluster down`.")
def up(nodes: int, data_dir: Path, host: str, base_port: int, replication_factor: int,
       raft_voters: str | None, raft_join: str, detach: bool) -> None:
    """Start NODES node processes and wait until all are healthy.

    In the foreground (default) Ctrl-C stops the cluster cleanly; data is kept.
    """
    from kvstore.node.local_cluster import LocalCluster, is_serving

    if (data_dir / "cluster.json").exists():
        raise click.ClickException(
            f"{data_dir / 'cluster.json'} exists: a cluster may already be running here. "
            "Stop it with `kv cluster down` (or delete the file if it is stale).")
    rf = min(replication_factor, nodes)
    addresses = [f"{host}:{base_port + i}" for i in range(nodes)]
    busy = [address for address in addresses if is_serving(address)]
    if busy:
        raise click.ClickException(f"something already serves on {', '.join(busy)}; "
                                   "choose another --base-port")
    if raft_voters is None:
        raft_voters = ",".join(f"n{i + 1}" for i in range(min(3, nodes)))
    extra = ["--raft-voters", raft_voters] if raft_voters else []
    # The Raft group is created (--raft-bootstrap) only with the cluster's directories: a
    # later `up` on the same data directory restarts it, and a voter whose directory is
    # gone then refuses to start instead of forgetting what it promised (docs/raft.md).
    new = not any((data_dir / f"n{i + 1}").exists() for i in range(nodes))
    joining = [j.strip() for j in raft_join.split(",") if j.strip()]
    unknown = sorted(set(joining) - {f"n{i + 1}" for i in range(nodes)})
    if unknown:
        raise click.BadParameter(f"no node {', '.join(unknown)} in a {nodes}-node cluster",
                                 param_hint="--raft-join")
    if joining and new:
        raise click.BadParameter("this creates a new cluster; --raft-join brings a node back "
                                 "into an existing one", param_hint="--raft-join")
    local = LocalCluster(data_dir, nodes=nodes, host=host, base_port=base_port,
                         replication_factor=rf, extra_args=extra,
                         raft_bootstrap=new and bool(raft_voters))
    local.start({node_id: ["--raft-join"] for node_id in joining})
    try:
        with console.status(f"starting {nodes} nodes...") as status:
            ready: list[str] = []

            def progress(node_id: str) -> None:
                ready.append(node_id)
                status.update(f"healthy: {len(ready)}/{nodes} ({', '.join(sorted(ready))})")

            local.wait_healthy(timeout=60, progress=progress)
    except (RuntimeError, TimeoutError) as exc:
        local.stop()
        raise click.ClickException(str(exc)) from None
    _show(local, rf)
    console.print("[yellow]insecure[/yellow]: no TLS and no authentication (local "
                  "development; see docs/security.md for a secure cluster)")
    if detach:
        console.print("Detached. Stop it with: [bold]kv cluster down[/bold]")
        return
    console.print("Press [bold]Ctrl-C[/bold] to stop the cluster (data is kept).")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            for node_id, proc in list(local.procs.items()):
                if proc.poll() is not None:
                    console.print(f"[red]node {node_id} exited ({proc.returncode})[/red]; log:\n"
                                  + local.log_tail(node_id))
                    local.procs.pop(node_id)
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    console.print("stopping...")
    local.stop()
    console.print("cluster stopped.")


def _show(local, rf: int) -> None:
    table = Table(title=f"kvstore cluster: {len(local.nodes)} nodes, N={rf}")
    for col in ("node", "listens on", "data", "log", "pid"):
        table.add_column(col)
    for n in local.nodes:
        table.add_row(n.id, n.address, n.data_dir, n.log, str(n.pid))
    console.print(table)
    console.print(f"Try: kv put user:1 alice --consistency QUORUM   "
                  f"(endpoints: {','.join(local.endpoints())})")


@cluster.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
              show_default=True)
def down(data_dir: Path) -> None:
    """Stop a cluster started with `kv cluster up --detach` (data is kept)."""
    from kvstore.node.local_cluster import stop_detached

    if not (data_dir / "cluster.json").exists():
        raise click.ClickException(f"no running cluster recorded in {data_dir}/cluster.json")
    stopped = stop_detached(data_dir)
    click.echo(f"stopped {', '.join(stopped) or 'nothing (no live node processes)'}")


@cluster.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
              show_default=True)
def status(data_dir: Path) -> None:
    """Which nodes of the local cluster are up and healthy."""
    import json

    from kvstore.node.local_cluster import is_serving

    path = data_dir / "cluster.json"
    if not path.exists():
        raise click.ClickException(f"no cluster recorded in {path}; start one with `kv cluster up`")
    nodes = json.loads(path.read_text())["nodes"]
    table = Table()
    for col in ("node", "address", "pid", "healthy"):
        table.add_column(col)
    healthy = 0
    for n in nodes:
        ok = is_serving(n["address"])
        healthy += ok
        table.add_row(n["id"], n["address"], str(n["pid"]), "yes" if ok else "NO")
    console.print(table)
    sys.exit(0 if healthy == len(nodes) else 1)
