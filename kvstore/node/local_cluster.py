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
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class NodeProcess:
    id: str
    address: str
    data_dir: str
    log: str
    pid: int = 0
    peer_address: str = ""  # a separate peer listener (--peer-listen), if any


class LocalCluster:
    def __init__(self, data_root: Path, *, nodes: int = 3, host: str = "127.0.0.1",
                 base_port: int = 7001, replication_factor: int = 3,
                 extra_args: list[str] | None = None, ports: list[int] | None = None,
                 raft_bootstrap: bool = False, tls_dir: Path | None = None,
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
        for node, peer_port in zip(self.nodes, peer_ports or [], strict=False):
            node.peer_address = f"{host}:{peer_port}"
        self.replication_factor = replication_factor
        self.extra_args = extra_args or []
        self.bootstrap_pending = {n.id for n in self.nodes} if raft_bootstrap else set()
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def file(self) -> Path:
        return self.data_root / "cluster.json"

    def seeds(self) -> str:
        return ",".join(f"{n.id}={n.peer_address or n.address}" for n in self.nodes)

    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes]

    def command(self, node: NodeProcess, extra: list[str] | None = None) -> list[str]:
        bootstrap = ["--raft-bootstrap"] if node.id in self.bootstrap_pending else []
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

    def start(self, node_args: dict[str, list[str]] | None = None) -> None:
        """Start every node; `node_args` adds arguments for some nodes (this start only)."""
        self.data_root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.start_node(node.id, (node_args or {}).get(node.id))

    def node(self, node_id: str) -> NodeProcess:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this cluster")

    def save(self) -> None:
        self.file.write_text(json.dumps({"nodes": [asdict(n) for n in self.nodes]}, indent=2))

    def wait_healthy(self, timeout: float = 30.0, nodes: list[str] | None = None,
                     progress=None) -> None:
        """Block until every node reports SERVING; raise TimeoutError naming the laggards."""
        deadline = time.monotonic() + timeout
        waiting = set(nodes or [n.id for n in self.nodes])
        while waiting:
            for node_id in sorted(waiting):
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


def stop_detached(data_root: Path, timeout: float = 10.0) -> list[str]:
    """Stop the processes listed in <data_root>/cluster.json; returns the ids stopped."""
    path = Path(data_root) / "cluster.json"
    nodes = json.loads(path.read_text())["nodes"]
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
