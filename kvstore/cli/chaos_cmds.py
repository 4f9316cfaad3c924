"""`kv chaos ...`: break the cluster on purpose.

Network faults (partition, delay, drop) are installed in the nodes' own transports through
the chaos admin API (chaos.proto; nodes accept it only with --chaos, which `kv cluster up`
passes). Each fault expires (`--for`, default 5 minutes), so a forgotten one heals itself.
Process faults (kill, pause, resume) signal the processes of the local cluster recorded in
DATA_DIR/cluster.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import grpc

from kvstore._proto import chaos_pb2, chaos_pb2_grpc
from kvstore.cli import output

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', '1h' or a number of seconds -> seconds."""
    match = DURATION_RE.match(text or "")
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 10s, 500ms, 2m)")
    value = float(match.group(1))
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    seconds = value * scale
    if not 0 < seconds <= 3600:
        raise click.BadParameter(f"{text!r}: a fault lasts more than 0 and at most 1 hour")
    return seconds


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def _members(s) -> dict[str, str]:
    """id -> where this CLI reaches every member: the endpoint given for it when there is
    one (from a host, a compose node's own address nN:7001 does not resolve), else the
    address the first answering endpoint knows it by."""
    from kvstore.cli.observe_cmds import reachable_addresses

    info = s.client().info()
    return reachable_addresses(s, {m.id: m.address for m in info.members})


def _ids(text: str, members: dict[str, str], what: str) -> list[str]:
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise click.BadParameter(f"{what}: name at least one node (e.g. n1,n2)")
    unknown = [i for i in ids if i not in members]
    if unknown:
        raise click.BadParameter(f"{what}: unknown node {', '.join(unknown)}; members are "
                                 f"{', '.join(sorted(members))}")
    return ids


def _call(address: str, method: str, request, timeout: float, s=None):
    """One chaos call; `s` (the CLI settings) brings TLS and credentials."""
    with (s.channel(address) if s is not None else grpc.insecure_channel(address)) as channel:
        stub = chaos_pb2_grpc.ChaosStub(channel)
        try:
            metadata = s.call_metadata(channel) if s is not None else ()
            return getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{address}: {exc.code().name}: {exc.details()}"
                                       ) from None


def _inject(s, plan: dict[str, chaos_pb2.FaultRequest], members: dict[str, str],
            as_json: bool, summary: str) -> None:
    states = {}
    for node_id, request in plan.items():
        states[node_id] = _call(members[node_id], "Inject", request, s.timeout, s)
    if as_json:
        output.print_json({"fault": summary, "nodes": {
            n: [f.description for f in st.faults] for n, st in states.items()}})
        return
    click.echo(f"OK: {summary}")
    for node_id, state in states.items():
        click.echo(f"  {node_id}: {len(state.faults)} active fault(s); newest: "
                   f"{state.faults[-1].description if state.faults else '-'}")


def _fault(kind: str, peers: list[str], seconds: float, **kw) -> chaos_pb2.FaultRequest:
    return chaos_pb2.FaultRequest(kind=kind, peers=peers, duration_s=seconds, **kw)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)


def for_option(fn):
    return click.option("--for", "seconds", type=Duration(), default="5m", show_default=True,
                        help="How long the fault lasts before it heals itself "
                             "(e.g. 30s, 500ms, 2m; at most 1h).")(fn)


@click.group()
def chaos() -> None:
    """Inject faults: partitions, delays, drops (inside the nodes), kill and pause (local
    cluster processes). Every network fault expires; `kv chaos heal` ends them all."""


@chaos.command()
@click.argument("sides", nargs=-1, required=True)
@click.option("--oneway", is_flag=True,
              help="Cut only messages from the left side to the right side; the right side "
                   "still reaches the left one.")
