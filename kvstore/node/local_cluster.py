"""A local cluster of real node processes on one machine (`kv cluster up`, tests).

Each node is `python -m kvstore node start ...` with its own data directory and log file.
The cluster's description (ids, addresses, pids) is written to <data>/cluster.json so
other commands find it, and `kv cluster down` can stop a detached cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Interrupted(Exception):
    """Start-up was cancelled (`cancelled()` turned true) at a point where every process
    started so far is recorded in `procs`, so `stop()` finds them all."""


@dataclass
class NodeProcess:
    id: str
    address: str
    data_dir: str
    log: str
    pid: int = 0
    metrics_port: int = 0   # HTTP /metrics and dashboard (0: none)
    peer_address: str = ""  # a separate peer listener (--peer-listen), if any


class LocalCluster:
    def __init__(self, data_root: Path, *, nodes: int = 3, host: str = "127.0.0.1",
                 base_port: int = 7001, replication_factor: int = 3,
                 extra_args: list[str] | None = None, ports: list[int] | None = None,
                 raft_bootstrap: bool = False, metrics_ports: list[int] | None = None,
                 chaos: bool = False, tls_dir: Path | None = None,
                 peer_ports: list[int] | None = None) -> None:
        """`raft_bootstrap`: the cluster is being created now; each node gets
        --raft-bootstrap on its first start here (a restart never does: a voter that lost
        its raft state must refuse, see docs/raft.md). `tls_dir`: nodes run with --tls
        (certificates n1.. made beforehand); `peer_ports`: separate peer listeners."""
        self.tls_dir = Path(tls_dir) if tls_dir else None
        self.data_root = Path(data_root)
        ports = ports or [base_port + i for i in range(nodes)]
        self.nodes = [
            NodeProcess(id=f"n{i + 1}", address=f"{host}:{port}",
                        data_dir=str(self.data_root / f"n{i + 1}"),
                        log=str(self.data_root / f"n{i + 1}" / "node.log"))
            for i, port in enumerate(ports)
        ]
        for node, metrics_port in zip(self.nodes, metrics_ports or [], strict=False):
            node.metrics_port = metrics_port
        self.chaos = chaos
        for node, peer_port in zip(self.nodes, peer_ports or [], strict=False):
            node.peer_address = f"{host}:{peer_port}"
        self.replication_factor = replication_factor
        self.extra_args = extra_args or []
        self.bootstrap_pending = {n.id for n in self.nodes} if raft_bootstrap else set()
        self.procs: dict[str, subprocess.Popen] = {}
        self.supervisor: int | None = None  # pid of a foreground `kv cluster up`, if any

    @property
    def file(self) -> Path:
        return self.data_root / "cluster.json"

    def seeds(self) -> str:
        return ",".join(f"{n.id}={n.peer_address or n.address}" for n in self.nodes)

    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes]

    def command(self, node: NodeProcess, extra: list[str] | None = None) -> list[str]:
        bootstrap = ["--raft-bootstrap"] if node.id in self.bootstrap_pending else []
        if node.metrics_port:
            bootstrap += ["--metrics-port", str(node.metrics_port)]
        if self.chaos:
            bootstrap.append("--chaos")
        security = ["--peer-listen", node.peer_address] if node.peer_address else []
        if self.tls_dir is not None:
            security += ["--tls", str(self.tls_dir)]
        return [
            sys.executable, "-m", "kvstore", "node", "start", "--id", node.id,
            "--listen", node.address, "--seeds", self.seeds(), "--data-dir", node.data_dir,
            "--replication-factor", str(self.replication_factor), *self.extra_args,
            *security, *bootstrap, *(extra or []),
        ]

    def start_node(self, node_id: str, extra_args: list[str] | None = None) -> None:
        """Start (or restart) one node; `extra_args` apply to this start only."""
        node = self.node(node_id)
        Path(node.data_dir).mkdir(parents=True, exist_ok=True)
        log = open(node.log, "ab")  # noqa: SIM115 - the child process owns it
        proc = subprocess.Popen(self.command(node, extra_args), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.bootstrap_pending.discard(node_id)
        node.pid = proc.pid
        self.procs[node_id] = proc
        self.save()

    def start(self, node_args: dict[str, list[str]] | None = None,
              cancelled: Callable[[], bool] | None = None) -> None:
        """Start every node; `node_args` adds arguments for some nodes (this start only).
        `cancelled` is checked between nodes: Interrupted when it turns true."""
        self.data_root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            if cancelled and cancelled():
                raise Interrupted
            self.start_node(node.id, (node_args or {}).get(node.id))

    def node(self, node_id: str) -> NodeProcess:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this cluster")

    def save(self) -> None:
        """Write cluster.json: the nodes (with the command that restarts each, as
        `kv cluster start` uses it: never --raft-bootstrap) and the foreground supervisor."""
        nodes = []
        for n in self.nodes:
            restart = [a for a in self.command(n) if a != "--raft-bootstrap"]
            nodes.append({**asdict(n), "restart": restart})
        data = {"nodes": nodes, "supervisor": self.supervisor}
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.file)

    def wait_healthy(self, timeout: float = 30.0, nodes: list[str] | None = None,
                     progress=None, cancelled: Callable[[], bool] | None = None) -> None:
        """Block until every node reports SERVING; raise TimeoutError naming the laggards,
        Interrupted as soon as `cancelled()` is true (checked before every probe)."""
        deadline = time.monotonic() + timeout
        waiting = set(nodes or [n.id for n in self.nodes])
        while waiting:
            for node_id in sorted(waiting):
                if cancelled and cancelled():
                    raise Interrupted
                proc = self.procs.get(node_id)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"node {node_id} exited with code {proc.returncode}; "
                                       f"see {self.node(node_id).log}:\n{self.log_tail(node_id)}")
                if is_serving(self.node(node_id).address, tls_dir=self.tls_dir,
                              cert=node_id if self.tls_dir else None):
                    waiting.discard(node_id)
                    if progress:
                        progress(node_id)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(waiting)} not healthy after {timeout:.0f} s")
            if waiting:
                time.sleep(0.1)

    def log_tail(self, node_id: str, lines: int = 15) -> str:
        try:
            text = Path(self.node(node_id).log).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node_id, None)
        if proc is None:
            return
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node started here, and any restarted since by `kv cluster start`
        (recorded in cluster.json); remove cluster.json."""
        children = {proc.pid for proc in self.procs.values()}
        try:
            recorded = json.loads(self.file.read_text())["nodes"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = []
        others = [int(n.get("pid") or 0) for n in recorded]
        others = [pid for pid in others if pid and pid not in children and _is_kvstore(pid)]
        for pid in others:
            _signal(pid, signal.SIGTERM)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for pid in others:
            _wait_gone(pid, max(0.1, deadline - time.monotonic()))
        self.file.unlink(missing_ok=True)


def health_channel(address: str, tls_dir: Path | None = None,
                   cert: str | None = None) -> grpc.Channel:
    """A channel for health checks: TLS trusting tls_dir/ca.crt when given, presenting
    tls_dir/CERT.crt when named (a port shared with peers asks every caller for one)."""
    if tls_dir is None:
        return grpc.insecure_channel(address)
    root = (Path(tls_dir) / "ca.crt").read_bytes()
    if cert:
        creds = grpc.ssl_channel_credentials(root, (Path(tls_dir) / f"{cert}.key").read_bytes(),
                                             (Path(tls_dir) / f"{cert}.crt").read_bytes())
    else:
        creds = grpc.ssl_channel_credentials(root)
    return grpc.secure_channel(address, creds)


def is_serving(address: str, timeout: float = 0.5, tls_dir: Path | None = None,
               cert: str | None = None) -> bool:
    try:
        with health_channel(address, tls_dir, cert) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` is no longer a live kvstore process; SIGKILL it after `timeout`."""
    deadline = time.monotonic() + timeout
    while _is_kvstore(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_kvstore(pid):
        _signal(pid, signal.SIGKILL)
        return False
    return True


def cluster_alive(data_root: Path) -> bool:
    """Is any process recorded in <data_root>/cluster.json (a node or the foreground
    supervisor) still running? False for a missing or unreadable file."""
    try:
        data = json.loads((Path(data_root) / "cluster.json").read_text())
        pids = [int(n.get("pid") or 0) for n in data["nodes"]]
        supervisor = int(data.get("supervisor") or 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return (any(pid and _is_kvstore(pid) for pid in pids)
            or bool(supervisor and _is_supervisor(supervisor)))


def read_cluster(data_root: Path) -> dict:
    """<data_root>/cluster.json, or FileNotFoundError naming it."""
    path = Path(data_root) / "cluster.json"
    if not path.exists():
        raise FileNotFoundError(f"no running cluster recorded in {path}")
    return json.loads(path.read_text())


def _write_cluster(data_root: Path, data: dict) -> None:
    path = Path(data_root) / "cluster.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def stop_node(data_root: Path, node_id: str, *, kill: bool = False,
              timeout: float = 10.0) -> int | None:
    """Stop one node of a local cluster (SIGTERM, or SIGKILL with `kill`); the pid it had,
    None if it was not running. Its entry stays in cluster.json for `start_node`."""
    data = read_cluster(data_root)
    node = _find(data, node_id)
    pid = int(node.get("pid") or 0)
    if not pid or not _is_kvstore(pid):
        return None
    _signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
    _wait_gone(pid, timeout)
    return pid


def start_node(data_root: Path, node_id: str) -> int:
    """Start one stopped node of a local cluster again, with the command it was started
    with (never --raft-bootstrap); returns its new pid. Refuses a node that is running."""
    data = read_cluster(data_root)
    node = _find(data, node_id)
    pid = int(node.get("pid") or 0)
    if pid and _is_kvstore(pid):
        raise RuntimeError(f"{node_id} is running (pid {pid}); stop it first")
    argv = node.get("restart")
    if not argv:
        raise RuntimeError(f"{Path(data_root) / 'cluster.json'} does not say how to start "
                           f"{node_id} (written by an older kvstore): restart the cluster")
    with open(node["log"], "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    node["pid"] = proc.pid
    _write_cluster(data_root, data)
    return proc.pid


def _find(data: dict, node_id: str) -> dict:
    for node in data["nodes"]:
        if node["id"] == node_id:
            return node
    ids = ", ".join(n["id"] for n in data["nodes"])
    raise KeyError(f"no node {node_id!r} in this cluster (nodes: {ids})")


def stop_detached(data_root: Path, timeout: float = 10.0) -> list[str]:
    """Stop the cluster recorded in <data_root>/cluster.json; returns the ids stopped.

    A foreground `kv cluster up` supervising it is asked to stop (SIGTERM): it stops its
    nodes and exits. Node processes still alive afterwards are stopped here."""
    path = Path(data_root) / "cluster.json"
    data = json.loads(path.read_text())
    nodes = data["nodes"]
    supervisor = int(data.get("supervisor") or 0)
    running = [n["id"] for n in nodes if int(n.get("pid") or 0)
               and _is_kvstore(int(n["pid"]))]
    if supervisor and supervisor != os.getpid() and _is_supervisor(supervisor):
        _signal(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout + 5
        while path.exists() and _is_supervisor(supervisor) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not path.exists():
            return running
        data = json.loads(path.read_text())
        nodes = data["nodes"]
    stopped = []
    for node in nodes:
        pid = int(node.get("pid") or 0)
        if pid and _is_kvstore(pid):
            os.kill(pid, signal.SIGTERM)
            stopped.append((node["id"], pid))
    deadline = time.monotonic() + timeout
    for _, pid in stopped:
        while _is_kvstore(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_kvstore(pid):
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return [node_id for node_id, _ in stopped]


def _is_supervisor(pid: int) -> bool:
    """Is `pid` a live foreground `kv cluster up` (guards against a reused pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"\x00cluster\x00up" in cmdline and _is_kvstore_alive(pid)


def _is_kvstore_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.split(") ")[-1].startswith("Z")


def _is_kvstore(pid: int) -> bool:
    """Is `pid` alive and one of our nodes (guards against a reused pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    if not cmdline:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    if stat.split(") ")[-1].startswith("Z"):
        return False
    return b"kvstore" in cmdline
