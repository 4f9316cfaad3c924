"""`kv raft status` and `kv raft add|promote|remove`: the Raft group's membership. Any node
answers (followers and non-voters forward to the leader). The metadata namespace, leases
and locks are in coord_cmds.py.

Output: tables for people (the CLI's one style, cli/output.py), `--json` for scripts (one
object; a failure is `{"ok": false, "error": ...}` too).
Exit codes: 0 ok, 1 failed (a membership change the group refused, no node answered), 2
bad usage, 5 a membership change's outcome is unknown (check `kv raft status`).
"""

from __future__ import annotations

import json

import click
import grpc

from kvstore._proto import internode_pb2 as pb
from kvstore._proto import internode_pb2_grpc as pb_grpc
from kvstore.cli import output
from kvstore.cli.output import print_json
from kvstore.services.raft_driver import client_request

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


def _endpoints(ctx: click.Context) -> list[str]:
    from kvstore.cli.main import default_endpoints
    from kvstore.client import parse_endpoints

    raw = getattr(ctx.obj, "endpoints", None) or default_endpoints()
    return parse_endpoints([e.strip().split("=", 1)[-1] for e in raw.split(",")])


def _timeout(ctx: click.Context) -> float:
    return float(getattr(ctx.obj, "timeout", 5.0) or 5.0)


