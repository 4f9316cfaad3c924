"""Running a command's coroutine with the CLI's error handling, for the commands built on
the metadata, transaction and saga clients (kv meta/lease/lock/elect, kv txn, kv saga):
one line on stderr (and a JSON object with --json), an exit code, a traceback only with
--debug."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from kvstore.cli.output import print_json
from kvstore.client.meta import OutcomeUnknown
from kvstore.core.errors import InvalidArgument, KVError

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNKNOWN = 1, 2, 3, 5


def settings(ctx: click.Context):
    """The root command's Settings (endpoints, timeout, debug, credentials)."""
    return ctx.find_root().obj


def endpoints(ctx: click.Context) -> list[str]:
    """--endpoints / KV_ENDPOINTS as addresses (an `id=` prefix dropped)."""
    from kvstore.cli.main import default_endpoints

    raw = getattr(settings(ctx), "endpoints", None) or default_endpoints()
    return [e.strip().split("=", 1)[-1] for e in raw.split(",") if e.strip()]


def classify(exc: Exception) -> tuple[int, str]:
    """(exit code, JSON outcome) of a failed command."""
    if isinstance(exc, OutcomeUnknown):
        return EXIT_UNKNOWN, "unknown"
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE, "failed"
    return EXIT_FAILED, "failed"


def run(ctx: click.Context, as_json: bool, main: Callable[[], Awaitable[Any]], *,
        errors: tuple[type[BaseException], ...] = (KVError,),
        classify: Callable[[Exception], tuple[int, str]] = classify,
        extra_json: Callable[[Exception], dict] = lambda exc: {},
        before_error: Callable[[Exception], None] = lambda exc: None) -> None:
    """asyncio.run(main()); a failure in `errors` ends the command as `classify` says."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except errors as exc:
        if getattr(settings(ctx), "debug", False):
            raise
        message = getattr(exc, "message", None) or str(exc)
        code, outcome = classify(exc)
        if as_json:
            print_json({"ok": False, "outcome": outcome, "error": message,
                        **extra_json(exc)})
        before_error(exc)
        click.echo(f"Error: {message}", err=True)
        sys.exit(code)
