"""`kv dashboard` and the cluster-wide `kv status`: every member's own view, gathered over
the Observe API (observe.proto), with hint backlog and ETA, repair debt, Raft lag and the
clock offset of each node against this machine's clock (NTP-style, +- rtt/2)."""

from __future__ import annotations

import time
from typing import Any

import click
import grpc
from google.protobuf.json_format import MessageToDict

from kvstore._proto import observe_pb2, observe_pb2_grpc
from kvstore.cli import output


def fetch_state(address: str, timeout: float, s=None) -> dict[str, Any]:
    """One member's own state; `s` (the CLI settings) brings TLS and credentials."""
    with (s.channel(address) if s is not None else grpc.insecure_channel(address)) as channel:
        sent = time.time()
        try:
            metadata = s.call_metadata(channel) if s is not None else ()
            state = observe_pb2_grpc.ObserveStub(channel).State(observe_pb2.StateRequest(),
                                                                timeout=timeout,
                                                                metadata=metadata)
        except grpc.RpcError as exc:
            return {"address": address, "error": f"{exc.code().name}: {exc.details()}"}
        received = time.time()
    out = MessageToDict(state, preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True)
    out["clock_offset_ms"] = round((state.wall_time - (sent + received) / 2) * 1000, 1)
    out["rtt_ms"] = round((received - sent) * 1000, 1)
    return out


def reachable_addresses(s, members: dict[str, str]) -> dict[str, str]:
    """Where this CLI reaches each member: the endpoint it was given for that node when
    there is one (from a host, in-network names do not resolve; with --peer-listen a
    member's gossiped address is its peer port), else the member's own address."""
    from kvstore.cli.main import default_endpoints
    from kvstore.client import KVError, parse_endpoints

    mine = {}
    for endpoint in parse_endpoints(s.endpoints or default_endpoints()):
        if endpoint in members.values():
            mine[next(m for m, a in members.items() if a == endpoint)] = endpoint
            continue
        try:
            mine[s.client().info(endpoint).node_id] = endpoint
        except KVError:
            continue
    return {m: mine.get(m, a) for m, a in members.items()}


def cluster_status(s, endpoint: str | None) -> dict[str, Any]:
    """The first answering node's member list, then every member's own state."""
    info = s.client().info(endpoint)
    members = {m.id: m.address for m in info.members}
    reach = reachable_addresses(s, members)
    nodes = {}
    for member in sorted(members):
        state = fetch_state(reach[member], min(s.timeout, 2.0), s)
        state.setdefault("node_id", member)
        nodes[member] = state
    live = [n for n in nodes.values() if "error" not in n]
    rows = []
    for member, address in sorted(members.items()):
        views = [m for n in live for m in n["members"]
                 if m["id"] == member and n["node_id"] != member]
        hints = sum(int(m["hints_pending"]) for m in views)
        rate = sum(float(m["hints_delivered_per_s"]) for m in views)
        ages = [float(m["repair_age_s"]) for m in views if float(m["repair_age_s"]) >= 0]
        repaired = [m for m in views if float(m["repair_age_s"]) >= 0]
        leaves = [int(m["repair_leaves_differing"]) for m in repaired]
        keys = [int(m["repair_keys_moved"]) for m in repaired]
        node = nodes[member]
        down_by = sorted(n["node_id"] for n in live for m in n["members"]
                         if m["id"] == member and not m["up"])
        rows.append({
            "id": member, "address": address,
            "status": next((m["status"] for m in views), "UNKNOWN"),
            "up": "error" not in node and not down_by,
            "phi": round(max((float(m["phi"]) for m in views), default=0.0), 3),
            "reachable": "error" not in node, "error": node.get("error", ""),
            "up_by": sorted(n["node_id"] for n in live for m in n["members"]
                            if m["id"] == member and m["up"] and n["node_id"] != member),
            "down_by": down_by,
            "ownership": next((float(m["ownership"]) for m in views), 0.0),
            "hints_pending": hints,
            "hints_delivered_per_s": round(rate, 2),
            "hint_eta_s": (None if not hints or rate <= 0 else round(hints / rate, 1)),
            "repair_age_s": round(min(ages), 1) if ages else None,
            "repair_leaves_differing": leaves[ages.index(min(ages))] if ages else None,
            "repair_keys_differing": keys[ages.index(min(ages))] if ages else None,
            "repair_ranges": next((int(m.get("repair_ranges", 0)) for m in views), 0),
            "storage": _storage(node),
            "keys_stored": int(node.get("keys_stored", 0)) if "error" not in node else None,
            "clock_offset_ms": node.get("clock_offset_ms"),
            "metrics_url": node.get("metrics_url", ""),
        })
    leader = next((n for n in live if n.get("raft", {}).get("role") == "leader"), None)
    raft = None
    if leader is not None:
        raft = {"leader": leader["node_id"], "term": int(leader["raft"]["term"]),
                "commit_index": int(leader["raft"]["commit_index"]),
                "members": [{"id": m["id"], "role": m["role"], "lag": int(m["lag"])}
                            for m in leader["raft"]["members"]]}
    return {"node": info.node_id, "replication_factor": info.replication_factor,
            "members": rows, "raft": raft}