@for_option
@json_option
@click.pass_obj
def partition(s, sides: tuple[str, ...], oneway: bool, seconds: float, as_json: bool) -> None:
    """Partition the cluster: `kv chaos partition n1,n2 / n3`. With one side only
    (`kv chaos partition n3`), it is cut from every other member."""
    members = _members(s)
    text = " ".join(sides)
    left_text, slash, right_text = text.partition("/")
    left = _ids(left_text, members, "left side")
    right = (_ids(right_text, members, "right side") if slash and right_text.strip()
             else [m for m in members if m not in left])
    both = set(left) & set(right)
    if both:
        raise click.BadParameter(f"{', '.join(sorted(both))} on both sides")
    if not right:
        raise click.BadParameter("the right side is empty: nothing to cut from")
    note = f"{','.join(left)} / {','.join(right)}" + (" one-way" if oneway else "")
    plan = {n: _fault("partition", right, seconds, note=note) for n in left}
    if not oneway:
        plan.update({n: _fault("partition", left, seconds, note=note) for n in right})
    _inject(s, plan, members, as_json,
            f"partition {note} for {seconds:g} s")


def _link_fault(s, node: str, seconds: float, kind: str, as_json: bool, summary: str,
                **kw) -> None:
    members = _members(s)
    [node] = _ids(node, members, "node")
    others = [m for m in members if m != node]
    plan = {node: _fault(kind, others, seconds, **kw)}
    plan.update({m: _fault(kind, [node], seconds, **kw) for m in others})
    _inject(s, plan, members, as_json, summary)


@chaos.command()
@click.argument("node")
@click.option("--ms", type=click.FloatRange(0, 60_000), required=True,
              help="Added latency per call across the node's links, in milliseconds.")
@click.option("--jitter", type=click.FloatRange(0, 60_000), default=0.0, show_default=True,
              help="Uniform +- jitter in milliseconds.")
@for_option
@json_option
@click.pass_obj
def delay(s, node: str, ms: float, jitter: float, seconds: float, as_json: bool) -> None:
    """Slow every internode call to and from NODE by MS +- JITTER milliseconds."""
    if ms + jitter <= 0:
        raise click.BadParameter("--ms plus --jitter must be above 0")
    _link_fault(s, node, seconds, "delay", as_json,
                f"delay {ms:g}±{jitter:g} ms on {node}'s links for {seconds:g} s",
                delay_ms=ms, jitter_ms=jitter)


@chaos.command()
@click.argument("node")
@click.option("--rate", type=click.FloatRange(0, 1, min_open=True), required=True,
              help="Share of internode batches to and from NODE that are lost (0-1].")
@for_option
@json_option
@click.pass_obj
def drop(s, node: str, rate: float, seconds: float, as_json: bool) -> None:
    """Lose a share of the internode messages to and from NODE."""
    _link_fault(s, node, seconds, "drop", as_json,
                f"drop {rate:.0%} on {node}'s links for {seconds:g} s", rate=rate)


@chaos.command()
@json_option
@click.pass_obj
def heal(s, as_json: bool) -> None:
    """Remove every network fault on every member (processes: see `kv chaos resume`)."""
    members = _members(s)
    healed, errors = {}, {}
    for node_id, address in sorted(members.items()):
        try:
            healed[node_id] = _call(address, "Heal", chaos_pb2.HealRequest(), s.timeout, s).healed
        except click.ClickException as exc:
            errors[node_id] = exc.message
    if as_json:
        output.print_json({"healed": healed, "errors": errors})
    else:
        total = sum(healed.values())
        click.echo(f"OK: healed {total} fault(s) on {len(healed)} node(s)")
        for node_id, err in errors.items():
            click.echo(f"  {node_id}: not reached ({err})", err=True)
    if errors:
        sys.exit(1)


