"""`kv saga`: sagas over the replicated store with a durable log in the Raft group (issue
12; docs/transactions.md, "Sagas").

Exit codes: 0 the saga COMMITTED (run/resume) or the command succeeded; 1 failed (no
leader reachable, the store kept failing a compensation: resume later); 2 bad usage or a
bad saga file (the message names the field); 3 no such saga; 5 outcome unknown (a log
append got no definite answer: `kv saga status` says where it stands); 6 the saga ended
COMPENSATED (a step's condition did not hold; every applied step was undone); 7 another
coordinator drives the saga (this one stopped without writing more).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvstore.cli import async_cmd
from kvstore.cli.async_cmd import EXIT_NOT_FOUND, EXIT_USAGE
from kvstore.cli.output import console, print_json, table
from kvstore.client.core import AsyncClient
from kvstore.client.saga import (
    AsyncSagaClient,
    ClientStore,
    SagaConflict,
    SagaNotFound,
    SagaRecord,
    load_saga_file,
)
from kvstore.core import saga as engine
from kvstore.core.errors import InvalidArgument, KVError

EXIT_COMPENSATED, EXIT_CONFLICT = 6, 7

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
ttl_option = click.option("--ttl", type=click.FloatRange(min=0.5, max=3600), default=5.0,
                          show_default=True,
                          help="Coordinator lease in seconds: a resume can take over this "
                               "long (plus the lease bound) after this coordinator dies.")


def _run(ctx: click.Context, as_json: bool, fn, ttl: float = 5.0) -> None:
    """Run `fn(saga_client)` and turn errors into exit codes (one line, no traceback)."""
    root = async_cmd.settings(ctx)
    eps = async_cmd.endpoints(ctx)
    timeout = float(getattr(root, "timeout", 5.0) or 5.0)
    creds = getattr(root, "credentials", None)

    async def main():
        from kvstore.client.meta import AsyncMetaClient

        meta = AsyncMetaClient(eps, timeout=timeout, credentials=creds)
        data = AsyncClient(eps, timeout=timeout, credentials=creds)
        try:
            return await fn(AsyncSagaClient(meta, ClientStore(data), ttl=ttl))
        finally:
            await meta.close()
            await data.close()

    def classify(exc: Exception) -> tuple[int, str]:
        if isinstance(exc, SagaNotFound):
            return EXIT_NOT_FOUND, "not_found"
        if isinstance(exc, SagaConflict):
            return EXIT_CONFLICT, "conflict"
        return async_cmd.classify(exc)

    async_cmd.run(ctx, as_json, main, errors=(KVError, TimeoutError), classify=classify)


def _print_record(rec: SagaRecord, as_json: bool, stats=None) -> None:
    if as_json:
        out = {"ok": True, **rec.to_json()}
        if stats is not None:
            out["stats"] = stats.to_json()
        print_json(out)
        return
    st = rec.status
    console.print(f"saga {rec.saga_id} ({rec.definition.name}): {st.state}, "
                  f"{st.steps_done}/{st.steps_total} steps done"
                  + (f"; step {st.failed_step} failed: {st.reason}" if st.failed_step is not None
                     else ""), markup=False)
    t = table("step", "name", "action", "compensation", "state")
    for i, step in enumerate(rec.definition.steps):
        t.add_row(str(i), step.name, step.action.describe(), step.compensation.describe(),
                  _step_state(rec, i))
    console.print(t)
    if stats is not None:
        s = stats.to_json()
        console.print(f"{s['meta_round_trips']} log round trips, {s['store_round_trips']} "
                      f"store round trips, {s['seconds'] * 1000:.0f} ms", markup=False)


def _step_state(rec: SagaRecord, i: int) -> str:
    kinds = [e.kind for e in rec.log if e.step == i]
    if "undone" in kinds:
        return "compensated"
    if "comp" in kinds:
        return "compensating"
    if "failed" in kinds:
        failed = next(e for e in rec.log if e.kind == "failed")
        return "failed (may be applied)" if failed.unknown else "failed (not applied)"
    if "done" in kinds:
        return "done"
    if "start" in kinds:
        return "in flight"
    return "-"


def _exit_for(rec: SagaRecord) -> None:
    if rec.status.state == engine.COMPENSATED:
        sys.exit(EXIT_COMPENSATED)


@click.group()
def saga() -> None:
    """Sagas: steps with compensations, a durable log in the Raft group (docs/transactions.md).

    \b
    kv saga run docs/examples/transfer.json     # prints the saga id, runs it to its end
    kv saga status SAGA_ID                      # state, each step, the log
    kv saga resume SAGA_ID                      # take over after its coordinator died
    kv saga list
    """


@saga.command("run")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option("--id", "saga_id", default=None, metavar="ID",
              help="The saga id (1-64 of A-Z a-z 0-9 . _ -). Default: NAME-<random>.")
@click.option("--check", is_flag=True, help="Only validate FILE; run nothing.")
@ttl_option
@json_option
@click.pass_context
def saga_run(ctx: click.Context, file: Path, saga_id: str | None, check: bool, ttl: float,
             as_json: bool) -> None:
    """Run the saga in FILE (JSON: {"name", "steps": [{"op": "put"|"delete", "key",
    "value", "if_value"|"if_absent"|"if_context", "compensation": {"op", "key",
    "value"}}]}; "-" reads stdin). Exits 0 when it COMMITTED, 6 when it COMPENSATED."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except OSError as exc:
        raise click.UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        defn = load_saga_file(text)
    except InvalidArgument as exc:
        if as_json:
            print_json({"ok": False, "outcome": "failed", "error": exc.message})
        click.echo(f"Error: {file}: {exc.message}", err=True)
        sys.exit(EXIT_USAGE)
    if check:
        if as_json:
            print_json({"ok": True, "definition": defn.to_json()})
        else:
            click.echo(f"{file}: OK ({len(defn.steps)} steps)")
        return

    async def go(c: AsyncSagaClient) -> None:
        sid = saga_id or c.new_id(defn.name)
        if not as_json:
            click.echo(f"saga {sid}", err=True)  # the id first: resume needs it
        rec = await c.run(defn, sid)
        _print_record(rec, as_json, c.stats)
        _exit_for(rec)

    _run(ctx, as_json, go, ttl)


