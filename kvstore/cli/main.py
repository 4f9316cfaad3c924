"""The `kv` command line: data commands, and the node and cluster command groups.

Errors print one line (`Error: ...`) and exit non-zero; `--debug` shows the traceback.
Exit codes: 0 ok, 1 the request failed, 2 bad usage or invalid argument, 3 key not found,
4 a guarded write was refused (fenced: the lock has a newer holder; retrying cannot help).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from kvstore.cli import output
from kvstore.cli.auth_opts import credentials_from, security_options
from kvstore.client import (
    Client,
    ConnectionFailed,
    Credentials,
    Fenced,
    InvalidArgument,
    KVError,
    PermissionDenied,
    Unauthenticated,
    parse_endpoints,
)
from kvstore.core import versions

DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
CLUSTER_FILE = Path("data") / "cluster.json"
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_FENCED = 1, 2, 3, 4


class _ReadLevel(output.Choice):
    """The read levels; ANY (a write level) is refused with the reason."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.upper() == "ANY":
            self.fail("ANY is for writes only: a write acknowledged by a hint alone cannot be "
                      "read until handoff delivers it; read at ONE or above", param, ctx)
        return super().convert(value, param, ctx)


LEVEL_CHOICE = _ReadLevel(["ONE", "TWO", "THREE", "QUORUM", "ALL"])
WRITE_LEVEL_CHOICE = output.Choice(["ONE", "TWO", "THREE", "QUORUM", "ALL", "ANY"])


def default_endpoints() -> str:
    """KV_ENDPOINTS, else the local cluster started here (data/cluster.json), else 7001-7003."""
    if CLUSTER_FILE.exists():
        try:
            nodes = json.loads(CLUSTER_FILE.read_text())["nodes"]
            return ",".join(n["address"] for n in nodes)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return DEFAULT_ENDPOINTS


class Settings:
    def __init__(self, endpoints: str | None, timeout: float, debug: bool,
                 credentials: Credentials | None = None, route: bool = True) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.debug = debug
        self.route = route
        self.credentials = credentials or Credentials()
        self._client: Client | None = None
        self._metadata: tuple | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(parse_endpoints(self.endpoints or default_endpoints()),
                                  timeout=self.timeout, credentials=self.credentials,
                                  route=self.route)
        return self._client

    def channel(self, address: str):
        """A blocking channel to one node with this CLI's TLS settings (admin calls that
        go to every member: status, chaos, logs)."""
        return self.credentials.channel(address)

    def call_metadata(self, channel) -> tuple:
        """The login token for such calls (--user), fetched once per command."""
        if self._metadata is None:
            from kvstore.client.security import login_metadata

            self._metadata = login_metadata(self.credentials, channel, self.timeout)
        return self._metadata

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--endpoints", envvar="KV_ENDPOINTS", metavar="HOST:PORT[,...]",
              help="Nodes to talk to (any node serves any request). Default: KV_ENDPOINTS, "
                   "else the cluster started by `kv cluster up` here, else 127.0.0.1:7001-7003.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="Request deadline in seconds.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--no-route", is_flag=True,
              help="Send requests to the endpoints in turn instead of to a replica of the "
                   "key (token-aware routing, on by default; a node that is not a replica "
                   "forwards a write to one, one extra hop).")
