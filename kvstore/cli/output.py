"""Rendering for the CLI: tables for people, one JSON object for scripts."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from kvstore.client import GetResult, PutResult
from kvstore.client.core import text_or_base64
from kvstore.core import versions

console = Console(highlight=False, soft_wrap=True)


class Choice(click.Choice):
    """click.Choice, accepted in any case, shown in --help as written (`[ONE|QUORUM|...]`,
    as the docs and the output spell them): click 8.2+ shows a case-insensitive choice
    casefolded (`[one|quorum|...]`)."""

    def __init__(self, choices, case_sensitive: bool = False) -> None:
        super().__init__(choices, case_sensitive=case_sensitive)

    def get_metavar(self, param, ctx) -> str | None:
        shown = "|".join(str(c) for c in self.choices)
        if param.required and param.param_type_name == "argument":
            return f"{{{shown}}}"
        return f"[{shown}]"


def table(*columns: str, title: str | None = None) -> Table:
    """The one table style of the CLI (rich's default box, left-aligned title)."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    return t


def up_down(up: bool) -> str:
    """The one wording for a member's or node's liveness: up / DOWN."""
    return "[green]up[/green]" if up else "[red]DOWN[/red]"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def get_json(result: GetResult) -> dict[str, Any]:
    """The documented get schema: key, found, siblings[{value, clock}], context, trace."""
    key, _ = text_or_base64(result.key)
    return {
        "key": key,
        "found": result.found,
        "siblings": [v.to_json() for v in result.siblings],
        "context": versions.context_to_text(result.context),
        "trace": result.trace,
    }


def put_json(result: PutResult, context_read: dict[str, Any] | None = None) -> dict[str, Any]:
    """The documented put/delete schema: key, ok, siblings, context, concurrent, fence,
    context_read, trace."""
    key, _ = text_or_base64(result.key)
    return {
        "key": key,
        "ok": True,
        "siblings": [v.to_json() for v in result.stored
                     if not v.tombstone and not v.fenced_out],
        "context": versions.context_to_text(result.context),
        "concurrent": result.concurrent,
        "fence": result.fence,
        "context_read": context_read,
        "trace": result.trace,
    }


def describe_context_read(read: dict[str, Any]) -> str:
    """One line on the read that fetched a write's context (levels that failed first)."""
    failed = "; ".join(f"{f['consistency']} failed ({f['error']})" for f in read["failed"])
    if read["blind"]:
        return f"context: nothing could be read ({failed}); written blind (ANY)"
    siblings = read["siblings"]
    text = (f"context read at {read['consistency']} from {', '.join(read['replicas'])}: "
            f"{siblings} sibling{'' if siblings == 1 else 's'} seen")
    if failed:
        text += (f" ({failed}; versions held only by replicas that did not answer stay as "
                 "siblings of this write)")
    return text


def _show(value: bytes) -> str:
    text, encoding = text_or_base64(value)
    return text if encoding == "utf-8" else f"base64:{text}"


def print_get(result: GetResult) -> None:
    key = _show(result.key)
    if not result.found:
        click.echo(f"not found: {key}", err=True)
        return
    if len(result.siblings) == 1:
        click.echo(_show(result.siblings[0].value))
        return
    click.echo(f"{len(result.siblings)} siblings (concurrent writes) for {key}:")
    for v in result.siblings:
        click.echo(f"  [{v.dot}] {_show(v.value)}    clock {versions.format_clock(v.clock)}")
    click.echo(f"Resolve them with `kv put {key} VALUE` (it supersedes all of them).")


def print_trace(trace: dict[str, Any] | None) -> None:
    if not trace:
        return
    head = f"coordinator {trace['coordinator']}"
    if trace.get("forwarded_to"):
        head += f" → forwarded to {trace['forwarded_to']}"
    head += (f", preference list {', '.join(trace['preference_list'])}, "
             f"needed {trace['required']}, {trace['total_ms']:.2f} ms")
    if trace.get("request_id"):
        head += f", request {trace['request_id']} (kv logs --request {trace['request_id']})"
    table = Table(title=head, title_justify="left")
    for col in ("replica", "ok", "counted", "latency ms", "versions (dot clock value)",
                "error"):
        table.add_column(col)
    for r in trace["replicas"]:
        shown = "\n".join(
            f"{v['dot']} {versions.format_clock(v['clock'])} "
            + ("(tombstone)" if v.get("tombstone") else repr(v["value"])[:40])
            + (f" fence {v['fence']}" if v.get("fence") else "")
            + (" (fenced out)" if v.get("fenced_out") else "")
            for v in r["versions"]
        ) or "-"
        name = r["node"] + (" (local)" if r.get("local") else "")
        if r.get("hint_for"):
            name += f" (hint for {r['hint_for']})"
        counted = "yes" if r.get("counted") else ("no (hint)" if r.get("hint_for") and r["ok"]
                                                  else "no")
        table.add_row(name, "yes" if r["ok"] else "NO", counted, f"{r['latency_ms']:.2f}",
                      shown, r.get("error") or "")
    console.print(table)
    for e in trace["events"]:
        console.print(f"  {e['at_ms']:8.2f} ms  {e['event']}")


def info_json(node) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "address": node.address,
        "version": node.version,
        "replication_factor": node.replication_factor,
        "vnodes": node.vnodes,
        "keys_stored": node.keys_stored,
        "data_dir": node.data_dir,
        "max_key_bytes": node.max_key_bytes,
        "max_value_bytes": node.max_value_bytes,
        "members": [
            {"id": m.id, "address": m.address, "status": m.status, "up": m.up,
             "phi": m.phi, "ownership": m.ownership, "hints_pending": m.hints_pending,
             "committed_status": m.committed_status}
            for m in node.members
        ],
        "ring_agreed": node.ring_agreed,
        "ring_epoch": node.ring_epoch,
        "move": _move_json(node.move) if node.HasField("move") else None,
    }


