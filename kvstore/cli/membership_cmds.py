"""`kv node decommission` (a node streams its ranges to their next owners, then leaves)
and `kv node remove` (a dead node's ranges are copied from the survivors, then it is out)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvstore.cli import output
from kvstore.core.errors import Unavailable

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


async def _follow_replacement(client, dead: str, new: str, endpoint: str | None, show: bool,
                              wait_s: float = 30.0):
    """Poll NEW's move until its replacement of DEAD finishes; None if NEW never showed
    one within `wait_s` (it was not started with --replace DEAD)."""
    import asyncio

    if endpoint is None:
        members = {m.id: m.address for m in (await client.info()).members}
        if new not in members:
            raise click.ClickException(
                f"{new} is not known to the cluster yet: start it first with `kv node start "
                f"--id {new} --join HOST:PORT --replace {dead} ...`")
        endpoint = members[new]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s       # to show a replacement of DEAD
    reach_by = deadline                   # to answer (it may be starting or restarting)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  disable=not show) as bar:
        task = bar.add_task(f"replace {dead} with {new}", total=None, detail="")
        while True:
            try:
                info = await client.info(endpoint)
            except Unavailable as exc:  # (still starting, or restarting to resume)
                if loop.time() > reach_by:
                    raise click.ClickException(f"cannot reach {new} at {endpoint}: "
                                               f"{exc.message}") from None
                await asyncio.sleep(0.5)
                continue
            reach_by = loop.time() + wait_s
            move = info.move if info.HasField("move") else None
            if move is not None and move.kind == "replace":
                if move.replaces != dead:
                    raise click.ClickException(f"{new} is replacing {move.replaces}, not {dead}")
                bar.update(task, total=move.ranges_total or None, completed=move.ranges_done,
                           description=f"replace {dead} with {new}: {move.state}",
                           detail=f"{move.keys} keys, {move.bytes / 1e6:.1f} MB")
                if move.finished:
                    return move
            elif loop.time() > deadline:
                what = f"a {move.kind}" if move is not None else "no move"
                raise click.ClickException(
                    f"{new} shows {what}, not a replacement of {dead}: start it with an empty "
                    f"data directory as `kv node start --id {new} --join HOST:PORT --replace "
                    f"{dead} ...`")
            await asyncio.sleep(0.5)


@click.command()
@click.argument("dead")
@click.option("--with", "new", required=True, metavar="NODE_ID",
              help="The replacement, started as `kv node start --id NODE_ID --join HOST:PORT "
                   "--replace DEAD` with an empty data directory.")
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="Where to reach the replacement (default: its address as the first "
                   "endpoint reports it).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: " + ", ".join(MOVE_FIELDS) + ", replaces.")
@click.pass_obj
def replace(s, dead: str, new: str, endpoint: str | None, as_json: bool) -> None:
    """Follow NODE_ID (--with) taking the place of DEAD, a member that is down for good,
    until it is done: the replacement takes DEAD's tokens, so it owns exactly DEAD's ranges;
    it streams them from the surviving replicas, then DEAD is marked LEFT.

    The replacement does the work from its first start (`--replace DEAD`): it must know its
    role before it tells the cluster anything, or it would join with tokens of its own.
    Exits 1 if the replacement failed (restart the replacement to resume it)."""
    client = s.client()
    final = client.run(_follow_replacement(client.async_client, dead, new, endpoint,
                                           not as_json))
    data = {**move_json(final), "replaces": final.replaces}
    if as_json:
        output.print_json(data)
    elif final.state == "done":
        click.echo(f"{new} replaced {dead}: {final.ranges_total} ranges, {final.keys} keys "
                   f"({final.bytes} bytes) streamed from the surviving replicas in "
                   f"{final.seconds:.1f}s; {dead} is LEFT")
    if final.state != "done":
        click.echo(f"Error: {new} could not replace {dead}: {final.error} (restart {new} to "
                   "resume)", err=True)
        sys.exit(1)