def _storage(node: dict[str, Any]) -> dict[str, Any] | None:
    """The member's own storage view (None when it does not answer); -1: no census yet."""
    if "error" in node or "storage" not in node:
        return None
    st = node["storage"]
    return {"records": int(st["records"]), "tombstones": int(st["tombstones"]),
            "purge_markers": int(st["purge_markers"]), "disk_bytes": int(st["disk_bytes"]),
            "write_p99_ms": float(st["write_p99_ms"]), "fsync_p99_ms": float(st["fsync_p99_ms"]),
            "census_age_s": float(st["census_age_s"])}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_cluster_status(data: dict[str, Any]) -> None:
    console = output.console
    console.print(f"cluster as its members see it (asked {data['node']}), "
                  f"N={data['replication_factor']}")
    # Two tables, each fitting an 80-column terminal (one with every column did not)
    health = output.table("member", "up", "phi", "owns", "hints", "hint ETA", "clock")
    storage = output.table("member", "keys", "tombstones", "disk", "fsync p99",
                           "repair: age, ranges, keys", title="storage and repair debt")
    for m in data["members"]:
        if not m["reachable"]:
            up = "[red]DOWN[/red]" + (f" (by {','.join(m['down_by'])})" if m["down_by"] else
                                      " (not answering)")
        elif m["down_by"]:
            up = f"[yellow]suspected by {','.join(m['down_by'])}[/yellow]"
        else:
            up = "[green]up[/green]"
        eta = ("-" if not m["hints_pending"] else
               f"{m['hint_eta_s']:.0f} s" if m["hint_eta_s"] is not None else "waiting")
        repair = ("never" if m["repair_age_s"] is None
                  else f"{m['repair_age_s']:.0f} s, {m['repair_leaves_differing']}/"
                       f"{m['repair_ranges']}, {m['repair_keys_differing']}")
        st = m["storage"]
        tombstones = "-" if st is None or st["tombstones"] < 0 else str(st["tombstones"])
        disk = "-" if st is None or st["census_age_s"] < 0 else _size(st["disk_bytes"])
        fsync = "-" if st is None or not st["fsync_p99_ms"] else f"{st['fsync_p99_ms']:g} ms"
        offset = "-" if m["clock_offset_ms"] is None else f"{m['clock_offset_ms']:+.1f} ms"
        health.add_row(m["id"], up, f"{m['phi']:.2f}", f"{m['ownership'] * 100:.1f}%",
                       str(m["hints_pending"]), eta, offset)
        storage.add_row(m["id"], "-" if m["keys_stored"] is None else str(m["keys_stored"]),
                        tombstones, disk, fsync, repair)
    console.print(health)
    console.print(storage)
    raft = data["raft"]
    if raft is None:
        console.print("raft: no leader visible (electing, or no Raft group)")
    else:
        lags = ", ".join(f"{m['id']} {m['role']} lag {m['lag'] if m['lag'] >= 0 else '?'}"
                         for m in raft["members"])
        console.print(f"raft: leader {raft['leader']}, term {raft['term']}, commit "
                      f"{raft['commit_index']}; {lags}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"url", "urls"}.')
@click.option("--open", "open_browser", is_flag=True, help="Also open it in a browser.")
@click.pass_obj
def dashboard(s, as_json: bool, open_browser: bool) -> None:
    """Print the URL of the live dashboard (served by every node with --metrics-port)."""
    info = s.client().info()
    reach = reachable_addresses(s, {m.id: m.address for m in info.members})
    urls = {}
    for member in info.members:
        state = fetch_state(reach[member.id], min(s.timeout, 2.0), s)
        if state.get("metrics_url"):
            urls[member.id] = state["metrics_url"]
    if not urls:
        raise click.ClickException("no node serves a dashboard: start nodes with "
                                   "--metrics-port (kv cluster up does, from 9101)")
    url = urls.get(info.node_id) or next(iter(urls.values()))
    if as_json:
        output.print_json({"url": url, "urls": urls})
    else:
        click.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


def _local_log_lines(request_id: str, node_ids: set[str]) -> dict[str, list[str]]:
    """The named request's lines from the log files of a local cluster's nodes (for nodes
    that did not answer the Logs RPC: stopped, killed or paused)."""
    import json
    from pathlib import Path

    path = Path("data") / "cluster.json"
    if not path.exists():
        return {}
    out: dict[str, list[str]] = {}
    for node in json.loads(path.read_text())["nodes"]:
        if node["id"] not in node_ids:
            continue
        try:
            text = Path(node["log"]).read_text(errors="replace")
        except OSError:
            continue
        out[node["id"]] = [line for line in text.splitlines()
                           if f'"request_id": "{request_id}"' in line]
    return out


@click.command()
@click.option("--request", "request_id", required=True, metavar="ID",
              help="The request id (shown by --trace, or given by the client).")
@click.option("--limit", type=click.IntRange(1, 20_000), default=1000, show_default=True,
              help="At most this many lines per node.")
@click.option("--json", "as_json", is_flag=True, help='Print {"request_id", "lines": [line '
                                                      'objects, each with its "node"], '
                                                      '"unreachable": [ids]}.')
@click.pass_obj
def logs(s, request_id: str, limit: int, as_json: bool) -> None:
    """Every node's log lines for one request, merged in time order.

    Asks every member over the Observe API (nodes keep the lines of named requests in
    memory); for members that do not answer, reads the log files of the local cluster
    (data/cluster.json) when there is one."""
    import json

    info = s.client().info()
    reach = reachable_addresses(s, {m.id: m.address for m in info.members})
    found: dict[str, list[str]] = {}
    unreachable = []
    for member in info.members:
        with s.channel(reach[member.id]) as channel:
            try:
                reply = observe_pb2_grpc.ObserveStub(channel).Logs(
                    observe_pb2.LogsRequest(request_id=request_id, limit=limit),
                    timeout=min(s.timeout, 3.0), metadata=s.call_metadata(channel))
                found[member.id] = list(reply.lines)
            except grpc.RpcError:
                unreachable.append(member.id)
    for node_id, lines in _local_log_lines(request_id, set(unreachable)).items():
        found[node_id] = lines[-limit:]
        unreachable.remove(node_id)
    parsed = []
    for node_id, lines in found.items():
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                parsed.append({"ts": "", "node": node_id, "msg": line})
    parsed.sort(key=lambda rec: rec.get("ts", ""))
    if as_json:
        output.print_json({"request_id": request_id, "lines": parsed,
                           "unreachable": sorted(unreachable)})
    else:
        for rec in parsed:
            click.echo(f"{rec.get('ts', '')} {rec.get('node', '?'):>4} "
                       f"{rec.get('level', ''):<7} {rec.get('msg', '')}")
        if not parsed:
            click.echo(f"no log lines for request {request_id} on "
                       f"{', '.join(sorted(found)) or 'any node'}", err=True)
        for node_id in sorted(unreachable):
            click.echo(f"{node_id}: not reachable, its lines are missing", err=True)
    if not parsed:
        raise SystemExit(1)
