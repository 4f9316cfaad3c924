"""The docker compose cluster for the end-to-end tests: built offline, always torn down.

The session fixture `compose_cluster`:
  1. skips, with the reason, where no docker engine or compose answers, or where the base
     image cannot be made (debootstrap cannot run);
  2. makes the Debian base image (scripts/docker_base_image.sh, cached in the engine) and
     the kvstore image with no network inside the build (scripts/docker_build.sh offline);
  3. runs `compose -p kvstore-e2e up -d` on free 127.0.0.1 host ports and waits (bounded)
     for every node's healthcheck to say healthy;
  4. always runs `down -v --remove-orphans` and asserts that no container, network or
     volume of the project is left.
Measured durations are printed at the end of the run (terminal summary).

Environment: KV_E2E_BASE_IMAGE uses an existing base image (e.g. python:3.11-slim)
instead of the debootstrap one; KV_E2E_IMAGE names the built image (kvstore:e2e).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("KV_E2E_PROJECT", "kvstore-e2e")
# The compose files of each profile the whole e2e suite runs against (KV_E2E_PROFILES picks).
PROFILES = {"default": ["docker-compose.yml"],
            "secure": ["docker-compose.yml", "docker-compose.secure.yml"]}
SECURE_NODES = ("n1", "n2", "n3", "n4", "n5")
SERVICES = ("n1", "n2", "n3")
HEALTHY_TIMEOUT = 180.0  # seconds; the nodes report healthy in ~10 s on an idle machine
TIMINGS: dict[str, float] = {}


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

    def __init__(self, compose: list[str], env: dict[str, str], ports: dict[str, int],
                 profile: str = "default") -> None:
        files = [arg for f in PROFILES[profile] for arg in ("-f", str(ROOT / f))]
        self.base = [*compose, "-p", PROJECT, *files]
        self.env = env
        self.ports = ports
        self.profile = profile
        self.kv_env: dict[str, str] | None = None  # the host kv's credentials (secure)
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
        label = f"label=com.docker.compose.project={PROJECT}"
        found = {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }
        return {kind: items for kind, items in found.items() if items}

    # -- the kv CLI ----------------------------------------------------------------------
    def endpoints(self, *services: str) -> str:
        return ",".join(f"127.0.0.1:{self.ports[s]}" for s in services or SERVICES)

    def kv(self, *args: str, via: Sequence[str] = SERVICES,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The kv CLI on the host, through the published ports of the `via` nodes."""
        return run([*kv_command(), "--endpoints", self.endpoints(*via), *args],
                   timeout=timeout, check=False, env=self.kv_env)

    def kv_in(self, service: str, *args: str, timeout: float = 60,
              via_compose: bool = False) -> subprocess.CompletedProcess[str]:
        """The kv CLI inside a node's container (KV_ENDPOINTS there is the node itself):
        `compose exec -T` as users type it, or the quicker `docker exec`."""
        if via_compose:
            return self.compose("exec", "-T", service, "kv", *args, timeout=timeout,
                                check=False)
        return run(["docker", "exec", self.container(service), "kv", *args],
                   timeout=timeout, check=False)