def _move_json(move) -> dict[str, Any]:
    """A join or decommission of this node (services/streaming.py's progress)."""
    return {"kind": move.kind, "state": move.state, "ranges_done": move.ranges_done,
            "ranges_total": move.ranges_total, "keys": move.keys, "bytes": move.bytes,
            "seconds": round(move.seconds, 3), "eta_seconds": round(move.eta_seconds, 1),
            "error": move.error, "leaves_differing": move.leaves_differing,
            "corrupt_skipped": move.corrupt_skipped}


def print_info(data: dict[str, Any]) -> None:
    console.print(f"node {data['node_id']} at {data['address']} (kvstore {data['version']}), "
                  f"N={data['replication_factor']}, {data['vnodes']} vnodes, "
                  f"{data['keys_stored']} keys stored")
    table = Table()
    for col in ("member", "address", "status", "up", "ownership"):
        table.add_column(col)
    for m in data["members"]:
        table.add_row(m["id"], m["address"], m["status"], up_down(m["up"]),
                      f"{m['ownership'] * 100:.1f}%")
    console.print(table)


def print_status(data: dict[str, Any]) -> None:
    console.print(f"members as seen by {data['node_id']} ({data['address']}), "
                  f"N={data['replication_factor']}")
    table = Table()
    for col in ("member", "address", "status", "up", "phi", "ownership", "hints held for it"):
        table.add_column(col)
    for m in data["members"]:
        table.add_row(m["id"], m["address"], m["status"],
                      up_down(m["up"]), f"{m['phi']:.2f}",
                      f"{m['ownership'] * 100:.1f}%", str(m["hints_pending"]))
    console.print(table)


def print_repair(result: dict[str, Any]) -> None:
    table = Table(title="anti-entropy repair")
    for col in ("node", "leaves differing", "keys sent", "keys received", "bytes", "tombstones "
                "purged", "seconds"):
        table.add_column(col)
    for n in result["nodes"]:
        table.add_row(n["node"], str(n["leaves_differing"]), str(n["keys_sent"]),
                      str(n["keys_received"]), str(n["bytes_transferred"]),
                      str(n["tombstones_purged"]), f"{n['seconds']:.2f}")
    console.print(table)
    console.print(f"{result['ranges_compared']} ranges compared, {result['leaves_differing']} "
                  f"leaves differing, {result['keys_sent']} keys sent, {result['keys_received']} "
                  f"received, {result['bytes_transferred']} bytes, {result['seconds']:.2f} s")
    if result.get("peers_only"):
        console.print(f"took part as peers only (not among the endpoints asked): "
                      f"{', '.join(result['peers_only'])}")
    for err in result["errors"]:
        console.print(f"[red]error:[/red] {err}")
