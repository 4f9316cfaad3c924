"""`kv cluster ...`: a local cluster of node processes on 127.0.0.1 (no docker needed)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console

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
              help="Return once the cluster is healthy; stop it later with `kv cluster down` "
                   "(with the same --data-dir).")
@click.option("--json", "as_json", is_flag=True,
              help="With --detach: print the nodes as one JSON object instead of a table.")
@click.option("--metrics-base-port", default=None, type=click.IntRange(0, 65000),
              help="Node i serves /metrics and the dashboard on this port + i - 1; 0: off. "
                   "Default: --base-port + 2100 (9101 for 7001), skipped with a warning "
                   "when those ports are taken.")
@click.option("--chaos/--no-chaos", default=True, show_default=True,
              help="Start the nodes with the chaos admin API on (kv chaos).")
def up(nodes: int, data_dir: Path, host: str, base_port: int, replication_factor: int,
       raft_voters: str | None, raft_join: str, detach: bool, as_json: bool,
       metrics_base_port: int | None = None, chaos: bool = True) -> None:
    """Start NODES node processes and wait until all are healthy.

    In the foreground (default) Ctrl-C stops the cluster cleanly; data is kept.
    """
    from kvstore.node.local_cluster import Interrupted, LocalCluster, is_serving

    if as_json and not detach:
        raise click.UsageError("--json needs --detach (a foreground cluster prints a table)")

    from kvstore.node.local_cluster import cluster_alive

    if (data_dir / "cluster.json").exists() and not cluster_alive(data_dir):
        console.print(f"removing the stale {data_dir / 'cluster.json'} (none of its "
                      "processes is running)")
        (data_dir / "cluster.json").unlink()
    if (data_dir / "cluster.json").exists():
        raise click.ClickException(
            f"{data_dir / 'cluster.json'} exists: a cluster may already be running here. "
            f"Stop it with `{_down_command(data_dir)}` (it removes the file if it is stale), "
            "or start another one beside it with --data-dir DIR --base-port PORT.")
    rf = min(replication_factor, nodes)
    addresses = [f"{host}:{base_port + i}" for i in range(nodes)]
    busy = [address for address in addresses if is_serving(address)]
    if busy:
        raise click.ClickException(f"something already serves on {', '.join(busy)}; "
                                   "choose another --base-port (and --data-dir)")
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
    asked = metrics_base_port is not None
    if metrics_base_port is None:
        metrics_base_port = base_port + 2100 if base_port + 2100 + nodes <= 65535 else 0
    taken = [port for port in range(metrics_base_port, metrics_base_port + nodes)
             if metrics_base_port and not _port_free(host, port)]
    if taken and asked:
        raise click.ClickException(f"metrics ports {', '.join(map(str, taken))} are in use; "
                                   "choose another --metrics-base-port (0: no metrics)")
    if taken:
        console.print(f"[yellow]metrics ports {', '.join(map(str, taken))} are in use: the "
                      "nodes run without /metrics and the dashboard (--metrics-base-port "
                      "to choose others)[/yellow]")
        metrics_base_port = 0
    local = LocalCluster(data_dir, nodes=nodes, host=host, base_port=base_port,
                         replication_factor=rf, extra_args=extra,
                         raft_bootstrap=new and bool(raft_voters), chaos=chaos,
                         metrics_ports=[metrics_base_port + i for i in range(nodes)]
                         if metrics_base_port else None)
    down_cmd = _down_command(data_dir)
    # From here on, Ctrl-C (SIGINT) or SIGTERM (`kv cluster down` from another terminal
    # signals the recorded supervisor) stops every node this command started and removes
    # cluster.json, whether it comes during the spinner or later. The handlers only record
    # the signal: a KeyboardInterrupt raised at an arbitrary point (inside Popen, after the
    # child was forked but before it was recorded) would lose that node and leave it running.
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    if not detach:
        local.supervisor = os.getpid()
    try:
        local.start({node_id: ["--raft-join"] for node_id in joining},
                    cancelled=lambda: bool(stop))
        with console.status(f"starting {nodes} nodes...") as status:
            ready: list[str] = []

            def progress(node_id: str) -> None:
                ready.append(node_id)
                status.update(f"healthy: {len(ready)}/{nodes} ({', '.join(sorted(ready))})")

            local.wait_healthy(timeout=60, progress=progress, cancelled=lambda: bool(stop))
            if stop:
                raise Interrupted
    except (RuntimeError, TimeoutError) as exc:
        local.stop()
        raise click.ClickException(str(exc)) from None
    except (Interrupted, KeyboardInterrupt):
        console.print("interrupted: stopping the nodes started...")
        local.stop()
        console.print("cluster stopped.")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps({"nodes": [{"id": n.id, "address": n.address, "pid": n.pid,
                                          "data_dir": n.data_dir, "log": n.log,
                                          "metrics_port": n.metrics_port}
                                         for n in local.nodes],
                               "endpoints": local.endpoints(), "stop": down_cmd}))
        return
    _show(local, rf)
    console.print("[yellow]insecure[/yellow]: no TLS and no authentication (local "
                  "development; see docs/security.md for a secure cluster)")
    if detach:
        console.print(f"Detached. Stop it with: [bold]{down_cmd}[/bold]")
        return
    console.print(f"Press [bold]Ctrl-C[/bold] (or run `{down_cmd}` elsewhere) to stop the "
                  "cluster; data is kept.")
    try:
        while not stop and local.file.exists():
            for node_id, proc in list(local.procs.items()):
                if proc.poll() is not None:
                    console.print(f"[red]node {node_id} exited ({proc.returncode})[/red]; log:\n"
                                  + local.log_tail(node_id)
                                  + f"\nstart it again with: kv cluster start {node_id}"
                                  + _data_dir_arg(data_dir))
                    local.procs.pop(node_id)
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    console.print("stopping...")
    local.stop()
    console.print("cluster stopped.")


def _data_dir_arg(data_dir: Path) -> str:
    """` --data-dir D` as the user must type it (quoted for a shell), '' for the default."""
    import shlex

    return "" if data_dir == Path("data") else f" --data-dir {shlex.quote(str(data_dir))}"


def _down_command(data_dir: Path) -> str:
    return "kv cluster down" + _data_dir_arg(data_dir)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _show(local, rf: int) -> None:
    from kvstore.cli import output

    table = output.table("node", "listens on", "metrics", "data", "log", "pid",
                         title=f"kvstore cluster: {len(local.nodes)} nodes, N={rf}")
    for n in local.nodes:
        metrics = f":{n.metrics_port}" if n.metrics_port else "-"
        table.add_row(n.id, n.address, metrics, n.data_dir, n.log, str(n.pid))
    console.print(table)
    if local.nodes[0].metrics_port:
        first = local.nodes[0]
        console.print(f"Dashboard: http://{first.address.rpartition(':')[0]}:"
                      f"{first.metrics_port}/   (kv dashboard)")
    endpoints = ",".join(local.endpoints())
    if local.data_root == Path("data"):
        console.print("Try: kv put user:1 alice --consistency QUORUM")
    else:
        console.print(f"Try: kv --endpoints {endpoints} put user:1 alice --consistency QUORUM")


def data_dir_option(fn):
    return click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
                        show_default=True,
                        help="The directory the cluster was started with (kv cluster up "
                             "--data-dir).")(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)


@cluster.command()
@data_dir_option
@json_option
def down(data_dir: Path, as_json: bool) -> None:
    """Stop a local cluster (data is kept): a detached one, or one running in the
    foreground of another terminal (that `kv cluster up` exits too)."""
    from kvstore.node.local_cluster import stop_detached

    if not (data_dir / "cluster.json").exists():
        raise click.ClickException(f"no running cluster recorded in {data_dir}/cluster.json")
    stopped = stop_detached(data_dir)
    if as_json:
        click.echo(json.dumps({"stopped": stopped}))
        return
    click.echo(f"stopped {', '.join(stopped) or 'nothing (no live node processes)'}")


def _one_node(data_dir: Path, node_id: str, action: str, as_json: bool) -> None:
    from kvstore.node.local_cluster import start_node, stop_node

    try:
        if action == "start":
            pid = start_node(data_dir, node_id)
            message = f"{node_id} started (pid {pid}); `kv cluster status" \
                      f"{_data_dir_arg(data_dir)}` shows when it is up"
        else:
            pid = stop_node(data_dir, node_id, kill=action == "kill")
            verb = "killed (SIGKILL)" if action == "kill" else "stopped"
            message = (f"{node_id} was not running" if pid is None else
                       f"{node_id} {verb}; start it again with: kv cluster start {node_id}"
                       + _data_dir_arg(data_dir))
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        raise click.ClickException(str(exc).strip('"')) from None
    if as_json:
        click.echo(json.dumps({"node": node_id, "action": action, "pid": pid}))
    else:
        click.echo(message)


@cluster.command("stop")
@click.argument("node_id", metavar="NODE")
@data_dir_option
@json_option
def stop_cmd(node_id: str, data_dir: Path, as_json: bool) -> None:
    """Stop one node of the local cluster cleanly (SIGTERM); `kv cluster start NODE`
    brings it back with its data."""
    _one_node(data_dir, node_id, "stop", as_json)


@cluster.command("kill")
@click.argument("node_id", metavar="NODE")
@data_dir_option
@json_option
def kill_cmd(node_id: str, data_dir: Path, as_json: bool) -> None:
    """Kill one node of the local cluster (SIGKILL: a crash, no clean shutdown)."""
    _one_node(data_dir, node_id, "kill", as_json)


@cluster.command("start")
@click.argument("node_id", metavar="NODE")
@data_dir_option
@json_option
def start_cmd(node_id: str, data_dir: Path, as_json: bool) -> None:
    """Start one stopped node of the local cluster again (same id, address and data)."""
    _one_node(data_dir, node_id, "start", as_json)


@cluster.command()
@data_dir_option
@json_option
def status(data_dir: Path, as_json: bool) -> None:
    """Which nodes of the local cluster are up (answer the health check); exit 1 if any
    is down."""
    from kvstore.cli import output
    from kvstore.node.local_cluster import is_serving

    path = data_dir / "cluster.json"
    if not path.exists():
        raise click.ClickException(f"no cluster recorded in {path}; start one with "
                                   f"`kv cluster up{_data_dir_arg(data_dir)}`")
    nodes = json.loads(path.read_text())["nodes"]
    rows = [{"id": n["id"], "address": n["address"], "pid": n["pid"],
             "up": is_serving(n["address"])} for n in nodes]
    if as_json:
        click.echo(json.dumps({"nodes": rows}))
    else:
        table = output.table("node", "address", "pid", "up")
        for r in rows:
            table.add_row(r["id"], r["address"], str(r["pid"]), output.up_down(r["up"]))
        console.print(table)
    sys.exit(0 if all(r["up"] for r in rows) else 1)
