"""`kv txn`: transactions across keys (issue 12; docs/transactions.md).

    kv txn put a=1 b=2 --if a@CONTEXT --if-absent c [--trace] [--json]
    kv txn get a b c [--json]
    kv txn status TXN_ID [--json]

Exit codes: 0 committed (put) / answered (get, status); 1 not committed (ABORTED: a
condition failed, a conflict, the deadline passed; nothing was written) or no node
reachable; 2 bad usage (duplicate keys, too many keys, a condition without a context);
3 no such transaction (status); 5 outcome unknown: the transaction may or may not commit
(`kv txn status ID` tells; --json says "outcome": "unknown").
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from kvstore.cli import async_cmd
from kvstore.cli.async_cmd import EXIT_NOT_FOUND
from kvstore.cli.output import print_json
from kvstore.client.txn import AsyncTxnClient, TxnAborted

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _client(ctx: click.Context) -> AsyncTxnClient:
    obj = async_cmd.settings(ctx)
    return AsyncTxnClient(async_cmd.endpoints(ctx),
                          timeout=max(10.0, float(getattr(obj, "timeout", 5.0) or 5)),
                          credentials=getattr(obj, "credentials", None))


def _run(ctx: click.Context, as_json: bool, fn) -> None:
    async def main():
        async with _client(ctx) as c:
            return await fn(c)

    def extra(exc: Exception) -> dict:
        return exc.result.to_json() if isinstance(exc, TxnAborted) else {}

    def trace(exc: Exception) -> None:
        if isinstance(exc, TxnAborted) and exc.result.trace and not as_json:
            for line in exc.result.trace:
                click.echo(line)

    async_cmd.run(ctx, as_json, main, extra_json=extra, before_error=trace)


def _ms(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@click.group()
def txn() -> None:
    """Transactions: write several keys all or nothing, read several keys atomically.

    The decision of each transaction is a record in the Raft group (needs nodes started
    with --raft-voters, as `kv cluster up` does). See docs/transactions.md.

    \b
    Exit codes: 0 committed / answered; 1 not committed (nothing written) or no node
    reachable; 2 bad usage; 3 no such transaction; 5 outcome unknown (kv txn status ID).
    """


@txn.command("put")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--if", "if_ctx", multiple=True, metavar="KEY@CONTEXT",
              help="Commit only if KEY is unchanged since the read that printed CONTEXT "
                   "(`kv get KEY --json` or `kv txn get --json`). Repeatable.")
@click.option("--if-absent", "if_absent", multiple=True, metavar="KEY",
              help="Commit only if KEY does not exist. Repeatable.")
@click.option("--trace", is_flag=True, help="Print each phase, participant and the decision.")
@click.option("--ttl", type=click.FloatRange(0.1, 60), default=None,
              help="Seconds the transaction may stay undecided before anyone may abort it "
                   "(default 5).")
@click.option("--id", "txn_id", default=None, help="Name the transaction (default: random).")
@click.option("--protocol", type=click.Choice(["raft", "3pc"]), default="raft",
              show_default=True,
              help="raft: the decision is a record in the Raft group (non-blocking, atomic "
                   "under any single crash or partition); 3pc: classic three-phase commit "
                   "with timeouts, for comparison (a partition can split its outcome; "
                   "--ttl is then its phase timeout).")
@json_option
@click.pass_context
def txn_put(ctx: click.Context, pairs: tuple[str, ...], if_ctx: tuple[str, ...],
            if_absent: tuple[str, ...], trace: bool, ttl: float | None, txn_id: str | None,
            protocol: str, as_json: bool) -> None:
    """Write every KEY=VALUE, or none of them."""
    writes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{pair!r} is not KEY=VALUE")
        if key in writes:
            raise click.UsageError(f"duplicate key {key!r}: each key is written at most once")
        writes[key] = value
    conditions: dict[str, str] = {}
    for item in if_ctx:
        key, sep, context = item.rpartition("@")
        if not sep or not key or not context:
            raise click.UsageError(f"--if {item!r}: give KEY@CONTEXT, with the context a read "
                                   "printed (kv get KEY --json)")
        conditions[key] = context

    async def go(c: AsyncTxnClient) -> None:
        res = await c.put(writes, if_context=conditions, if_absent=if_absent, trace=trace,
                          ttl=ttl, txn_id=txn_id, protocol=protocol)
        if as_json:
            print_json({"ok": True, **res.to_json()})
            return
        for line in res.trace:
            click.echo(line)
        click.echo(f"COMMITTED {res.txn_id} (revision {res.revision}, decided by "
                   f"{res.decided_by}, HLC {res.commit_hlc})")
        for key, context in sorted(res.contexts.items()):
            click.echo(f"  {key} context {context}")

    _run(ctx, as_json, go)


@txn.command("get")
@click.argument("keys", nargs=-1, required=True)
@click.option("--trace", is_flag=True, help="Print each read round.")
@json_option
@click.pass_context
def txn_get(ctx: click.Context, keys: tuple[str, ...], trace: bool, as_json: bool) -> None:
    """Read several keys atomically: never part of a transaction's writes."""
    if len(set(keys)) != len(keys):
        raise click.UsageError("duplicate key in kv txn get")

    async def go(c: AsyncTxnClient) -> None:
        values, lines = await c.get(keys, trace=trace)
        if as_json:
            print_json({"ok": True, "values": {
                k: {"values": [v.decode("utf-8", "replace") for v in vals],
                    "found": bool(vals), "context": context}
                for k, (vals, context) in values.items()}, **({"trace": lines} if trace else {})})
            return
        for line in lines:
            click.echo(line)
        for k in keys:
            vals, _ = values[k]
            shown = " | ".join(v.decode("utf-8", "replace") for v in vals) or "(absent)"
            click.echo(f"{k} = {shown}")

    _run(ctx, as_json, go)


@txn.command("status")
@click.argument("txn_id")
@json_option
@click.pass_context
def txn_status(ctx: click.Context, txn_id: str, as_json: bool) -> None:
    """PENDING, COMMITTED or ABORTED; who decided, and when."""

    async def go(c: AsyncTxnClient) -> None:
        st = await c.status(txn_id)
        if st is None:
            msg = (f"no transaction {txn_id} (never begun, or resolved everywhere and "
                   "dropped from the records kept)")
            if as_json:
                print_json({"ok": False, "found": False, "error": msg})
            click.echo(f"Error: {msg}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        if as_json:
            print_json({"ok": True, "found": True, **st.to_json()})
            return
        click.echo(f"{st.txn_id}: {st.state}" + (f" ({st.reason})" if st.reason else ""))
        click.echo(f"  keys: {', '.join(st.keys)}")
        click.echo(f"  coordinator {st.coordinator}; begun at revision {st.created_revision}, "
                   f"{_ms(st.created_at_ms)}; deadline {_ms(st.deadline_ms)}")
        if st.decided_revision:
            click.echo(f"  decided by {st.decided_by} at revision {st.decided_revision}, "
                       f"{_ms(st.decided_at_ms)}"
                       + (f"; commit HLC {st.commit_hlc}" if st.commit_hlc else ""))

    _run(ctx, as_json, go)
