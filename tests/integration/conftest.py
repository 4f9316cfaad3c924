"""Real node processes on 127.0.0.1, on free ports, always stopped afterwards."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kvstore.node.local_cluster import LocalCluster


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def start_cluster(tmp_path, nodes: int = 3, **kwargs) -> LocalCluster:
    cluster = LocalCluster(tmp_path / "data", ports=free_ports(nodes), **kwargs)
    cluster.start()
    try:
        cluster.wait_healthy(timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("shared"))
    try:
        yield c
    finally:
        c.stop()


def kv_in_process(eps: str, *args: str):
    """`kv --endpoints EPS ...` run in this process, as the entry point runs it (exit
    code, stdout, stderr): saves a Python start per call. A CompletedProcess."""
    import contextlib
    import io
    import subprocess

    from kvstore.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--endpoints", eps, *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
