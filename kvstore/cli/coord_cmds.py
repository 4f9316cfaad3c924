"""`kv meta`, `kv lease` and `kv lock`: the coordination service on the Raft group (issue
11; docs/coordination.md). Any node answers (followers forward to the leader).

Exit codes: 0 ok; 1 failed, certainly not applied (compare failed, unknown lease, no
leader reachable); 2 bad usage; 3 key not found; 5 outcome unknown (no definite answer
before the deadline: the command may or may not have been applied - `--json` says
"outcome": "unknown"). A command run under `kv lock` exits with the command's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import click

from kvstore._proto import meta_pb2 as mpb
from kvstore.cli import async_cmd
from kvstore.cli.async_cmd import EXIT_NOT_FOUND, EXIT_USAGE
from kvstore.cli.output import console, print_json, table
from kvstore.client.meta import (
    AsyncMetaClient,
    CompareFailed,
    LeaseNotFound,
    MetaKey,
    lease_json,
)
from kvstore.core.errors import KVError

LEASE_ID = click.IntRange(min=1)


def _client(ctx: click.Context) -> AsyncMetaClient:
    obj = async_cmd.settings(ctx)
    return AsyncMetaClient(async_cmd.endpoints(ctx),
                           timeout=float(getattr(obj, "timeout", 5.0) or 5.0),
                           credentials=getattr(obj, "credentials", None))


def _run(ctx: click.Context, as_json: bool, fn) -> None:
    """Run `fn(client)` (a coroutine function) and turn errors into exit codes."""

    async def main():
        async with _client(ctx) as c:
            return await fn(c)

    def extra(exc: Exception) -> dict:
        if not isinstance(exc, CompareFailed):
            return {}
        return {"current": exc.current.to_json() if exc.current else None,
                "revision": exc.revision}

    async_cmd.run(ctx, as_json, main, extra_json=extra)


def _show_key(k: MetaKey) -> str:
    lease = f" lease {k.lease}" if k.lease else ""
    return (f"{k.key} = {k.value}  (create rev {k.create_revision}, mod rev "
            f"{k.mod_revision}, version {k.version}{lease})")


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


# ---- kv meta --------------------------------------------------------------------------------

@click.group()
def meta() -> None:
    """Linearizable metadata key-value namespace on the Raft group (docs/coordination.md)."""


@meta.command("get")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--serializable", is_flag=True,
              help="Answer from the contacted member's applied state (any member, no "
                   "ReadIndex round: faster, possibly stale). Default: linearizable.")
@json_option
@click.pass_context
def meta_get(ctx: click.Context, key: str, prefix: bool, serializable: bool,
             as_json: bool) -> None:
    """Read KEY: its value (exit 3 if absent), or with --prefix a table of keys."""

    async def go(c: AsyncMetaClient) -> None:
        if prefix:
            keys, rev = await c.range(key, serializable=serializable)
            if as_json:
                print_json({"ok": True, "revision": rev, "kvs": [k.to_json() for k in keys]})
                return
            t = table("key", "value", "create rev", "mod rev", "version", "lease")
            for k in keys:
                t.add_row(k.key, k.value, str(k.create_revision), str(k.mod_revision),
                          str(k.version), str(k.lease) if k.lease else "-")
            console.print(t)
            return
        k, rev = await c.get(key, serializable=serializable)
        if as_json:
            print_json({"ok": True, "found": k is not None, "revision": rev,
                        "kv": k.to_json() if k else None})
        elif k is not None:
            click.echo(k.value)
        if k is None:
            if not as_json:
                click.echo(f"Error: {key!r} not found", err=True)
            sys.exit(EXIT_NOT_FOUND)

    _run(ctx, as_json, go)


def _write_out(as_json: bool, w, **extra) -> None:
    if as_json:
        print_json({"ok": True, "revision": w.revision, "duplicate": w.duplicate,
                    "previous": w.previous.to_json() if w.previous else None, **extra})
    else:
        click.echo(f"OK (revision {w.revision})")


@meta.command("put")
@click.argument("key")
@click.argument("value")
@click.option("--lease", type=LEASE_ID, default=None, help="Attach KEY to this lease: it is "
              "deleted when the lease ends.")
@json_option
@click.pass_context
def meta_put(ctx: click.Context, key: str, value: str, lease: int | None, as_json: bool) -> None:
    """Set KEY to VALUE (committed by a majority of the Raft group)."""

    async def go(c: AsyncMetaClient) -> None:
        _write_out(as_json, await c.put(key, value, lease=lease or 0))

    _run(ctx, as_json, go)


@meta.command("delete")
@click.argument("key")
@json_option
@click.pass_context
def meta_delete(ctx: click.Context, key: str, as_json: bool) -> None:
    """Delete KEY (no error if it is absent)."""

    async def go(c: AsyncMetaClient) -> None:
        _write_out(as_json, await c.delete(key))

    _run(ctx, as_json, go)


@meta.command("cas")
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@click.option("--absent", is_flag=True,
              help="Expect KEY to be absent (EXPECTED is then ignored; pass '-').")
@click.option("--lease", type=LEASE_ID, default=None, help="Attach KEY to this lease.")
@json_option
@click.pass_context
def meta_cas(ctx: click.Context, key: str, expected: str, new: str, absent: bool, lease: int,
             as_json: bool) -> None:
    """Set KEY to NEW only if its value is EXPECTED; exit 1 if the comparison fails.

    Applied exactly once: a retry after a lost answer returns the first result, never
    "compare failed" against its own write. Exit 5 if the outcome is unknown.
    """

    async def go(c: AsyncMetaClient) -> None:
        _write_out(as_json, await c.cas(key, None if absent else expected, new,
                                        lease=lease or 0))

    _run(ctx, as_json, go)


@meta.command("watch")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--rev", "start", type=click.IntRange(min=1), default=None,
              help="Start from this revision (default: changes after now). Exit 1 if it is "
                   "older than the history kept.")
@json_option
@click.pass_context
def meta_watch(ctx: click.Context, key: str, prefix: bool, start: int | None,
               as_json: bool) -> None:
    """Print each change to KEY (or under it), in revision order, until Ctrl-C.

    Resumes after a disconnect or a leader change from the last revision seen: no change
    is missed or printed twice. --json: one JSON object per line.
    """

    async def go(c: AsyncMetaClient) -> None:
        async for ev in c.watch(key, prefix=prefix, start_revision=start or 0):
            kind = "DELETE" if ev.type == mpb.MetaEvent.DELETE else "PUT"
            if as_json:
                click.echo(json_line({"type": kind, "revision": ev.revision,
                                      "kv": MetaKey.from_pb(ev.kv).to_json()}))
            elif kind == "PUT":
                click.echo(f"{ev.revision} PUT {ev.kv.key} = {ev.kv.value}")
            else:
                click.echo(f"{ev.revision} DELETE {ev.kv.key}")
            sys.stdout.flush()

    _run(ctx, as_json, go)


# ---- kv lease -------------------------------------------------------------------------------

@click.group()
def lease() -> None:
    """Leases: TTLs kept by the Raft leader; keys and locks attached to one end with it."""


@lease.command("grant")
@click.argument("ttl", type=click.FloatRange(min=0.1, max=7 * 24 * 3600))
@json_option
@click.pass_context
def lease_grant(ctx: click.Context, ttl: float, as_json: bool) -> None:
    """Grant a lease of TTL seconds; prints its id."""

    async def go(c: AsyncMetaClient) -> None:
        info = await c.lease_grant(ttl)
        if as_json:
            print_json({"ok": True, **lease_json(info)})
        else:
            click.echo(info.id)

    _run(ctx, as_json, go)


@lease.command("keepalive")
@click.argument("lease_id", type=LEASE_ID)
@click.option("--once", is_flag=True, help="Refresh once and exit.")
@json_option
@click.pass_context
def lease_keepalive(ctx: click.Context, lease_id: int, once: bool, as_json: bool) -> None:
    """Keep LEASE_ID alive (every TTL/3) until Ctrl-C; exit 1 once it is gone."""

    async def go(c: AsyncMetaClient) -> None:
        while True:
            info = await c.lease_keepalive(lease_id)
            if as_json:
                click.echo(json_line({"ok": True, **lease_json(info)}))
            else:
                click.echo(f"lease {lease_id} kept alive, TTL {info.ttl_ms / 1000:g}s")
            if once:
                return
            await asyncio.sleep(info.ttl_ms / 3000)

    _run(ctx, as_json, go)


def json_line(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


@lease.command("revoke")
@click.argument("lease_id", type=LEASE_ID)
@json_option
@click.pass_context
def lease_revoke(ctx: click.Context, lease_id: int, as_json: bool) -> None:
    """End LEASE_ID now: its keys are deleted and its locks released."""

    async def go(c: AsyncMetaClient) -> None:
        info = await c.lease_revoke(lease_id)
        if as_json:
            print_json({"ok": True, **lease_json(info)})
        else:
            click.echo(f"OK: lease {lease_id} revoked ({len(info.keys)} keys deleted, "
                       f"{len(info.locks)} locks released)")

    _run(ctx, as_json, go)


@lease.command("list")
@json_option
@click.pass_context
def lease_list(ctx: click.Context, as_json: bool) -> None:
    """Every live lease, with its TTL and time left by the leader's clock."""

    async def go(c: AsyncMetaClient) -> None:
        infos = await c.lease_list()
        if as_json:
            print_json({"ok": True, "leases": [lease_json(i) for i in infos]})
            return
        t = table("id", "ttl", "remaining", "keys", "locks")
        for i in infos:
            j = lease_json(i)
            t.add_row(str(j["id"]), f"{j['ttl']:g}s",
                      "-" if j["remaining"] is None else f"{j['remaining']:.1f}s",
                      str(len(j["keys"])), str(len(j["locks"])))
        console.print(t)

    _run(ctx, as_json, go)


