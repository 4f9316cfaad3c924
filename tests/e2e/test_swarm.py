"""The Docker Swarm stack (deploy/swarm/stack.yml) comes up on the local engine and serves.

Needs a docker engine that can enter swarm mode. The test initialises a single-node swarm
when the engine is in none (and leaves it again afterwards), deploys the stack under a
name of its own on free host ports, writes and reads at QUORUM and ALL from the host, and
removes the stack, its network and its volumes. Skips, saying why, where docker or swarm
mode is unavailable. The image is the session's (conftest's e2e_image, which the compose
clusters run too: built once, removed at the end of the session); any compose cluster of
the session is taken down first (the swarm runs after them: conftest orders the tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import ROOT, Clusters, E2EImage, free_ports, kv_command, run

# The session's image may be built in this module's setup (minutes on a loaded machine
# when not cached), then up to READY_TIMEOUT for the stack: more than the default 300 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
NODES = ("n1", "n2", "n3")
READY_TIMEOUT = 240.0


def _docker_ok() -> str | None:
    """None if a docker engine answers, else why not."""
    try:
        info = subprocess.run(["docker", "info", "--format", "{{json .Swarm}}"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker CLI or engine ({exc})"
    if info.returncode != 0:
        return f"no docker engine answers: {info.stderr.strip()[:200]}"
    return None


def _swarm_state() -> str:
    out = run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout
    return out.strip()


def _kv(endpoints: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kv_command(), "--endpoints", endpoints, *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def swarm_stack(e2e_image: E2EImage, e2e_clusters: Clusters) -> Iterator[tuple[str, str]]:
    why = _docker_ok()
    if why:
        pytest.skip(why)
    e2e_clusters.release()  # no compose cluster shares the two cores with the stack
    image = e2e_image.image
    initialised = False
    if _swarm_state() == "inactive":
        init = run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=False)
        if init.returncode != 0:
            pytest.skip("the engine cannot enter swarm mode: " + init.stderr.strip()[:300])
        initialised = True
    stack = f"kvswarm{os.getpid()}"
    ports = dict(zip(NODES, free_ports(len(NODES)), strict=True))
    env = {**os.environ, "KV_IMAGE": image,
           **{f"KV_{n.upper()}_PORT": str(p) for n, p in ports.items()}}
    try:
        run(["docker", "stack", "deploy", "-c", str(STACK_FILE), stack], env=env, timeout=180)
        yield ",".join(f"127.0.0.1:{p}" for p in ports.values()), stack
    finally:
        run(["docker", "stack", "rm", stack], check=False, timeout=120)
        deadline = time.monotonic() + 120
        label = f"label=com.docker.stack.namespace={stack}"
        while time.monotonic() < deadline and run(
                ["docker", "ps", "-aq", "--filter", label], check=False).stdout.strip():
            time.sleep(1)
        while time.monotonic() < deadline and run(
                ["docker", "network", "ls", "-q", "--filter", label], check=False).stdout.strip():
            time.sleep(1)
        volumes = run(["docker", "volume", "ls", "-q", "--filter", label],
                      check=False).stdout.split()
        if volumes:
            run(["docker", "volume", "rm", *volumes], check=False)
        if initialised:
            run(["docker", "swarm", "leave", "--force"], check=False, timeout=120)
        left = {what: run(["docker", what, "ls", "-q", "--filter", label] if what != "ps"
                          else ["docker", "ps", "-aq", "--filter", label],
                          check=False).stdout.split()
                for what in ("ps", "network", "volume")}
        assert not any(left.values()), f"the stack left these behind: {left}"


def _eventually(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Retry a command until it succeeds (the nodes start and find each other), bounded."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        last = _kv(endpoints, *args)
        if last.returncode == 0 or time.monotonic() > deadline:
            return last
        time.sleep(2)


def _tasks(stack: str) -> str:
    """What swarm did with the stack's tasks (restarts and their reasons) and the nodes'
    last log lines: printed when an assertion fails, so a failure in CI explains itself."""
    ps = run(["docker", "stack", "ps", "--no-trunc", "--format",
              "{{.Name}} {{.CurrentState}} {{.Error}}", stack], check=False).stdout
    logs = [run(["docker", "service", "logs", "--tail", "15", f"{stack}_{n}"],
                check=False, timeout=60) for n in NODES]
    return "tasks:\n" + ps + "".join(f"\n{n} log:\n{got.stdout}{got.stderr}"
                                       for n, got in zip(NODES, logs, strict=True))


def test_the_swarm_stack_serves_quorum_and_all_from_the_host(swarm_stack):
    endpoints, stack = swarm_stack
    put = _eventually(endpoints, "put", "swarm:k", "v1", "--consistency", "QUORUM", "--blind")
    assert put.returncode == 0, (f"no QUORUM write within {READY_TIMEOUT}s: {put.stderr}"
                                 + _tasks(stack))
    # every node up: a write at ALL is acknowledged by all three, and read back at ALL
    put = _eventually(endpoints, "put", "swarm:k", "v2", "--consistency", "ALL")
    assert put.returncode == 0, (f"no ALL write within {READY_TIMEOUT}s: {put.stderr}"
                                 + _tasks(stack))
    # eventually, too: the ALL write's coordinator reached every node, but another node's
    # channel to a peer may still be reconnecting (swarm publishes a task's name only once
    # its health check passes, so a node that looked it up earlier found nothing)
    got = _eventually(endpoints, "get", "swarm:k", "--consistency", "ALL", "--json")
    assert got.returncode == 0, got.stderr + _tasks(stack)
    assert [s["value"] for s in json.loads(got.stdout)["siblings"]] == ["v2"]
    ring = _kv(endpoints, "ring", "--json")
    assert ring.returncode == 0, ring.stderr
    assert sorted(m["id"] for m in json.loads(ring.stdout)["members"]) == list(NODES)