@security_options
@click.version_option(package_name="kvstore", prog_name="kv")
@click.pass_context
def cli(ctx: click.Context, endpoints: str | None, timeout: float, debug: bool,
        no_route: bool, **security) -> None:
    """kvstore: a replicated key-value store with tunable consistency.

    \b
    Start a local cluster:   kv cluster up --nodes 3
    Write and read:          kv put user:1 alice --consistency QUORUM
                             kv get user:1 --consistency ONE --trace
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(endpoints, timeout, debug, credentials_from(**security),
                       route=not no_route)
    ctx.call_on_close(ctx.obj.close)


def consistency_options(letter: str):
    """--consistency LEVEL and an explicit --r/--w count."""

    def wrap(fn):
        fn = click.option(f"--{letter}", f"count_{letter}", type=click.IntRange(min=1),
                          default=None,
                          help=f"Explicit number of replicas that must answer ({letter.upper()}); "
                               "overrides --consistency.")(fn)
        if letter == "w":
            return click.option(
                "--consistency", "-c", type=WRITE_LEVEL_CHOICE, default=None,
                help="How many of the key's replicas must acknowledge: ONE, TWO, THREE, "
                     "QUORUM, ALL (default: the server's, QUORUM). ANY: one acknowledgement, "
                     "and a hint on a fallback node alone is enough (no read guarantee).")(fn)
        return click.option("--consistency", "-c", type=LEVEL_CHOICE, default=None,
                            help="How many replicas must answer: ONE, TWO, THREE, QUORUM, ALL. "
                                 "Default: the server's (QUORUM). A read at R sees every "
                                 "write acknowledged at W when R + W > N.")(fn)

    return wrap


def write_mode_options(fn):
    """--strict / --sloppy: whether hints on fallback nodes count towards W."""
    fn = click.option("--sloppy", is_flag=True,
                      help="Sloppy quorum: a hint held by a fallback node counts towards W for "
                           "the replica it stands in for. The write survives more failures, "
                           "but until hinted handoff delivers it a read (even with R + W > N) "
                           "may not see it.")(fn)
    return click.option("--strict", is_flag=True,
                        help="Strict quorum (the default unless the node runs with "
                             "--sloppy-quorum): only the key's own replicas count towards W; "
                             "hints are still written, and delivered later, but not "
                             "counted.")(fn)


def fence_option(fn):
    return click.option(
        "--fence", default=None, metavar="LOCK:TOKEN",
        help="Guard the write with a fencing token (as `kv lock` prints it; KV_FENCE in a "
             "command run under `kv lock`): a replica that has seen a higher token of the "
             "lock refuses it (exit 4), and a version written under a lower token is hidden "
             "wherever one written under a higher token of the lock is held. Always "
             "strict.")(fn)


def json_and_trace(fn):
    fn = click.option("--trace", is_flag=True,
                      help="Show what the coordinator did: replicas asked, latency, versions, "
                           "which answers counted (a hint counts only when sloppy).")(fn)
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)


def key_hex_option(fn):
    return click.option("--key-hex", is_flag=True,
                        help="KEY is given hex-encoded (for binary, non-UTF-8 keys).")(fn)


def _key(key: str, key_hex: bool) -> bytes:
    """KEY as bytes: UTF-8 text, or hex with --key-hex; a clear error otherwise."""
    if key_hex:
        try:
            return bytes.fromhex(key)
        except ValueError:
            raise InvalidArgument(f"--key-hex: {key!r} is not hex (e.g. 6b6579 for 'key')"
                                  ) from None
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "surrogateescape")
        raise InvalidArgument("KEY is not valid UTF-8; pass binary keys hex-encoded with "
                              f"--key-hex: {raw.hex()}") from None


@cli.command()
@click.argument("key")
@consistency_options("r")
@json_and_trace
@key_hex_option
@click.option("--raw", is_flag=True,
              help="Write the value's exact bytes to stdout (no newline, no decoding); "
                   "exit 1 if the key has siblings.")
@click.option("-o", "--output", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the value's exact bytes to this file (as --raw).")
@click.pass_obj
def get(s: Settings, key: str, consistency: str | None, count_r: int | None, trace: bool,
        as_json: bool, key_hex: bool, raw: bool, out_file: Path | None) -> None:
    """Read KEY. Concurrent versions (siblings) are all shown, with their clocks."""
    if (raw or out_file) and as_json:
        raise click.UsageError("--raw/-o write the value's bytes; --json prints JSON: "
                               "choose one")
    result = s.client().get(_key(key, key_hex), consistency=consistency, r=count_r,
                            trace=trace)
    if (raw or out_file) and result.found:
        if len(result.siblings) > 1:
            raise KVError(f"the key has {len(result.siblings)} siblings (concurrent writes); "
                          "--raw/-o need one value: see them with --json, or resolve them "
                          "with `kv put`")
        value = result.siblings[0].value
        if out_file is not None:
            out_file.write_bytes(value)
        else:
            stdout = click.get_binary_stream("stdout")
            stdout.write(value)
            stdout.flush()
    elif as_json:
        output.print_json(output.get_json(result))
    else:
        output.print_get(result)
    if trace and not as_json:
        output.print_trace(result.trace)
    if not result.found:
        sys.exit(EXIT_NOT_FOUND)


@cli.command()
@click.argument("key")
@click.argument("value")
@key_hex_option
@consistency_options("w")
@click.option("--blind", is_flag=True,
              help="Write without reading the current context first (the new value becomes a "
                   "sibling of whatever is there).")
@click.option("--context", "context_text", default=None, metavar="CONTEXT",
              help="The context from `kv get --json` to supersede (instead of reading it now).")
@write_mode_options
@fence_option
@json_and_trace
@click.pass_obj
def put(s: Settings, key: str, value: str, key_hex: bool, consistency: str | None,
        count_w: int | None, blind: bool, context_text: str | None, strict: bool,
        sloppy: bool, fence: str | None, trace: bool, as_json: bool) -> None:
    """Write VALUE to KEY, replacing the versions it has now. VALUE - reads the value from
    stdin, byte for byte (binary files round-trip: `kv get KEY -o FILE`).

    By default the current causal context is read first, at the write's level capped at
    QUORUM (at ONE when that cannot answer; --trace and --json say what was read), so the
    write supersedes every sibling it saw; use --blind to skip that read. Versions the
    read did not see stay as siblings; the reply's "concurrent" counts them.
    """
    _check_fence(fence)
    key_bytes = _key(key, key_hex)
    if value == "-":
        data = click.get_binary_stream("stdin").read()
    else:
        data = value.encode("utf-8", "surrogateescape")  # bytes as given on the command line
    context, context_read = _context(s, key_bytes, consistency, count_w, blind, context_text)
    result = s.client().put(key_bytes, data, context=context, consistency=consistency, w=count_w,
                            trace=trace, strict=strict, sloppy=sloppy, fence=fence)
    _print_write(result, "stored", trace, as_json, context_read)


@cli.command()
@click.argument("key")
@key_hex_option
@consistency_options("w")
@click.option("--blind", is_flag=True, help="Delete without reading the current context first.")
@click.option("--context", "context_text", default=None, metavar="CONTEXT",
              help="The context from `kv get --json` to supersede.")
@write_mode_options
@fence_option
@json_and_trace
@click.pass_obj
def delete(s: Settings, key: str, key_hex: bool, consistency: str | None,
           count_w: int | None, blind: bool, context_text: str | None, strict: bool,
           sloppy: bool, fence: str | None, trace: bool, as_json: bool) -> None:
    """Delete KEY (writes a tombstone that supersedes the versions it saw; the context is
    read first as for `kv put`)."""
    _check_fence(fence)
    key_bytes = _key(key, key_hex)
    context, context_read = _context(s, key_bytes, consistency, count_w, blind, context_text)
    result = s.client().delete(key_bytes, context=context, consistency=consistency, w=count_w,
                               trace=trace, strict=strict, sloppy=sloppy, fence=fence)
    _print_write(result, "deleted", trace, as_json, context_read)


def _check_fence(fence: str | None) -> None:
    """Refuse a malformed --fence before anything is read or written."""
    if fence is not None:
        try:
            versions.parse_fence(fence)
        except versions.InvalidFence as exc:
            raise InvalidArgument(f"--fence: {exc}") from None


# Levels the context is read at before a write, strongest first: the write's level capped
# at QUORUM (a pre-read never needs every replica: a QUORUM read sees every write
# acknowledged at QUORUM or above), then ONE when that is unavailable. A context read from
# fewer replicas can miss versions held only by the others: the write then does not
# supersede them and they stay as siblings (nothing is lost).
def _pre_read_levels(consistency: str | None, count_w: int | None) -> list[tuple[str, dict]]:
    if count_w is not None:
        first = [("R=1", {"r": 1})] if count_w == 1 else (
            [("R=2", {"r": 2})] if count_w == 2 else [("QUORUM", {"consistency": "QUORUM"})])
    else:
        level = (consistency or "QUORUM").upper()
        capped = level if level in ("ONE", "TWO") else "QUORUM"
        first = [(capped, {"consistency": capped})]
    if first[0][0] in ("ONE", "R=1"):
        return first
    return [*first, ("ONE", {"consistency": "ONE"})]


def _context(s: Settings, key: bytes, consistency: str | None, count_w: int | None, blind: bool,
             context_text: str | None) -> tuple[bytes, dict | None]:
    """The causal context to write with, and what was read to get it (None: nothing read).

    The second value is the `context_read` object of `--json` (docs/architecture.md):
    consistency, replicas that answered, siblings seen, levels that failed first, and
    whether the write went blind because nothing could be read (ANY only).
    """
    if context_text is not None:
        try:
            return versions.context_from_text(context_text), None
        except versions.InvalidContext as exc:
            raise InvalidArgument(str(exc)) from None
    if blind:
        return b"", None
    failed: list[dict] = []
    last: KVError | None = None
    for label, kwargs in _pre_read_levels(consistency, count_w):
        try:
            got = s.client().get(key, trace=True, **kwargs)
        except (InvalidArgument, ConnectionFailed, Unauthenticated, PermissionDenied):
            raise
        except KVError as exc:
            failed.append({"consistency": label, "error": f"{type(exc).__name__}: {exc.message}"})
            last = exc
            continue
        answered = [r["node"] for r in (got.trace or {}).get("replicas", []) if r["ok"]]
        return got.context, {"consistency": label, "replicas": answered,
                             "siblings": len(got.siblings), "failed": failed, "blind": False}
    assert last is not None
    if (consistency or "").upper() == "ANY":  # ANY takes a write even with no replica up
        return b"", {"consistency": None, "replicas": [], "siblings": 0, "failed": failed,
                     "blind": True}
    tried = "; ".join(f"{f['consistency']}: {f['error']}" for f in failed)
    raise type(last)(f"could not read the current context first ({tried}); nothing was "
                     "written. What helps: bring the key's replicas back up (`kv status` "
                     "shows which are down) and retry; or write without the read: --blind "
                     "(the value becomes a sibling of what is stored), or --context from an "
                     "earlier `kv get --json`") from None


def _print_write(result, verb: str, trace: bool, as_json: bool,
                 context_read: dict | None) -> None:
    if as_json:
        output.print_json(output.put_json(result, context_read))
        return
    if context_read is not None and (trace or context_read["failed"]):
        click.echo(output.describe_context_read(context_read), err=not trace)
    live = [v for v in result.stored if not v.tombstone and not v.fenced_out]
    note = ""
    if len(live) > 1:
        note = (f" — the key now has {len(live)} siblings (concurrent writes this one did "
                "not see); `kv get` shows them")
    guarded = f" under fence {result.fence}" if result.fence else ""
    click.echo(f"OK, {verb}{guarded}{note}")
    if trace:
        output.print_trace(result.trace)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="The node to ask (default: the first of --endpoints that answers).")
@click.pass_obj
def info(s: Settings, as_json: bool, endpoint: str | None) -> None:
    """What a node knows: its id, the members, replication factor, keys stored."""
    node = s.client().info(endpoint)
    data = output.info_json(node)
    if as_json:
        output.print_json(data)
    else:
        output.print_info(data)


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"node", "members": [{"id", "up", "up_by", "down_by", "phi", '
                   '"hints_pending", "hint_eta_s", "repair_age_s", "repair_keys_differing", '
                   '"storage", "clock_offset_ms", ...}], '
                   '"raft"} (with --node: that node\'s view only, as before).')
@click.option("--node", "endpoint", default=None, metavar="HOST:PORT",
              help="The node whose view to show (default: the first of --endpoints that "
                   "answers).")
@click.pass_obj
def status(s: Settings, as_json: bool, endpoint: str | None) -> None:
    """The cluster as its members see it: up/down and phi, hint backlog and ETA, repair
    debt, Raft leader and follower lag, clock offsets."""
    if endpoint is None:
        from kvstore.cli.observe_cmds import cluster_status, print_cluster_status

        data = cluster_status(s, None)
        output.print_json(data) if as_json else print_cluster_status(data)
        return
    data = output.info_json(s.client().info(endpoint))
    if as_json:
        output.print_json({"node": data["node_id"], "members": data["members"]})
    else:
        output.print_status(data)


@cli.command()
@click.option("--node", "nodes", multiple=True, metavar="HOST:PORT",
              help="Repair from these nodes only (repeatable). Default: every node of "
                   "--endpoints.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: ranges_compared, leaves_differing, keys_sent, "
                   "keys_received, bytes_transferred, tombstones_purged, seconds, nodes, "
                   "peers_only, errors.")
@click.pass_obj
def repair(s: Settings, nodes: tuple[str, ...], as_json: bool) -> None:
    """Run Merkle anti-entropy now: each node asked compares its data with each peer's and
    exchanges only the keys that differ.

    The work that involves peers runs on the nodes, which reach each other by the
    addresses they know; this command only talks to the endpoints it was given (so it
    works from a host that cannot resolve the nodes' in-cluster names). Members not among
    them still take part as peers (listed as peers_only).
    """
    from kvstore.cli.repair_cmd import run_repair

    client = s.client()
    members = [m.id for m in client.info().members]  # fails over; fails if none answers
    asked = list(nodes) or [ep.address for ep in client.async_client.endpoints]
    result = client.run(run_repair(client.async_client, asked, show_progress=not as_json))
    repaired = {n["node"] for n in result["nodes"]}
    result["peers_only"] = [m for m in members if m not in repaired]
    if as_json:
        output.print_json(result)
    else:
        output.print_repair(result)
    if result["errors"]:
        sys.exit(EXIT_FAILED)


def _register_groups() -> None:
    from kvstore.cli.cluster_cmds import cluster
    from kvstore.cli.node_cmds import node

    membership = __import__("kvstore.cli.membership_cmds", fromlist=["decommission"])
    node.add_command(membership.decommission)
    node.add_command(membership.remove)
    node.add_command(membership.replace)
    cli.add_command(node)
    cli.add_command(cluster)
    cli.add_command(__import__("kvstore.cli.bench_cmds", fromlist=["bench"]).bench)
    from kvstore.cli.coord_cmds import elect, lease, lock, meta  # issue 11: coordination
    from kvstore.cli.raft_cmds import raft  # raft metadata group membership: kv raft

    for group in (meta, lease, lock, elect, raft):
        cli.add_command(group)
    from kvstore.cli.chaos_cmds import chaos  # issue 14: faults, dashboard, cluster status
    from kvstore.cli.observe_cmds import dashboard, logs

    cli.add_command(chaos)
    cli.add_command(dashboard)
    cli.add_command(logs)
    from kvstore.cli.certs_cmd import certs_group  # security: kv certs, kv user

    cli.add_command(certs_group, "certs")
    cli.add_command(__import__("kvstore.cli.user_cmds", fromlist=["user"]).user)
    cli.add_command(__import__("kvstore.cli.ring_cmd", fromlist=["ring"]).ring)
    cli.add_command(__import__("kvstore.cli.txn_cmds", fromlist=["txn"]).txn)  # issue 12
    cli.add_command(__import__("kvstore.cli.saga_cmds", fromlist=["saga"]).saga)  # issue 12


_register_groups()


def _show_envvars(command: click.Command) -> None:
    """Every option that reads an environment variable says which in its --help."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            missing = [n for n in names if n not in (param.help or "")]
            if missing:
                param.help = ((param.help or "").rstrip() + " "
                              + " ".join(f"[env {n}]" for n in missing)).strip()
    for sub in getattr(command, "commands", {}).values():
        _show_envvars(sub)


_show_envvars(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI with short error messages instead of tracebacks."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="kv", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KVError as exc:
        if debug:
            raise
        name = type(exc).__name__
        click.echo(f"Error: {name}: {exc.message}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, InvalidArgument)
                 else EXIT_FENCED if isinstance(exc, Fenced) else EXIT_FAILED)
    except OSError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for "
                   "the traceback)", err=True)
        sys.exit(EXIT_FAILED)

