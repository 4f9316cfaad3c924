"""`kv node ...`: run one node, and ask a node whether it is healthy."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from kvstore.cli import output


class InvalidConfig(click.ClickException):
    """A setting, or a combination of settings, the node refuses: one line, exit 2."""

    exit_code = 2


@click.group()
def node() -> None:
    """Run a node, or check one."""


@node.command()
@click.option("--id", "node_id", envvar="KV_NODE_ID", required=True,
              help="This node's unique id (e.g. n1). [env KV_NODE_ID]")
@click.option("--listen", envvar="KV_LISTEN", default="127.0.0.1:7001", show_default=True,
              help="host:port to listen on. [env KV_LISTEN]")
@click.option("--advertise", envvar="KV_ADVERTISE", default="",
              help="host:port other nodes use to reach this one (default: --listen). "
                   "[env KV_ADVERTISE]")
@click.option("--seeds", envvar="KV_SEEDS", default="",
              help="Comma-separated seed addresses, host:port or id=host:port; with static "
                   "membership these are the cluster's members. [env KV_SEEDS]")
@click.option("--data-dir", envvar="KV_DATA_DIR", type=click.Path(path_type=Path),
              default=None, help="Where data lives (default: in memory, lost on exit). "
                                 "[env KV_DATA_DIR]")
@click.option("--restored", is_flag=True, envvar="KV_RESTORED",
              help="The data directory was restored from a backup: records may know less "
                   "than the other replicas saw, so every key takes a fresh actor epoch on "
                   "its next write here (no version dot is ever minted twice). [env "
                   "KV_RESTORED]")
@click.option("--replication-factor", "-n", envvar="KV_REPLICATION_FACTOR", default=3,
              show_default=True, type=click.IntRange(1, 15),
              help="N: replicas per key. Must be the same on every node. "
                   "[env KV_REPLICATION_FACTOR]")
@click.option("--vnodes", envvar="KV_VNODES", default=512, show_default=True,
              type=click.IntRange(1, 4096),
              help="Virtual nodes (tokens) per node. Same on every node. [env KV_VNODES]")
@click.option("--sync", envvar="KV_SYNC", default="full", show_default=True,
              type=click.Choice(["full", "normal", "off"]),
              help="full: fsync every group commit (survives power loss); normal: survives "
                   "kill -9 only; off: no guarantee. [env KV_SYNC]")
@click.option("--timeout-ms", envvar="KV_TIMEOUT_MS", default=2000, show_default=True,
              type=click.IntRange(1, 600_000), help="Default request deadline.")
@click.option("--max-key-bytes", envvar="KV_MAX_KEY_BYTES", default=1024, show_default=True,
              type=click.IntRange(1, 65535))
@click.option("--max-value-bytes", envvar="KV_MAX_VALUE_BYTES", default=1024 * 1024,
              show_default=True, type=click.IntRange(0, 32 * 1024 * 1024))
@click.option("--no-hinted-handoff", is_flag=True, envvar="KV_NO_HINTED_HANDOFF",
              help="Write no hints and deliver none (strict quorums only); for experiments "
                   "that must isolate anti-entropy. [env KV_NO_HINTED_HANDOFF]")
@click.option("--sloppy-quorum", is_flag=True, envvar="KV_SLOPPY_QUORUM",
              help="Let hints on fallback nodes count towards W for writes that ask for "
                   "neither --strict nor --sloppy. Off by default: only the key's own "
                   "replicas count, so R + W > N reads see every acknowledged write; on, "
                   "writes survive more failures but a read may miss them until hinted "
                   "handoff delivers them. [env KV_SLOPPY_QUORUM]")
@click.option("--hint-max-age", envvar="KV_HINT_MAX_AGE", default=3 * 3600.0, show_default=True,
              type=click.FloatRange(min=1),
              help="Seconds a hint is kept before it is dropped; must be below "
                   "--tombstone-grace minus --max-clock-skew. [env KV_HINT_MAX_AGE]")
@click.option("--handoff-rate", envvar="KV_HANDOFF_RATE", default=500.0, show_default=True,
              type=click.FloatRange(min=0), metavar="HINTS_PER_S",
              help="Hints a node delivers per second at most (over all owners), in batches "
                   "of 64, so a replica back from an outage catches up without taking the "
                   "foreground's latency with it; 0: unpaced. Raised when needed so the "
                   "hints pending drain within half --hint-max-age. [env KV_HANDOFF_RATE]")
@click.option("--tombstone-grace", envvar="KV_TOMBSTONE_GRACE", default=10 * 24 * 3600.0,
              show_default=True, type=click.FloatRange(min=0),
              help="Seconds a delete's tombstone is kept before anti-entropy may collect it "
                   "(once every replica of the key holds it). Every replica must complete "
                   "repair within this time. Must exceed twice --max-clock-skew, and "
                   "--hint-max-age by that much. [env KV_TOMBSTONE_GRACE]")
@click.option("--max-clock-skew", envvar="KV_MAX_CLOCK_SKEW", default=60.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds by which node clocks may differ (keep them in sync with NTP); the "
                   "tombstone and hint limits keep this margin. [env KV_MAX_CLOCK_SKEW]")
@click.option("--antientropy-interval", envvar="KV_ANTIENTROPY_INTERVAL", default=60.0,
              show_default=True, type=click.FloatRange(min=0),
              help="Mean seconds between background anti-entropy sessions (one peer each); "
                   "0 turns them off (`kv repair` still runs them). "
                   "[env KV_ANTIENTROPY_INTERVAL]")
@click.option("--repair-rate-keys", envvar="KV_REPAIR_RATE_KEYS", default=1000.0,
              show_default=True, type=click.FloatRange(min=0), metavar="KEYS_PER_S",
              help="Keys an anti-entropy session (background or `kv repair`) moves per "
                   "second at most, 16 at a time, so repairing a diverged replica does not "
                   "take the foreground's latency with it; 0: unpaced (the 8 MiB/s byte "
                   "rate still applies). [env KV_REPAIR_RATE_KEYS]")
@click.option("--gossip-interval", envvar="KV_GOSSIP_INTERVAL", default=0.15, show_default=True,
              type=click.FloatRange(0.01, 60),
              help="Seconds between gossip rounds (heartbeats). With the default phi "
                   "threshold a killed peer is marked down in about 2 s "
                   "(docs/observability.md).")
@click.option("--phi-threshold", envvar="KV_PHI_THRESHOLD", default=5.0, show_default=True,
              type=click.FloatRange(min=0.1),
              help="Failure detector: a peer is down when its phi exceeds this (down after "
                   "about threshold x 2.3 mean heartbeat intervals of silence).")
@click.option("--read-all-chance", envvar="KV_READ_ALL_CHANCE", default=0.1, show_default=True,
              type=click.FloatRange(0, 1),
              help="Share of reads that ask all N replicas (so background read repair "
                   "reaches them all); the rest ask only R.")
@click.option("--metrics-port", envvar="KV_METRICS_PORT", default=0, show_default=True,
              type=click.IntRange(0, 65535),
              help="Serve Prometheus /metrics and the live dashboard over HTTP on this port "
                   "(same host as --listen); 0: off. [env KV_METRICS_PORT]")
@click.option("--chaos", is_flag=True, envvar="KV_CHAOS",
              help="Accept the chaos admin API (kv chaos partition/delay/drop/heal); refused "
                   "otherwise. For test clusters only. [env KV_CHAOS]")
@click.option("--log-format", envvar="KV_LOG_FORMAT", default="json", show_default=True,
              type=click.Choice(["json", "text"]),
              help="json: one JSON object a line (ts, level, node, logger, msg, request_id); "
                   "text: plain lines. [env KV_LOG_FORMAT]")
@click.option("--log-level", envvar="KV_LOG_LEVEL", default="INFO", show_default=True,
              type=output.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Log records at this level and above (any case).")
@click.option("--raft-voters", envvar="KV_RAFT_VOTERS", default="",
              help="Node ids of the Raft metadata group, e.g. n1,n2,n3 (same on every node; "
                   "other nodes forward metadata requests to its leader). It seeds a new "
                   "group; once a node has raft state, the configuration in its log wins "
                   "(change it with kv raft add/promote/remove). [env KV_RAFT_VOTERS]")
@click.option("--raft-bootstrap", is_flag=True, envvar="KV_RAFT_BOOTSTRAP",
              help="Create a new Raft group: a voter whose raft directory is empty may start "
                   "only with this flag, and only if its data directory is new too. Pass it "
                   "when creating a cluster, never to bring back a node that lost its data "
                   "(use --raft-join). [env KV_RAFT_BOOTSTRAP]")
@click.option("--raft-join", is_flag=True, envvar="KV_RAFT_JOIN",
              help="With an empty raft directory: start as a non-voting member that waits to "
                   "be added (kv raft add ID --learner, then kv raft promote ID); it never "
                   "votes before its promotion. The supported way back for a voter that lost "
                   "its raft state. [env KV_RAFT_JOIN]")
@click.option("--peer-listen", envvar="KV_PEER_LISTEN", default="",
              help="A second host:port for internode traffic only, so a firewall can keep "
                   "peers private (default: peers share --listen). [env KV_PEER_LISTEN]")
@click.option("--peer-advertise", envvar="KV_PEER_ADVERTISE", default="",
              help="host:port peers use to reach --peer-listen (default: --peer-listen). "
                   "[env KV_PEER_ADVERTISE]")
@click.option("--tls", "tls_dir", envvar="KV_TLS", type=click.Path(path_type=Path),
              default=None,
              help="Certificate directory (kv certs): mutual TLS between nodes, the peer's "
                   "id taken from its certificate; TLS for clients. SIGHUP reloads the "
                   "files. Without it the node is insecure. [env KV_TLS]")
@click.option("--auth", is_flag=True, envvar="KV_AUTH",
              help="Clients must authenticate (token from --user/--password, or a client "
                   "certificate) and roles are enforced; needs --tls and --raft-voters. "
                   "[env KV_AUTH]")
@click.option("--token-ttl", envvar="KV_TOKEN_TTL", default=900.0, show_default=True,
              type=click.FloatRange(1, 7 * 24 * 3600),
              help="Seconds a login token stays valid. [env KV_TOKEN_TTL]")
@click.option("--join", "join", default="", metavar="HOST:PORT[,...]", envvar="KV_JOIN",
              help="Join a running cluster through these nodes (added to --seeds): start "
                   "JOINING, stream the ranges this node will own from their replicas, then "
                   "serve them (docs/membership.md). A node that already joined ignores it; "
                   "one that crashed while joining resumes. [env KV_JOIN]")
@click.option("--replace", "replace", default="", metavar="NODE_ID", envvar="KV_REPLACE",
              help="With --join: take the place of NODE_ID, a member that is down for good. "
                   "This node takes its tokens, streams its ranges from the surviving "
                   "replicas, then NODE_ID is marked LEFT (docs/membership.md; `kv node "
                   "replace` follows it). [env KV_REPLACE]")
@click.option("--raft-snapshot-every", envvar="KV_RAFT_SNAPSHOT_EVERY", default=1000,
              show_default=True, type=click.IntRange(min=1), metavar="ENTRIES",
              help="Snapshot the Raft state machine (and compact the log) every ENTRIES "
                   "applied entries (docs/raft.md). [env KV_RAFT_SNAPSHOT_EVERY]")
@click.option("--ring-delay", type=float, default=None, envvar="KV_RING_DELAY",
              help="Seconds to wait after announcing a join or decommission before streaming, "
                   "so writes that started before every node knew have finished (default: "
                   "2 gossip intervals + the request timeout). [env KV_RING_DELAY]")
def start(node_id: str, listen: str, advertise: str, seeds: str, data_dir: Path | None,
          replication_factor: int, vnodes: int, sync: str, timeout_ms: int, max_key_bytes: int,
          max_value_bytes: int, no_hinted_handoff: bool, sloppy_quorum: bool,
          hint_max_age: float, handoff_rate: float, tombstone_grace: float,
          antientropy_interval: float, repair_rate_keys: float,
          gossip_interval: float, phi_threshold: float, read_all_chance: float,
          log_level: str, raft_voters: str = "", raft_bootstrap: bool = False,
          raft_join: bool = False, restored: bool = False,
          max_clock_skew: float = 60.0, join: str = "",
          ring_delay: float | None = None, metrics_port: int = 0, chaos: bool = False,
          log_format: str = "json", peer_listen: str = "", peer_advertise: str = "",
          tls_dir: Path | None = None, auth: bool = False, token_ttl: float = 900.0,
          replace: str = "", raft_snapshot_every: int = 1000) -> None:
    """Run a node in the foreground until SIGTERM or Ctrl-C.

    Exits 1 with one line if the node must not start (e.g. a Raft voter that lost its raft
    state: the line says how to bring it back; a damaged state file), 2 on invalid
    options."""
    from kvstore.node.config import NodeConfig
    from kvstore.node.server import run_node

    logging.getLogger().setLevel(log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.setLevel(log_level.upper())
    config = NodeConfig(
        node_id=node_id, listen=listen, advertise=advertise,
        seeds=[s for s in (seeds + "," + join).split(",") if s.strip()], data_dir=data_dir,
        restored=restored, join=bool(join.strip()), replace=replace.strip(),
        ring_delay=ring_delay,
        replication_factor=replication_factor, vnodes=vnodes, sync=sync,
        timeout_ms=timeout_ms, max_key_bytes=max_key_bytes, max_value_bytes=max_value_bytes,
        hinted_handoff=not no_hinted_handoff, sloppy_quorum=sloppy_quorum,
        hint_max_age_ms=int(hint_max_age * 1000), handoff_rate=handoff_rate,
        tombstone_grace_ms=int(tombstone_grace * 1000), antientropy_interval=antientropy_interval,
        repair_rate_keys=repair_rate_keys,
        max_clock_skew_ms=int(max_clock_skew * 1000),
        gossip_interval=gossip_interval, phi_threshold=phi_threshold,
        read_all_chance=read_all_chance,
        raft_voters=[v.strip() for v in raft_voters.split(",") if v.strip()],
        raft_bootstrap=raft_bootstrap, raft_join=raft_join,
        raft_snapshot_every=raft_snapshot_every,
        metrics_port=metrics_port, chaos=chaos,
        peer_listen=peer_listen, peer_advertise=peer_advertise, tls_dir=tls_dir, auth=auth,
        token_ttl=token_ttl,
    )
    try:
        config.validate()
        from kvstore.services.gossip import parse_seed

        for seed in config.seeds:
            parse_seed(seed)
    except ValueError as exc:
        raise InvalidConfig(str(exc)) from None
    from kvstore.services.raft_start import RaftStartRefused
    from kvstore.services.streaming import MoveRefused
    from kvstore.storage import StorageError
    from kvstore.transport.tls import TlsError

    try:
        from kvstore.node import logs

        _run(run_node(config, logs.install(node_id, log_format, log_level.upper())))
    except (RaftStartRefused, MoveRefused, StorageError, TlsError) as exc:  # one line, exit 1
        raise click.ClickException(str(exc)) from None


def _run(coro) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


@node.command()
@click.option("--node", "--endpoint", "endpoint", default=None, metavar="HOST:PORT",
              help="The node to ask (--endpoint is the old name). Default: the endpoints of "
                   "--endpoints / KV_ENDPOINTS in turn, until one answers.")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for each node's answer.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"node": HOST:PORT, "status": SERVING|NOT_SERVING|..., '
                   '"unreachable": [...]}.')
@click.option("--tls", "tls_dir", envvar="KV_TLS", type=click.Path(path_type=Path),
              default=None, help="The node runs with --tls: trust DIR/ca.crt. [env KV_TLS]")
@click.option("--cert", default=None, metavar="NAME",
              help="Present DIR/NAME.crt (a --tls port without --peer-listen asks for one).")
@click.pass_context
def health(ctx: click.Context, endpoint: str | None, timeout: float, as_json: bool,
           tls_dir: Path | None = None, cert: str | None = None) -> None:
    """Exit 0 if the node reports SERVING on the standard gRPC health service, else 1.

    Without --node, asks the endpoints in order and reports the first that answers
    (an unreachable one is skipped, as `kv get` fails over).
    """
    import json

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kvstore.cli.main import default_endpoints
    from kvstore.client import parse_endpoints
    from kvstore.node.local_cluster import health_channel

    if endpoint is not None:
        candidates = parse_endpoints(endpoint)[:1]
    else:
        candidates = parse_endpoints(getattr(ctx.obj, "endpoints", None) or default_endpoints())
    unreachable: list[str] = []
    for address in candidates:
        with health_channel(address, tls_dir, cert) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""),
                                    timeout=timeout).status
            except grpc.RpcError as exc:
                unreachable.append(f"{address} ({exc.code().name})")
                continue
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        if as_json:
            click.echo(json.dumps({"node": address, "status": name,
                                   "unreachable": unreachable}))
        else:
            for u in unreachable:
                click.echo(f"{u.split(' ')[0]}: unreachable", err=True)
            click.echo(f"{address}: {name}")
        sys.exit(0 if status == health_pb2.HealthCheckResponse.SERVING else 1)
    if as_json:
        click.echo(json.dumps({"node": None, "status": "UNREACHABLE",
                               "unreachable": unreachable}))
    else:
        click.echo(f"Error: no node answered: {', '.join(unreachable)}", err=True)
    sys.exit(1)
