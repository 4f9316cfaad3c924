"""`kv node decommission` (a node streams its ranges to their next owners, then leaves)
and `kv node remove` (a dead node's ranges are copied from the survivors, then it is out)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvstore.cli import output

MOVE_FIELDS = ("node", "kind", "state", "ranges_done", "ranges_total", "keys", "bytes",
               "seconds", "eta_seconds", "error", "leaves_differing", "corrupt_skipped")


def move_json(progress) -> dict[str, Any]:
    data = {f: getattr(progress, f) for f in MOVE_FIELDS}
    data["seconds"] = round(data["seconds"], 3)
    data["eta_seconds"] = round(data["eta_seconds"], 1)
    return data


async def _follow(client, node_id: str, endpoint: str | None, show: bool,
                  kind: str = "decommission"):
    final = None
    stream = (client.decommission(node_id, endpoint) if kind == "decommission"
              else client.remove_node(node_id, endpoint))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  disable=not show) as bar:
        task = bar.add_task(f"{kind} {node_id}", total=None, detail="")
        async for progress in stream:
            bar.update(task, total=progress.ranges_total or None,
                       completed=progress.ranges_done,
                       description=f"{kind} {node_id}: {progress.state}",
                       detail=f"{progress.keys} keys, {progress.bytes / 1e6:.1f} MB"
                              + (f", ETA {progress.eta_seconds:.0f}s"
                                 if progress.eta_seconds else ""))
            final = progress
    return final


@click.command()
@click.argument("node_id")
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="Where to reach NODE_ID (default: its address as the first endpoint "
                   "reports it).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: " + ", ".join(MOVE_FIELDS) + ".")
@click.pass_obj
def decommission(s, node_id: str, endpoint: str | None, as_json: bool) -> None:
    """Stream NODE_ID's ranges to the nodes that take them over, then remove it from the
    ring (status LEFT). Writes keep working throughout; stop the node's process afterwards."""
    client = s.client()
    final = client.run(_follow(client.async_client, node_id, endpoint, not as_json))
    if final is None:
        raise click.ClickException(f"{node_id} ended the decommission stream early")
    data = move_json(final)
    if as_json:
        output.print_json(data)
    elif final.state == "done":
        click.echo(f"{node_id} left the ring: {final.ranges_total} ranges, {final.keys} keys "
                   f"({final.bytes} bytes) streamed in {final.seconds:.1f}s; stop its process "
                   "now (it refuses to start again with this data directory)")
    if final.state != "done":
        click.echo(f"Error: decommission of {node_id} failed: {final.error} (the node is still "
                   "LEAVING; run the command again)", err=True)
        sys.exit(1)


@click.command()
@click.argument("node_id")
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="The live node that runs the removal (default: the first endpoint).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: " + ", ".join(MOVE_FIELDS) + ".")
@click.pass_obj
def remove(s, node_id: str, endpoint: str | None, as_json: bool) -> None:
    """Force NODE_ID out of the ring when it is gone for good: its ranges are copied from
    the surviving replicas to their next owners, then it is marked LEFT. Refused while
    NODE_ID is up (use decommission). It may come back only wiped, with --join."""
    client = s.client()
    final = client.run(_follow(client.async_client, node_id, endpoint, not as_json, "remove"))
    if final is None:
        raise click.ClickException(f"the removal of {node_id} ended early")
    if as_json:
        output.print_json(move_json(final))
    elif final.state == "done":
        click.echo(f"{node_id} removed: {final.ranges_total} ranges, {final.keys} keys "
                   f"({final.bytes} bytes) re-replicated from the survivors in "
                   f"{final.seconds:.1f}s")
    if final.state != "done":
        click.echo(f"Error: removal of {node_id} failed: {final.error} (run the command "
                   "again)", err=True)
        sys.exit(1)
