"""`kv user add|passwd|revoke|del|show`: the users of a cluster running with --auth.

Users live in the Raft metadata group (services/auth.py: MetaUsers); these commands need
an admin (a node certificate, or a user with role admin). A change bumps the user's
generation, which revokes every token issued before it (within the nodes' 5 s cache).

Exit codes: 0 ok, 1 failed, 2 bad usage, 3 no such user.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from kvstore.cli.output import console, print_json
from kvstore.cli.output import table as new_table
from kvstore.cli.raft_cmds import _endpoints, _timeout
from kvstore.client import read_password_file
from kvstore.core.auth import ROLES, AuthError
from kvstore.services.auth import MetaUnavailable, MetaUsers, from_meta_reply, to_meta_request


def meta_call(ctx: click.Context, req: dict) -> dict:
    """One get/cas of MetaUsers over the Meta gRPC service, with the CLI's credentials, on
    the first endpoint that answers."""
    import grpc

    from kvstore._proto import meta_pb2_grpc
    from kvstore.client.security import Credentials, login_metadata

    creds = getattr(ctx.find_root().obj, "credentials", None) or Credentials()
    timeout, errors = _timeout(ctx), []
    for ep in _endpoints(ctx):
        with creds.channel(ep) as channel:
            try:
                metadata = login_metadata(creds, channel, timeout)
                reply = meta_pb2_grpc.MetaStub(channel).Call(
                    to_meta_request(req), timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    raise click.ClickException(f"{ep}: {exc.code().name}: {exc.details()}"
                                               ) from None
                errors.append(f"{ep}: {exc.code().name}")
                continue
        return from_meta_reply(req, reply)
    raise click.ClickException("no node answered (" + "; ".join(errors) + "); is the cluster "
                               "up, and started with --raft-voters?")


def _users(ctx: click.Context) -> MetaUsers:
    async def request(req: dict) -> dict:
        return meta_call(ctx, req)

    return MetaUsers(request)


def _run(coro):
    try:
        return asyncio.run(coro)
    except (AuthError, MetaUnavailable) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


def _show(name: str, record, as_json: bool, action: str) -> None:
    data = {"user": name, "action": action, "role": record.role if record else None,
            "generation": record.generation if record else None}
    if as_json:
        print_json(data)
        return
    table = new_table("user", "role", "generation", "done")
    table.add_row(name, data["role"] or "-", str(data["generation"] or "-"), action)
    console.print(table)


JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
PASSWORD = click.option("--password-file", "password_file", required=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="File whose first line is the new user's password.")


@click.group("user")
def user() -> None:
    """Users and roles for --auth clusters (readonly, readwrite, admin)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="readonly: reads; readwrite: reads and writes; admin: also repair, "
                   "metadata, users and membership.")
@PASSWORD
@JSON
@click.pass_context
def add(ctx: click.Context, name: str, role: str, password_file: Path, as_json: bool) -> None:
    """Create user NAME, or change its role and password."""
    password = read_password_file(password_file)
    users = _users(ctx)

    async def go():
        old = await users.get(name)
        return old, await users.put(name, role, password, old)

    old, new = _run(go())
    _show(name, new, as_json, "changed" if old else "added")


@user.command("revoke")
@click.argument("name")
@JSON
@click.pass_context
def revoke(ctx: click.Context, name: str, as_json: bool) -> None:
    """Invalidate every token NAME holds (the user may log in again)."""
    users = _users(ctx)

    async def go():
        old = await users.get(name)
        return None if old is None else await users.put(name, None, None, old)

    new = _run(go())
    if new is None:
        click.echo(f"Error: no user {name!r}", err=True)
        sys.exit(3)
    _show(name, new, as_json, "tokens revoked")


@user.command("del")
@click.argument("name")
@JSON
@click.pass_context
def delete(ctx: click.Context, name: str, as_json: bool) -> None:
    """Delete user NAME (its tokens stop working)."""
    users = _users(ctx)

    async def go():
        old = await users.get(name)
        if old is not None:
            await users.put(name, None, None, old, delete=True)
        return old

    if _run(go()) is None:
        click.echo(f"Error: no user {name!r}", err=True)
        sys.exit(3)
    _show(name, None, as_json, "deleted")


@user.command("show")
@click.argument("name")
@JSON
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show NAME's role and generation."""
    record = _run(_users(ctx).get(name))
    if record is None:
        click.echo(f"Error: no user {name!r}", err=True)
        sys.exit(3)
    _show(name, record, as_json, "-")