@chaos.command(name="status")
@json_option
@click.pass_obj
def chaos_status(s, as_json: bool) -> None:
    """Active faults and recent chaos events on every member."""
    members = _members(s)
    out = {}
    for node_id, address in sorted(members.items()):
        try:
            state = _call(address, "State", chaos_pb2.ChaosStateRequest(), s.timeout, s)
            out[node_id] = {"faults": [{"description": f.description,
                                        "expires_in_s": f.expires_in_s} for f in state.faults],
                            "events": [{"at": e.at, "text": e.text} for e in state.events]}
        except click.ClickException as exc:
            out[node_id] = {"error": exc.message}
    if as_json:
        output.print_json({"nodes": out})
        return
    table = output.table("node", "active faults", "last event", title="chaos")
    for node_id, st in out.items():
        if "error" in st:
            table.add_row(node_id, f"[red]{st['error']}[/red]", "")
            continue
        faults = "\n".join(f"{f['description']} ({f['expires_in_s']:.0f} s left)"
                           for f in st["faults"]) or "-"
        table.add_row(node_id, faults, st["events"][-1]["text"] if st["events"] else "-")
    output.console.print(table)


# -- processes of a local cluster -----------------------------------------------------
def _local_pid(data_dir: Path, node: str) -> int:
    path = data_dir / "cluster.json"
    if not path.exists():
        raise click.ClickException(
            f"no local cluster recorded in {path}: kill and pause act on the processes of "
            "`kv cluster up` (for a compose cluster add --compose docker-compose.yml)")
    nodes = {n["id"]: n for n in json.loads(path.read_text())["nodes"]}
    if node not in nodes:
        raise click.BadParameter(f"no node {node!r} in {path}; nodes are "
                                 f"{', '.join(sorted(nodes))}")
    pid = int(nodes[node].get("pid") or 0)
    if not pid or not _alive(pid):
        raise click.ClickException(f"{node} is not running (pid {pid or 'unknown'})")
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def data_dir_option(fn):
    fn = click.option("--compose-cli", "compose_cli", envvar="KV_COMPOSE", default=None,
                      metavar="COMMAND",
                      help="With --compose: the compose front-end to run, e.g. "
                           "docker-compose (default: `docker compose` if it answers, else "
                           "`docker-compose`, as make docker-up picks).")(fn)
    fn = click.option("--compose", "compose_file", type=click.Path(path_type=Path),
                      default=None, metavar="FILE",
                      help="Act on the docker compose service NODE of this compose file "
                           "(compose kill / pause / unpause) instead of a local cluster's "
                           "process. The project is COMPOSE_PROJECT_NAME, else the file's "
                           "directory name as make docker-up forms it.")(fn)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
                        show_default=True,
                        help="The local cluster's directory (its cluster.json).")(fn)


def _answers(command: list[str]) -> bool:
    try:
        return subprocess.run([*command, "version"], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def compose_front_end(forced: str | None = None) -> list[str]:
    """The compose command, chosen as scripts/docker_cluster.sh (make docker-up) chooses:
    `forced` (KV_COMPOSE) if given, else `docker compose` (the v2 plugin) if it answers,
    else `docker-compose` (v1)."""
    if forced and forced.strip():
        return forced.split()
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and _answers(command):
            return command
    raise click.ClickException("neither `docker compose` nor `docker-compose` answers: "
                               "install one of them (or name it with --compose-cli)")


def compose_project(compose_file: Path) -> str:
    """COMPOSE_PROJECT_NAME, else the compose file's directory name as compose forms it
    (lower case; letters, digits, '-' and '_'): the project `make docker-up`
    (docker_cluster.sh) and a plain compose command in that directory address."""
    named = os.environ.get("COMPOSE_PROJECT_NAME", "").strip()
    if named:
        return named
    directory = compose_file.resolve().parent.name
    return re.sub(r"[^-_a-z0-9]", "", directory.lower()) or "kvstore"


def _compose(compose_file: Path, forced: str | None, *args: str) -> list[str]:
    """The compose command line for `args` on `compose_file`."""
    if not compose_file.exists():
        raise click.BadParameter(f"{compose_file} does not exist", param_hint="--compose")
    return [*compose_front_end(forced), "-p", compose_project(compose_file),
            "-f", str(compose_file), *args]


def _run_compose(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise click.ClickException(f"{' '.join(command)}: {exc}") from None
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(command)} failed: "
                                   f"{(done.stderr or done.stdout).strip()}")