@saga.command("resume")
@click.argument("saga_id", metavar="SAGA_ID")
@click.option("--wait", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for the dead coordinator's lease to end. Default: 3 x "
                   "--ttl + 5.")
@ttl_option
@json_option
@click.pass_context
def saga_resume(ctx: click.Context, saga_id: str, wait: float | None, ttl: float,
                as_json: bool) -> None:
    """Continue SAGA_ID from its log (forward, or compensating backward) after its
    coordinator died. Waits until the old coordinator's lease has ended; a finished saga
    is only shown. Exits 0 COMMITTED, 6 COMPENSATED."""

    async def go(c: AsyncSagaClient) -> None:
        rec = await c.resume(saga_id, wait=wait)
        _print_record(rec, as_json, c.stats)
        _exit_for(rec)

    _run(ctx, as_json, go, ttl)


@saga.command("status")
@click.argument("saga_id", metavar="SAGA_ID")
@json_option
@click.pass_context
def saga_status(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """Show SAGA_ID: RUNNING / COMPENSATING / COMMITTED / COMPENSATED, each step, and (with
    --json) the whole log. Exit 3 if there is no such saga."""

    async def go(c: AsyncSagaClient) -> None:
        rec = await c.get(saga_id)
        _print_record(rec, as_json)
        if not as_json:
            t = table("#", "entry", "step", "by", "at (ms)", title="log")
            for n, e in enumerate(rec.log):
                t.add_row(str(n), (e.outcome and f"end {e.outcome}") or e.kind,
                          "" if e.step < 0 else str(e.step), e.by, str(e.at_ms))
            console.print(t)

    _run(ctx, as_json, go)


@saga.command("list")
@click.option("--unfinished", is_flag=True,
              help="Only sagas still RUNNING or COMPENSATING (candidates for resume).")
@json_option
@click.pass_context
def saga_list(ctx: click.Context, unfinished: bool, as_json: bool) -> None:
    """Every saga in the log, with its state."""

    async def go(c: AsyncSagaClient) -> None:
        recs = await c.list()
        if unfinished:
            recs = [r for r in recs
                    if r.status.state in (engine.RUNNING, engine.COMPENSATING)]
        if as_json:
            print_json({"ok": True, "sagas": [r.to_json(full=False) for r in recs]})
            return
        t = table("id", "name", "state", "steps done", "log entries")
        for r in recs:
            st = r.status
            t.add_row(r.saga_id, r.definition.name, st.state,
                      f"{st.steps_done}/{st.steps_total}", str(len(r.log)))
        console.print(t)

    _run(ctx, as_json, go)