@lease.command("ttl")
@click.argument("lease_id", type=LEASE_ID)
@json_option
@click.pass_context
def lease_ttl(ctx: click.Context, lease_id: int, as_json: bool) -> None:
    """Time left on LEASE_ID by the leader's clock; exit 1 if it is gone."""

    async def go(c: AsyncMetaClient) -> None:
        j = lease_json(await c.lease_ttl(lease_id))
        if as_json:
            print_json({"ok": True, **j})
        else:
            left = "unknown" if j["remaining"] is None else f"{j['remaining']:.1f}s"
            click.echo(f"lease {lease_id}: {left} left of {j['ttl']:g}s; keys "
                       f"{', '.join(j['keys']) or '-'}; locks {', '.join(j['locks']) or '-'}")

    _run(ctx, as_json, go)


# ---- kv lock --------------------------------------------------------------------------------

@click.command("lock", context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--ttl", type=click.FloatRange(min=0.5, max=3600), default=10.0,
              show_default=True, help="TTL of the lease the lock is held under (kept alive "
              "every TTL/3 while held).")
@click.option("--wait", type=click.FloatRange(min=0), default=None,
              help="Give up (exit 1) if not granted within this many seconds.")
@json_option
@click.pass_context
def lock(ctx: click.Context, name: str, command: tuple[str, ...], ttl: float,
         wait: float | None, as_json: bool) -> None:
    """Acquire lock NAME (FIFO), then run COMMAND with KV_FENCE=NAME:TOKEN, or hold it
    until Ctrl-C.

    \b
    kv lock jobs/nightly -- ./run-job.sh   run under the lock; exits with its code
    kv lock jobs/nightly --ttl 10          print the fencing token, hold until Ctrl-C

    The token is the revision of the grant: it only grows. Guard writes with it
    (`kv put KEY V --fence NAME:TOKEN`) so the store refuses them once a later holder
    wrote: a paused holder may still believe it holds the lock after its lease ended.
    If the lease is found gone while COMMAND runs, COMMAND gets SIGTERM and kv exits 1.
    """
    if not name or any(c.isspace() for c in name):
        click.echo(f"Error: lock name {name!r} must be non-empty without spaces", err=True)
        sys.exit(EXIT_USAGE)
    rc = {"code": 0}

    async def go(c: AsyncMetaClient) -> None:
        info = await c.lease_grant(ttl)
        lease_id = info.id
        lost = asyncio.Event()
        proc = None
        try:
            try:
                token = await c.lock(name, lease_id, wait=wait)
            except TimeoutError as exc:
                raise KVError(str(exc)) from None
            fence = f"{name}:{token}"
            if as_json:
                click.echo(json_line({"ok": True, "lock": name, "token": token,
                                      "fence": fence, "lease": lease_id}))
            else:
                click.echo(f"acquired {name} token {token} (KV_FENCE={fence}); lease "
                           f"{lease_id}", err=bool(command))
            sys.stdout.flush()

            async def keepalive() -> None:
                while True:
                    await asyncio.sleep(ttl / 3)
                    try:
                        await c.lease_keepalive(lease_id)
                    except LeaseNotFound:
                        lost.set()
                        return
                    except KVError:
                        continue  # no answer this time; the lease still has time left

            ka = asyncio.ensure_future(keepalive())
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())]
            if command:
                env = dict(os.environ, KV_FENCE=fence, KV_LOCK_TOKEN=str(token),
                           KV_LEASE=str(lease_id))
                try:
                    proc = await asyncio.create_subprocess_exec(*command, env=env)
                except OSError as exc:
                    raise KVError(f"cannot run {command[0]!r}: {exc}") from None
                waits.append(asyncio.ensure_future(proc.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            ka.cancel()
            for w in waits:
                w.cancel()
            if lost.is_set():
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
                raise KVError(f"lease {lease_id} of lock {name!r} ended while held (kept "
                              "alive too late?); the lock is lost")
            if proc is not None:
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
                rc["code"] = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                # Did we hold the lock until the command ended? (It may have been paused
                # past the TTL: its guarded writes were then refused, and its caller must
                # know the lock was lost whatever the command's own exit code says.)
                try:
                    await c.lease_keepalive(lease_id)
                except LeaseNotFound:
                    raise KVError(f"lease {lease_id} of lock {name!r} ended while held (the "
                                  f"command exited {rc['code']}); the lock was lost") from None
                except KVError:
                    pass  # no answer: the lease may still be alive
        finally:
            with contextlib.suppress(KVError, TimeoutError):
                await asyncio.wait_for(c.lease_revoke(lease_id), 2.0)  # releases the lock

    _run(ctx, as_json, go)
    sys.exit(rc["code"])


# ---- kv elect -------------------------------------------------------------------------------

@click.command("elect")
@click.argument("name")
@click.option("--value", default=None, help="Campaign with this value (what observers see).")
@click.option("--observe", is_flag=True, help="Print each new leader, in order, until Ctrl-C.")
@click.option("--ttl", type=click.FloatRange(min=0.5, max=3600), default=10.0,
              show_default=True, help="TTL of the campaign's lease (kept alive meanwhile).")
@json_option
@click.pass_context
def elect(ctx: click.Context, name: str, value: str | None, observe: bool, ttl: float,
          as_json: bool) -> None:
    """Campaign in election NAME (--value), or watch its leaders (--observe).

    \b
    kv elect service/scheduler --value me   prints when it leads; resigns on Ctrl-C
    kv elect service/scheduler --observe    prints each new leader as it changes

    A candidacy lives as long as its lease: if it is not kept alive the candidate can no
    longer win, and a leader whose lease ends is replaced by the next candidate in line.
    Observers see leaders in revision order, never an earlier one after a later one.
    """
    if (value is None) == (not observe):
        click.echo("Error: give --value VALUE (campaign) or --observe", err=True)
        sys.exit(EXIT_USAGE)
    if not name or any(c.isspace() for c in name):
        click.echo(f"Error: election name {name!r} must be non-empty without spaces", err=True)
        sys.exit(EXIT_USAGE)

    def show(leader) -> None:
        if as_json:
            click.echo(json_line({"ok": True, **leader.to_json()}))
        else:
            click.echo(f"leader {leader.value} (lease {leader.lease}, revision "
                       f"{leader.revision})")
        sys.stdout.flush()

    async def go(c: AsyncMetaClient) -> None:
        if observe:
            async for leader in c.observe(name):
                show(leader)
            return
        lease_id = (await c.lease_grant(ttl)).id
        lost = asyncio.Event()

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    await c.lease_keepalive(lease_id)
                except LeaseNotFound:
                    lost.set()
                    return
                except KVError:
                    continue

        ka = asyncio.ensure_future(keepalive())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            camp = asyncio.ensure_future(c.campaign(name, value, lease_id))
            waits = [camp, asyncio.ensure_future(stop.wait()),
                     asyncio.ensure_future(lost.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if camp.done():
                show(camp.result())
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            camp.cancel()
            if lost.is_set():
                raise KVError(f"the lease of the campaign in {name!r} ended; no longer a "
                              "candidate")
        finally:
            ka.cancel()
            with contextlib.suppress(KVError, TimeoutError):
                await asyncio.wait_for(c.lease_revoke(lease_id), 2.0)  # resigns

    _run(ctx, as_json, go)