def _restart_hint(node: str, data_dir: Path) -> str:
    arg = "" if data_dir == Path("data") else f" --data-dir {shlex.quote(str(data_dir))}"
    return f"kv cluster start {node}{arg}"


@chaos.command()
@click.argument("node")
@data_dir_option
@json_option
def kill(node: str, data_dir: Path, compose_file: Path | None, compose_cli: str | None,
         as_json: bool) -> None:
    """SIGKILL a node of the local cluster (`kv cluster start NODE` brings it back), or
    with --compose its container (compose kill; compose start NODE brings it back)."""
    if compose_file is not None:
        command = _compose(compose_file, compose_cli, "kill", node)
        _run_compose(command)
        start = " ".join(shlex.quote(a) for a in [*command[:-2], "start", node])
        output.print_json({"killed": node, "compose": str(compose_file), "start": start}) \
            if as_json else click.echo(f"OK: killed container {node}; start it again with: "
                                       f"{start}")
        return
    pid = _local_pid(data_dir, node)
    os.kill(pid, signal.SIGKILL)
    start = _restart_hint(node, data_dir)
    if as_json:
        output.print_json({"killed": node, "pid": pid, "start": start})
    else:
        click.echo(f"OK: killed {node} (pid {pid}); start it again with: {start}")


@chaos.command()
@click.argument("node")
@click.option("--for", "seconds", type=Duration(), default="10s", show_default=True,
              help="Resume it after this long (a forgotten pause ends by itself).")
@data_dir_option
@json_option
def pause(node: str, seconds: float, data_dir: Path, compose_file: Path | None,
          compose_cli: str | None, as_json: bool) -> None:
    """SIGSTOP a node of the local cluster (or with --compose pause its container), and
    resume it after --for."""
    if compose_file is not None:
        _run_compose(_compose(compose_file, compose_cli, "pause", node))
        unpause = _compose(compose_file, compose_cli, "unpause", node)
        subprocess.Popen([sys.executable, "-c",
                          "import subprocess, sys, time; time.sleep(float(sys.argv[1])); "
                          "subprocess.run(sys.argv[2:], capture_output=True)", str(seconds),
                          *unpause], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        output.print_json({"paused": node, "resume_in_s": seconds}) if as_json else \
            click.echo(f"OK: paused container {node}; it resumes in {seconds:g} s")
        return
    pid = _local_pid(data_dir, node)
    os.kill(pid, signal.SIGSTOP)
    # A detached helper resumes it, so this command returns at once.
    subprocess.Popen([sys.executable, "-c",
                      "import os, signal, sys, time; time.sleep(float(sys.argv[2])); "
                      "os.kill(int(sys.argv[1]), signal.SIGCONT)", str(pid), str(seconds)],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if as_json:
        output.print_json({"paused": node, "pid": pid, "resume_in_s": seconds})
    else:
        click.echo(f"OK: paused {node} (pid {pid}); it resumes in {seconds:g} s")


@chaos.command()
@click.argument("node")
@data_dir_option
@json_option
def resume(node: str, data_dir: Path, compose_file: Path | None, compose_cli: str | None,
           as_json: bool) -> None:
    """SIGCONT a paused node of the local cluster now (--compose: unpause its container)."""
    if compose_file is not None:
        _run_compose(_compose(compose_file, compose_cli, "unpause", node))
        output.print_json({"resumed": node}) if as_json else \
            click.echo(f"OK: resumed container {node}")
        return
    pid = _local_pid(data_dir, node)
    os.kill(pid, signal.SIGCONT)
    if as_json:
        output.print_json({"resumed": node, "pid": pid})
    else:
        click.echo(f"OK: resumed {node} (pid {pid})")

