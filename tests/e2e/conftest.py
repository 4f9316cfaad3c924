"""The docker compose cluster for the end-to-end tests: built offline, always torn down.

The session fixture `e2e_image`:
  1. skips, with the reason, where no docker engine or compose answers, or where the base
     image cannot be made (debootstrap cannot run);
  2. makes the Debian base image (scripts/docker_base_image.sh, cached in the engine: it is
     the one image the run keeps);
  3. builds the kvstore image (`scripts/docker_cluster.sh build`: offline when no registry
     answers) under a tag unique to this checkout (a hash of its path);
  4. at the end removes that image and the dangling images the build left, and asserts
     that none is left.
The module fixture `compose_cluster` (on that image; torn down before the next module's
cluster comes up, so two clusters never share the machine's two cores; a module's
COMPOSE_ENV dict adds docker-compose.yml variables, e.g. KV_CHAOS=1):
  1. runs the README's docker command, `make docker-up` (scripts/docker_cluster.sh: picks
     the compose front-end, creates the Raft group, waits until every node is healthy; the
     build is e2e_image's) on free 127.0.0.1 host ports, under a compose project unique to
     this checkout, so runs from different checkouts never share containers or volumes;
  2. always runs `make docker-down V=1` and asserts that no container, network or volume
     of the project is left.
tests/e2e/test_secure_compose.py brings up the secure profile on the same image, under a
project of its own (`secure_project`).
Measured durations are printed at the end of the run (terminal summary).

Environment: KV_E2E_BASE_IMAGE uses an existing base image (e.g. python:3.11-slim)
instead of the debootstrap one; KV_E2E_IMAGE names the built image (kvstore:e2e-HASH).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from run_summary import E2E_TIMINGS

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
PROJECT = f"kvstore-e2e-{CHECKOUT}"  # unique per checkout: parallel checkouts never collide
SERVICES = ("n1", "n2", "n3")
HEALTHY_TIMEOUT = 180.0  # seconds; the nodes report healthy in ~10 s on an idle machine
TIMINGS = E2E_TIMINGS  # printed at the end of the run by tests/conftest.py


def run(cmd: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with captured text output; with check, fail showing its output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout}s") from exc
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if it answers, else `docker-compose` (v1), else None."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            ok = subprocess.run([*cmd, "version"], capture_output=True, timeout=30).returncode
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok == 0:
            return cmd
    return None


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (the integration tests do the same)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def kv_command() -> list[str]:
    kv = Path(sys.executable).parent / "kv"
    return [str(kv)] if kv.exists() else [sys.executable, "-m", "kvstore"]


class ComposeCluster:
    """The running compose project, driven through the docker CLI and the kv CLI."""

    def __init__(self, compose: list[str], env: dict[str, str], ports: dict[str, int]) -> None:
        self.base = [*compose, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
        self.env = env
        self.ports = ports
        self._ids: dict[str, str] = {}
        self.network = ""

    # -- docker and compose ------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], timeout=timeout, env=self.env, check=check)

    def container(self, service: str) -> str:
        if service not in self._ids:
            cid = self.compose("ps", "-q", service).stdout.strip()
            assert cid, f"compose has no container for {service}"
            self._ids[service] = cid
        return self._ids[service]

    def forget_containers(self) -> None:
        """After `down`/`up` the services have new containers."""
        self._ids.clear()

    def health(self, services: Sequence[str]) -> dict[str, str]:
        ids = [self.container(s) for s in services]
        out = run(["docker", "inspect", "--format",
                   "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                   *ids]).stdout.split("\n")
        return {s: line.strip() for s, line in zip(services, out, strict=False)}

    def wait_healthy(self, services: Sequence[str] = SERVICES,
                     timeout: float = HEALTHY_TIMEOUT) -> float:
        """Poll docker's healthcheck status until all say healthy; seconds waited."""
        start = time.monotonic()
        status: dict[str, str] = {}
        while time.monotonic() - start < timeout:
            status = self.health(services)
            if all(v == "running healthy" for v in status.values()):
                return time.monotonic() - start
            time.sleep(0.5)
        logs = self.compose("logs", "--no-color", "--tail", "30", *services, check=False)
        raise AssertionError(f"not healthy within {timeout:.0f}s: {status}\n{logs.stdout}")

    def stop(self, service: str) -> None:
        self.compose("stop", "-t", "15", service)

    def start(self, service: str) -> float:
        self.compose("start", service)
        return self.wait_healthy([service])

    def disconnect(self, service: str) -> None:
        """Cut the node off the cluster network (it keeps running; loopback still works)."""
        run(["docker", "network", "disconnect", self.network, self.container(service)])

    def connect(self, service: str) -> None:
        """Reattach it under its service name, so peers resolve it again."""
        run(["docker", "network", "connect", "--alias", service, self.network,
             self.container(service)])

    def leftovers(self) -> dict[str, list[str]]:
        return project_leftovers(PROJECT)

    # -- the kv CLI ----------------------------------------------------------------------
    def endpoints(self, *services: str) -> str:
        return ",".join(f"127.0.0.1:{self.ports[s]}" for s in services or SERVICES)

    def kv(self, *args: str, via: Sequence[str] = SERVICES,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The kv CLI on the host, through the published ports of the `via` nodes."""
        return run([*kv_command(), "--endpoints", self.endpoints(*via), *args],
                   timeout=timeout, check=False)

    def kv_in(self, service: str, *args: str, timeout: float = 60,
              via_compose: bool = False) -> subprocess.CompletedProcess[str]:
        """The kv CLI inside a node's container (KV_ENDPOINTS there is the node itself):
        `compose exec -T` as users type it, or the quicker `docker exec`."""
        if via_compose:
            return self.compose("exec", "-T", service, "kv", *args, timeout=timeout,
                                check=False)
        return run(["docker", "exec", self.container(service), "kv", *args],
                   timeout=timeout, check=False)


def project_leftovers(project: str) -> dict[str, list[str]]:
    """Containers, networks and volumes of a compose project still in the engine."""
    label = f"label=com.docker.compose.project={project}"
    found = {
        "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
        "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
    }
    return {kind: items for kind, items in found.items() if items}


def values(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The sibling values of a successful `kv get --json`, sorted."""
    assert proc.returncode == 0, f"kv get failed ({proc.returncode}): {proc.stderr.strip()}"
    return sorted(s["value"] for s in json.loads(proc.stdout)["siblings"])


@dataclass
class E2EImage:
    compose: list[str]  # the compose front-end: `docker compose` or `docker-compose`
    env: dict[str, str]  # KV_IMAGE, KV_COMPOSE (and KV_BASE_IMAGE when given)
    image: str


@pytest.fixture(scope="session")
def e2e_image() -> Iterator[E2EImage]:
    """The kvstore image every e2e cluster runs, built once per session, removed at its end."""
    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` answers")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no docker engine answers (docker info: {info.stderr.strip()[:200]})")

    base = os.environ.get("KV_E2E_BASE_IMAGE", "kvstore-base:bookworm")
    image = os.environ.get("KV_E2E_IMAGE", f"kvstore:e2e-{CHECKOUT}")
    env = {**os.environ, "KV_IMAGE": image, "KV_COMPOSE": " ".join(compose)}
    t = time.monotonic()
    if "KV_E2E_BASE_IMAGE" in os.environ:
        if run(["docker", "image", "inspect", base], check=False).returncode != 0:
            pytest.skip(f"KV_E2E_BASE_IMAGE={base} is not in the engine")
        env["KV_BASE_IMAGE"] = base  # in the engine: docker_cluster.sh builds on it
    else:
        made = run([str(ROOT / "scripts/docker_base_image.sh"), base], timeout=900, env=env,
                   check=False)
        if made.returncode in (4, 5):
            pytest.skip("cannot make the base image, debootstrap cannot run: "
                        + made.stderr.strip()[-300:])
        assert made.returncode == 0, f"docker_base_image.sh failed:\n{made.stderr}"
    TIMINGS["base image (made or cached)"] = time.monotonic() - t
    try:
        t = time.monotonic()
        run([str(ROOT / "scripts/docker_cluster.sh"), "build"], timeout=1500, env=env)
        TIMINGS["kvstore image build"] = time.monotonic() - t
        yield E2EImage(compose, env, image)
    finally:
        dangling = ["docker", "images", "-q", "--filter", "dangling=true",
                    "--filter", "label=kvstore.build"]
        run(["docker", "image", "rm", "--force", image], check=False)
        ours = set(run(dangling).stdout.split())
        run(["docker", "image", "prune", "--force", "--filter", "label=kvstore.build"],
            check=False)
        # Only what existed when we pruned: a build from another checkout running now
        # leaves its own intermediate images meanwhile (seen here: a swarm build).
        left = (run(["docker", "images", "-q", image]).stdout.split()
                + [i for i in run(dangling).stdout.split() if i in ours])
        assert not left, f"the e2e run left these images behind: {left}"


@pytest.fixture(scope="module")  # down before the next module's cluster comes up
def compose_cluster(e2e_image: E2EImage,
                    request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    session_start = time.monotonic()
    env = {**e2e_image.env, "COMPOSE_PROJECT_NAME": PROJECT, "KV_NO_BUILD": "1"}
    # A module may set docker-compose.yml variables for its own cluster, e.g.
    # COMPOSE_ENV = {"KV_CHAOS": "1"} (nodes that accept `kv chaos`).
    env.update(getattr(request.module, "COMPOSE_ENV", {}))
    ports = dict(zip(("n1", "n2", "n3", "n4", "n5"), free_ports(5), strict=True))
    env["KV_BIND"] = "127.0.0.1"
    env.update({f"KV_{s.upper()}_PORT": str(p) for s, p in ports.items()})
    cluster = ComposeCluster(e2e_image.compose, env, ports)
    cluster.compose("--profile", "five", "down", "-v", "--remove-orphans",
                    check=False)  # whatever a crashed earlier run left
    try:
        t = time.monotonic()
        # The README's docker command: create the Raft group, start n1..n3 and wait until
        # they are healthy (the image is e2e_image's, built by the same script).
        up = run(["make", "--no-print-directory", "docker-up"], timeout=1500, env=env)
        TIMINGS["make docker-up (up, healthy)"] = time.monotonic() - t
        assert "kv --endpoints 127.0.0.1:" in up.stdout, up.stdout
        # the stop hint names the exact command, with the project this cluster runs under
        assert f"stop it with: COMPOSE_PROJECT_NAME={PROJECT} make docker-down" in up.stderr, \
            up.stderr
        cluster.wait_healthy()
        networks = json.loads(run(["docker", "inspect", "--format",
                                   "{{json .NetworkSettings.Networks}}",
                                   cluster.container("n1")]).stdout)
        cluster.network = next(iter(networks))
        yield cluster
    finally:
        t = time.monotonic()
        run(["make", "--no-print-directory", "docker-down", "V=1"], timeout=300, env=env,
            check=False)
        TIMINGS["make docker-down V=1"] = time.monotonic() - t
        TIMINGS["default cluster, up to down"] = time.monotonic() - session_start
        left = cluster.leftovers()
        assert not left, f"the e2e run left these behind: {left}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Minutes of docker work are opt-in: `-m e2e` (make test-e2e) or KV_E2E=1."""
    if "e2e" in (config.option.markexpr or "") or os.environ.get("KV_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="docker compose e2e (minutes): run `make test-e2e`, "
                                   "`pytest -m e2e`, or set KV_E2E=1")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and item.get_closest_marker("e2e"):
            item.add_marker(skip)
