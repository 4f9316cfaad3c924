"""`kv meta get|put|cas`, `kv raft status` and `kv raft add|promote|remove`: the
linearizable metadata namespace on the Raft group, and its membership. Any node answers
(followers and non-voters forward to the leader).

Exit codes: 0 ok, 1 failed (including a compare-and-set whose comparison failed, and a
membership change the group refused), 2 bad usage, 3 key not found.
"""

from __future__ import annotations

import json

import click
import grpc

from kvstore._proto import internode_pb2 as pb
from kvstore._proto import internode_pb2_grpc as pb_grpc
from kvstore.services.raft_driver import client_request

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


def _endpoints(ctx: click.Context) -> list[str]:
    from kvstore.cli.main import default_endpoints

    raw = getattr(ctx.obj, "endpoints", None) or default_endpoints()
    return [e.strip().split("=", 1)[-1] for e in raw.split(",") if e.strip()]


def _timeout(ctx: click.Context) -> float:
    return float(getattr(ctx.obj, "timeout", 5.0) or 5.0)


def meta_request(endpoints: list[str], req: dict, timeout: float = 5.0) -> dict:
    """Send one metadata request to the first endpoint that answers; return the reply.
    Uses the CLI's --tls/--cert/--user credentials when there are any."""
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
                errors.append(f"{ep}: {exc.code().name}")
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


def _fail(msg: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"Error: {msg}", err=True)
    raise SystemExit(code)


@click.group()
def meta() -> None:
    """Linearizable metadata key-value namespace (on the Raft group)."""


@meta.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def meta_get(ctx: click.Context, key: str, as_json: bool) -> None:
    """Read KEY (a ReadIndex read: linearizable, without writing to the log)."""
    r = meta_request(_endpoints(ctx), {"op": "get", "key": key}, _timeout(ctx))
    if as_json:
        click.echo(json.dumps(r))
    if not r.get("ok"):
        _fail(r.get("error", "failed"))
    if not r.get("found"):
        if not as_json:
            click.echo(f"Error: {key!r} not found", err=True)
        raise SystemExit(EXIT_NOT_FOUND)
    if not as_json:
        click.echo(r["value"])


@meta.command("put")
@click.argument("key")
@click.argument("value")
@click.pass_context
def meta_put(ctx: click.Context, key: str, value: str) -> None:
    """Set KEY to VALUE (committed by a majority of the Raft group)."""
    r = meta_request(_endpoints(ctx), {"op": "put", "key": key, "value": value}, _timeout(ctx))
    if not r.get("ok"):
        _fail(r.get("error", "failed"))
    click.echo("OK")


@meta.command("cas")
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@click.option("--absent", is_flag=True,
              help="Expect KEY to be absent (EXPECTED is then ignored; pass '-').")
@click.pass_context
def meta_cas(ctx: click.Context, key: str, expected: str, new: str, absent: bool) -> None:
    """Set KEY to NEW only if its value is EXPECTED; exit 1 if the comparison fails."""
    req = {"op": "cas", "key": key, "expected": None if absent else expected, "value": new}
    r = meta_request(_endpoints(ctx), req, _timeout(ctx))
    if r.get("ok"):
        click.echo("OK")
        return
    if r.get("error") == "compare failed":
        _fail(f"compare failed: {key!r} is {r.get('previous')!r}, not "
              f"{None if absent else expected!r}")
    _fail(r.get("error", "failed"))


@click.group()
def raft() -> None:
    """The Raft metadata group."""


@raft.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def raft_status(ctx: click.Context, as_json: bool) -> None:
    """Term, leader, commit/applied index, and each member's match index and lag."""
    r = meta_request(_endpoints(ctx), {"op": "status"}, _timeout(ctx))
    if "ok" in r and not r["ok"]:
        _fail(r.get("error", "failed"))
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
        return
    if r.get("voter") is False:
        click.echo(f"{r['node']} is not a raft voter; voters: {', '.join(r['voters'])}")
        return
    click.echo(f"term {r['term']}  leader {r['leader'] or '(none)'}  commit {r['commit_index']}"
               f"  applied {r['applied_index']}  (answered by {r['node']})")
    if r.get("joining"):
        click.echo(f"{r['node']} is joining: it does not vote until it is added as a learner "
                   "and promoted")
    click.echo(f"{'ID':<12}{'ROLE':<10}{'MATCH':>8}{'LAG':>6}")
    for m in r["members"]:
        match = "-" if m["match_index"] is None else m["match_index"]
        lag = "-" if m["lag"] is None else m["lag"]
        click.echo(f"{m['id']:<12}{m['role']:<10}{match!s:>8}{lag!s:>6}")


def _conf(ctx: click.Context, change: str, node: str, as_json: bool, done: str) -> None:
    if not node or any(c.isspace() or c in "=,@" for c in node):
        _fail(f"{node!r} is not a node id (no spaces, '=', ',' or '@')", EXIT_USAGE)
    r = meta_request(_endpoints(ctx), {"op": "conf", "change": change, "node": node},
                     _timeout(ctx))
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
        if not r.get("ok"):
            raise SystemExit(EXIT_FAILED)
        return
    if not r.get("ok"):
        _fail(r.get("error", "failed"))
    learners = ",".join(r["learners"]) or "-"
    click.echo(f"OK: {node} {done} (entry {r['index']}); voters {','.join(r['voters'])}; "
               f"learners {learners}")


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

    NODE must be running: with an empty raft directory, start it with --raft-join. A
    member cannot be added again: remove it first. Exit 1 if the group refused it.
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