def meta_request(endpoints: list[str], req: dict, timeout: float = 5.0) -> dict:
    """Send one admin request (status, conf) to the first endpoint that answers; return the
    reply. A membership change has no session: an endpoint that broke after delivery is
    not tried again (the change may have been applied)."""
    from kvstore.client.security import Credentials, login_metadata

    ctx = click.get_current_context(silent=True)
    creds = getattr(ctx.find_root().obj if ctx else None, "credentials", None) or Credentials()
    errors = []
    for ep in endpoints:
        with creds.channel(ep) as channel:
            stub = pb_grpc.InternodeStub(channel)
            try:
                metadata = login_metadata(creds, channel, timeout)
                batch = pb.PeerBatch(source="kv-cli",
                                     messages=[pb.PeerMessage(raft=client_request(req))])
                reply = stub.Exchange(batch, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    raise click.ClickException(f"{ep}: {exc.code().name}: {exc.details()}"
                                               ) from None
                errors.append(f"{ep}: {_describe(exc)}")
                details = (exc.details() or "").lower()
                if req.get("op") == "conf" and not (
                        exc.code() == grpc.StatusCode.UNAVAILABLE
                        and ("connect" in details or "refused" in details)):
                    click.echo(f"Error: {ep} did not answer ({exc.code().name}); the "
                               "membership change may or may not have been applied - check "
                               "`kv raft status`", err=True)
                    raise SystemExit(5) from None
                continue
        (res,) = reply.results
        kind = res.WhichOneof("body")
        if kind == "raw" and res.raw:
            return json.loads(res.raw)
        if kind == "error":
            errors.append(f"{ep}: {res.error.message}")
            continue
        errors.append(f"{ep}: empty answer")
    raise click.ClickException("no node answered the metadata request (" + "; ".join(errors)
                               + "); is the cluster up, and started with --raft-voters?")


def _describe(exc: grpc.RpcError) -> str:
    details = (exc.details() or "").lower() if hasattr(exc, "details") else ""
    if any(s in details for s in ("errors resolving", "lookup failed", "dns resolution")):
        return "cannot resolve its host name"
    if "connection refused" in details or "failed to connect" in details:
        return "unreachable (connection refused)"
    return exc.code().name if hasattr(exc, "code") else str(exc)


def _fail(msg: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"Error: {msg}", err=True)
    raise SystemExit(code)


@click.group()
def raft() -> None:
    """The Raft metadata group."""


@raft.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def raft_status(ctx: click.Context, as_json: bool) -> None:
    """Term, leader, commit/applied index, and each member's match index and lag."""
    r = _request(ctx, {"op": "status"}, as_json)
    if as_json:
        print_json(r)
        if "ok" in r and not r["ok"]:
            raise SystemExit(EXIT_FAILED)
        return
    if "ok" in r and not r["ok"]:
        _fail(r.get("error", "failed"))
    if r.get("voter") is False:
        click.echo(f"{r['node']} is not a raft voter; voters: {', '.join(r['voters'])}")
        return
    click.echo(f"term {r['term']}  leader {r['leader'] or '(none)'}  commit {r['commit_index']}"
               f"  applied {r['applied_index']}  (answered by {r['node']})")
    if r.get("joining"):
        click.echo(f"{r['node']} is joining: it does not vote until it is added as a learner "
                   "and promoted")
    table = output.table("member", "role", "match index", "lag")
    for m in r["members"]:
        match = "-" if m["match_index"] is None else m["match_index"]
        lag = "-" if m["lag"] is None else m["lag"]
        table.add_row(m["id"], m["role"], str(match), str(lag))
    output.console.print(table)


def _conf(ctx: click.Context, change: str, node: str, as_json: bool, done: str) -> None:
    if not node or any(c.isspace() or c in "=,@" for c in node):
        _fail(f"{node!r} is not a node id (no spaces, '=', ',' or '@')", EXIT_USAGE)
    r = _request(ctx, {"op": "conf", "change": change, "node": node}, as_json)
    if as_json:
        print_json(r)  # with "warning" when the leader found the node unable to follow
        if not r.get("ok"):
            raise SystemExit(EXIT_FAILED)
        return
    if not r.get("ok"):
        _fail(r.get("error", "failed"))
    click.echo(f"OK: {node} {done} (entry {r['index']})")
    if r.get("warning"):
        click.echo(f"Warning: {r['warning']}", err=True)
    t = output.table("member", "role")
    for v in r["voters"]:
        t.add_row(v, "voter")
    for learner in r["learners"]:
        t.add_row(learner, "learner")
    output.console.print(t)


def _request(ctx: click.Context, req: dict, as_json: bool) -> dict:
    """meta_request; with --json a failure to reach any node is a JSON object too."""
    try:
        return meta_request(_endpoints(ctx), req, _timeout(ctx))
    except click.ClickException as exc:
        if as_json:
            print_json({"ok": False, "error": exc.message})
        raise


@raft.command("remove")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def raft_remove(ctx: click.Context, node: str, as_json: bool) -> None:
    """Remove NODE (voter or learner) from the Raft group.

    The first step to bring back a voter that lost its raft state: remove it, start it with
    --raft-join, then `kv raft add NODE --learner` and `kv raft promote NODE`. Removing a
    voter shrinks the majority the group needs; removing the leader makes it step down.
    Answered once the leader applied the change. Exit 1 if the group refused it.
    """
    _conf(ctx, "remove", node, as_json, "removed")


@raft.command("add")
@click.argument("node")
@click.option("--learner", is_flag=True,
              help="Add NODE as a learner (required: a new member first catches up as a "
                   "non-voting learner, then `kv raft promote` makes it a voter).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def raft_add(ctx: click.Context, node: str, learner: bool, as_json: bool) -> None:
    """Add NODE to the Raft group as a learner (it receives the log but does not vote).

    NODE must be running: with an empty raft directory, start it with --raft-join (before
    or after this command). If NODE answers that it runs no raft member (started without
    --raft-join), it is added all the same and a warning says it will not catch up until
    restarted so. A member cannot be added again: remove it first. Exit 1 if the group
    refused it.
    """
    if not learner:
        _fail("a node joins as a learner first: `kv raft add NODE --learner`, then "
              "`kv raft promote NODE` once it caught up", EXIT_USAGE)
    _conf(ctx, "add_learner", node, as_json, "added as a learner")


@raft.command("promote")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def raft_promote(ctx: click.Context, node: str, as_json: bool) -> None:
    """Make learner NODE a voter, once it has caught up with the log.

    The leader waits a little (its request timeout) for the learner to catch up; exit 1
    if it is still behind (retry). A node that came back with --raft-join votes only from
    this promotion on.
    """
    _conf(ctx, "promote", node, as_json, "promoted to voter")
