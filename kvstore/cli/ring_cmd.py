"""`kv ring`: how the token space is divided, as one node sees it.

With a Raft group, it also shows the committed ring's epoch and, for a member whose
gossiped status differs from the one the group records, the recorded one (a change is
recorded first and gossiped after, so a difference is brief; a lasting one is a problem).

Tokens are derived from node ids (core/ring.py), so the command rebuilds the ring that node
uses from its member list and vnode count, and shows for each member: its status, vnodes,
the share it leads (primary ownership, which the node also reports: a mismatch means the
two disagree on the ring and is flagged) and the share it stores a replica of with N
replicas per key.
"""

from __future__ import annotations

from typing import Any

import click

from kvstore.cli import output
from kvstore.client import KVError
from kvstore.core.gossip import RING_STATUSES, Status
from kvstore.core.ring import Ring, node_tokens

ON_RING = {s.name for s in RING_STATUSES}


def ring_json(info: dict[str, Any]) -> dict[str, Any]:
    vnodes, n = info["vnodes"], info["replication_factor"]
    on_ring = [m["id"] for m in info["members"] if m["status"] in ON_RING]
    ring = Ring.build({m: node_tokens(m, vnodes) for m in on_ring})
    primary, replicated = ring.ownership(), ring.replica_shares(n)
    members = []
    for m in info["members"]:
        mine = m["id"] in ring.nodes
        members.append({
            "id": m["id"], "address": m["address"], "status": m["status"], "up": m["up"],
            "vnodes": vnodes if mine else 0,
            "ownership": round(primary.get(m["id"], 0.0), 6),
            "replicated": round(replicated.get(m["id"], 0.0), 6),
            "reported_ownership": m["ownership"],
            "agrees": abs(primary.get(m["id"], 0.0) - m["ownership"]) < 1e-4,
            # the status the Raft group records ("" without a group, or not recorded yet)
            "committed_status": m.get("committed_status", ""),
        })
    shares = [primary[m] for m in ring.nodes] or [0.0]
    return {
        "node": info["node_id"], "replication_factor": n, "vnodes": vnodes,
        "ranges": len(ring.tokens),
        "balance": round(max(shares) / min(shares), 4) if min(shares) > 0 else None,
        "members": members,
        "agreed": info.get("ring_agreed", False),
        "epoch": info.get("ring_epoch", 0),
        "pending": [m["id"] for m in info["members"]
                    if m["status"] in (Status.JOINING.name, Status.LEAVING.name)],
    }


def print_ring(data: dict[str, Any]) -> None:
    output.console.print(
        f"ring as seen by {data['node']}: {data['ranges']} ranges, N={data['replication_factor']}, "
        f"{data['vnodes']} vnodes per node, balance (largest/smallest share) "
        f"{data['balance'] if data['balance'] is not None else 'n/a'}")
    output.console.print(
        f"ring changes recorded by the raft group: epoch {data['epoch']}" if data["agreed"]
        else "no raft group: ring changes travel by gossip only")
    table = output.table("member", "status", "up", "vnodes", "leads", "stores a replica of")
    for m in data["members"]:
        leads = f"{m['ownership'] * 100:.1f}%"
        if not m["agrees"]:
            leads += f" [red](node reports {m['reported_ownership'] * 100:.1f}%)[/red]"
        status = m["status"]
        if data["agreed"] and m["committed_status"] != m["status"]:
            status += f" [yellow](raft: {m['committed_status'] or 'not recorded'})[/yellow]"
        table.add_row(m["id"], status,
                      "[green]up[/green]" if m["up"] else "[red]DOWN[/red]", str(m["vnodes"]),
                      leads, f"{m['replicated'] * 100:.1f}%")
    output.console.print(table)
    for member in data["pending"]:
        move = data.get("moves", {}).get(member)
        status = next(m["status"] for m in data["members"] if m["id"] == member)
        if move:
            output.console.print(
                f"{member} {status}: {move['kind']} {move['state']}, ranges "
                f"{move['ranges_done']}/{move['ranges_total']}, {move['keys']} keys, "
                f"{move['bytes']} bytes" + (f", ETA {move['eta_seconds']:.0f}s"
                                            if move["eta_seconds"] else ""))
        else:
            output.console.print(f"{member} {status} (its streaming progress is not reachable)")


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"node", "replication_factor", "vnodes", "ranges", "balance", '
                   '"agreed", "epoch", "members": [{"id", "status", "committed_status", '
                   '"up", "vnodes", "ownership", "replicated", ...}], "pending": [ids '
                   'joining or leaving], "moves": {id: progress}}.')
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="The node whose view to show (default: the first endpoint that answers).")
@click.pass_obj
def ring(s, as_json: bool, endpoint: str | None) -> None:
    """Tokens per node, the share each leads and stores, and members joining or leaving."""
    client = s.client()
    data = ring_json(output.info_json(client.info(endpoint)))
    addresses = {m["id"]: m["address"] for m in data["members"]}
    data["moves"] = {}
    for member in data["pending"]:  # a joining or leaving node reports its streaming
        try:
            move = output.info_json(client.info(addresses[member])).get("move")
        except KVError:
            move = None
        data["moves"][member] = move
    if as_json:
        output.print_json(data)
    else:
        print_ring(data)