def values(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The sibling values of a successful `kv get --json`, sorted."""
    assert proc.returncode == 0, f"kv get failed ({proc.returncode}): {proc.stderr.strip()}"
    return sorted(s["value"] for s in json.loads(proc.stdout)["siblings"])


def make_secure_material(directory: Path) -> None:
    """The certificates and the admin password the secure profile mounts at /certs,
    readable by the image's user (uid 10001) and nobody else where we may chown."""
    from kvstore.transport import certs

    certs.init_ca(directory)
    for node in SECURE_NODES:
        certs.issue(directory, certs.KIND_NODE, node)
    (directory / "root.pw").write_text("e2e-admin-password\n")
    (directory / "ca.key").unlink()  # not needed by the nodes: keep it off them
    directory.chmod(0o755)
    for path in directory.iterdir():
        try:
            os.chown(path, 10001, 10001)
        except PermissionError:  # not root: a throwaway directory, world-readable then
            path.chmod(0o644)


def bootstrap_admin(cluster: ComposeCluster, certs_dir: Path) -> None:
    """The first admin (`root`), made with n1's node certificate on its peer port; then the
    host's kv logs in as root."""
    deadline = time.monotonic() + 60
    while True:  # the raft group elects its first leader
        res = run(["docker", "exec", cluster.container("n1"), "kv", "--endpoints",
                   "127.0.0.1:7101", "--cert", "n1", "user", "add", "root", "--role", "admin",
                   "--password-file", "/certs/root.pw"], check=False)
        if res.returncode == 0:
            break
        assert time.monotonic() < deadline, f"cannot add the admin user: {res.stderr}"
        time.sleep(1)
    cluster.kv_env = {**os.environ, "KV_TLS": str(certs_dir), "KV_USER": "root",
                      "KV_PASSWORD_FILE": str(certs_dir / "root.pw")}


def _profiles() -> list[str]:
    names = [p.strip() for p in os.environ.get("KV_E2E_PROFILES", "default,secure").split(",")
             if p.strip()]
    unknown = set(names) - set(PROFILES)
    assert not unknown, f"KV_E2E_PROFILES: unknown {unknown}; choose from {sorted(PROFILES)}"
    return names


@pytest.fixture(scope="session", params=_profiles())
def compose_cluster(request, tmp_path_factory) -> Iterator[ComposeCluster]:
    """The cluster of one compose profile: every e2e test runs against each profile."""
    profile = request.param
    session_start = time.monotonic()
    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` answers")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no docker engine answers (docker info: {info.stderr.strip()[:200]})")

    base = os.environ.get("KV_E2E_BASE_IMAGE", "kvstore-base:bookworm")
    image = os.environ.get("KV_E2E_IMAGE", "kvstore:e2e")
    env = {**os.environ, "KV_BASE_IMAGE": base, "KV_IMAGE": image}
    t = time.monotonic()
    if "KV_E2E_BASE_IMAGE" in os.environ:
        if run(["docker", "image", "inspect", base], check=False).returncode != 0:
            pytest.skip(f"KV_E2E_BASE_IMAGE={base} is not in the engine")
    else:
        made = run([str(ROOT / "scripts/docker_base_image.sh"), base], timeout=900, env=env,
                   check=False)
        if made.returncode in (4, 5):
            pytest.skip("cannot make the base image, debootstrap cannot run: "
                        + made.stderr.strip()[-300:])
        assert made.returncode == 0, f"docker_base_image.sh failed:\n{made.stderr}"
    TIMINGS["base image (made or cached)"] = time.monotonic() - t
    t = time.monotonic()
    run([str(ROOT / "scripts/docker_build.sh"), "offline"], timeout=900, env=env)
    TIMINGS["kvstore image build (offline)"] = time.monotonic() - t

    ports = dict(zip(("n1", "n2", "n3", "n4", "n5"), free_ports(5), strict=True))
    env.update({"KV_BIND": "127.0.0.1", "KV_WHEELS": "build/docker-wheels"})
    env.update({f"KV_{s.upper()}_PORT": str(p) for s, p in ports.items()})
    if profile == "secure":
        certs_dir = tmp_path_factory.mktemp("secure-certs")
        make_secure_material(certs_dir)
        env.update({"KV_CERTS": str(certs_dir), "KV_RAFT_BOOTSTRAP": "1"})
    cluster = ComposeCluster(compose, env, ports, profile)
    cluster.compose("--profile", "five", "down", "-v", "--remove-orphans",
                    check=False)  # whatever a crashed earlier run left
    label = "" if profile == "default" else f" ({profile})"
    try:
        t = time.monotonic()
        cluster.compose("up", "-d", "--no-build", timeout=300)
        TIMINGS["compose up -d" + label] = time.monotonic() - t
        TIMINGS["up -> all healthy" + label] = (TIMINGS["compose up -d" + label]
                                                + cluster.wait_healthy())
        if profile == "secure":
            bootstrap_admin(cluster, certs_dir)
        networks = json.loads(run(["docker", "inspect", "--format",
                                   "{{json .NetworkSettings.Networks}}",
                                   cluster.container("n1")]).stdout)
        cluster.network = next(iter(networks))
        yield cluster
    finally:
        t = time.monotonic()
        cluster.compose("--profile", "five", "down", "-v", "--remove-orphans", "-t", "15",
                        timeout=300, check=False)
        TIMINGS["compose down -v" + label] = time.monotonic() - t
        TIMINGS["whole e2e session" + label] = time.monotonic() - session_start
        left = cluster.leftovers()
        assert not left, f"compose down left these behind: {left}"


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


def pytest_terminal_summary(terminalreporter) -> None:
    """Print what the e2e session measured, also without -s."""
    if TIMINGS:
        terminalreporter.section("kvstore e2e timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:<34} {seconds:7.1f} s")
