"""The docker compose clusters for the end-to-end tests: built offline, always torn down.

The session fixture `e2e_image`:
  1. skips, with the reason, where no docker engine or compose answers, or where the base
     image cannot be made (debootstrap cannot run);
  2. makes the Debian base image (scripts/docker_base_image.sh, cached in the engine: it is
     the one image the run keeps);
  3. builds the kvstore image once for the session (`scripts/docker_cluster.sh build` on
     that base: the offline build, no registry probe) under a tag unique to this checkout
     (a hash of its path); every cluster of the run, and the swarm stack, runs it;
  4. at the end removes that image and the dangling images the build left, and asserts
     that none is left.

One cluster per profile for the whole session, shared by every module (session fixture
`e2e_clusters`; at most one cluster runs at a time, so two never share the machine's two
cores):
  * "default": docker-compose.yml, brought up with the README's docker command, `make
    docker-up` (scripts/docker_cluster.sh: picks the compose front-end, creates the Raft
    group, waits until every node is healthy; the build is e2e_image's), torn down with
    `make docker-down V=1`;
  * "secure": docker-compose.yml + docker-compose.secure.yml (mutual TLS between nodes on
    a private peer port, TLS and authentication for clients) with a throwaway CA and node
    certificates for n1..n5; the first admin (`root`) is made with n1's node certificate on
    its peer port, then a readwrite (`alice`) and a readonly (`bob`) user; torn down with
    `down -v`.
Both run with KV_CHAOS=1 (nodes accept `kv chaos`), on free 127.0.0.1 host ports, under a
compose project unique to this checkout and profile (kvstore-e2e-HASH,
kvstore-e2e-secure-HASH), so runs from different checkouts never share containers or
volumes. After each teardown it asserts that no container, network or volume of the
project is left.

The fixture `compose_cluster` is parametrized over the profiles (test ids `[default]`,
`[secure]`): the same test body runs against each, because `ComposeCluster.kv(...)`,
`kv_cmd(...)` and `host_env()` add, on the secure cluster, the CA (KV_TLS) and the admin
user's credentials (KV_USER, KV_PASSWORD_FILE: the CLI logs in and sends the token); inside
the containers the secure profile's environment does the same for `kv_in(...)`. Before
each test it checks that n1..n3 run, are healthy and on the cluster network, and restores
whatever a failed test left stopped or cut off, so the order of the tests does not matter.
The tests marked `reshapes_cluster` (the five-node test: n4 and n5 stay members; the Raft
membership test: n4 a voter, n3 replaced) run last for their profile, one after the other
on the same cluster (each copes with what the one before left), and the next test that
asks for that profile gets a new cluster.

Which tests run on which profile (docs/docker.md, docs/security.md): every compose test
(test_compose.py, test_compose_coordination.py) on both, in the default CI run too (KV_E2E=1:
measured, the whole e2e run with every test on both profiles, 17 min 17 s on the loaded
2-core machine, is shorter than the run before the clusters were shared, 23 min 36 s, which
ran them on the default profile alone); plus test_secure_compose.py's secure-only checks.
KV_E2E_SECURE=subset (for a tighter CI budget, ~3 min less) runs on "secure" only the tests
marked `secure_ci`: writes and reads at ONE/QUORUM/ALL, a stopped node and its data after
restart, Raft/meta/repair and admin commands with a dead endpoint, lease and lock with
fencing, lease keepalive until Ctrl-C, txn, the chaos partition with hints draining,
`kv bench --fault partition`.
The tests are ordered: every test of the default cluster, then every test of the secure
one, then the rest (the swarm stack, which takes any compose cluster down first).
Measured durations are printed at the end of the run (terminal summary).

Environment: KV_E2E_BASE_IMAGE uses an existing base image (e.g. python:3.11-slim)
instead of the debootstrap one; KV_E2E_IMAGE names the built image (kvstore:e2e-HASH);
KV_E2E_SECURE=subset (above).
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
SECURE_PROJECT = f"kvstore-e2e-secure-{CHECKOUT}"
PROFILES = {"default": ("docker-compose.yml",),
            "secure": ("docker-compose.yml", "docker-compose.secure.yml")}
SERVICES = ("n1", "n2", "n3")
NODES = ("n1", "n2", "n3", "n4", "n5")  # n4, n5: `--profile five`
# The secure cluster's users (made at bring-up); the host's kv runs as HOST_USER there.
SECURE_USERS = {"root": "admin", "alice": "readwrite", "bob": "readonly"}
HOST_USER = "root"
HEALTHY_TIMEOUT = 180.0  # seconds; the nodes report healthy in ~10 s on an idle machine
LEADER_TIMEOUT = 60.0
# "subset": only the tests marked secure_ci run on the secure profile
SECURE_SUBSET = os.environ.get("KV_E2E_SECURE") == "subset"
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
    """The running compose project of one profile, driven through the docker CLI and the
    kv CLI (with the secure profile's TLS and credentials where it is "secure")."""

    def __init__(self, compose: list[str], env: dict[str, str], ports: dict[str, int],
                 profile: str = "default", certs: Path | None = None,
                 metrics: dict[str, int] | None = None) -> None:
        self.profile = profile
        self.project = PROJECT if profile == "default" else SECURE_PROJECT
        files = [arg for f in PROFILES[profile] for arg in ("-f", str(ROOT / f))]
        self.base = [*compose, "-p", self.project, *files]
        self.env = env  # compose's environment (never KV_RAFT_BOOTSTRAP: only the first up)
        self.ports = ports
        self.metrics = metrics or {}
        self.certs = certs  # the secure profile's CA, certificates and passwords
        self._ids: dict[str, str] = {}
        self.network = f"{self.project}_default"  # compose's default network, by name

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
        return project_leftovers(self.project)

    def ensure_whole(self) -> list[str]:
        """n1..n3 exist, run, are healthy and on the cluster network: what a test leaves
        behind when it fails between cutting a node off and restoring it is restored here
        (one `docker ps` when nothing is amiss). What it had to do, for the log."""
        fmt = ('{{.Label "com.docker.compose.service"}}\t{{.ID}}\t{{.State}}\t{{.Status}}'
               '\t{{.Networks}}')
        rows = run(["docker", "ps", "-a", "--no-trunc", "--filter",  # full ids, as compose
                    f"label=com.docker.compose.project={self.project}",
                    "--format", fmt]).stdout.splitlines()
        seen = {}
        for row in rows:
            service, cid, state, status, networks = (row.split("\t") + [""] * 5)[:5]
            seen[service] = (cid, state, status, networks.split(","))
        done: list[str] = []
        missing = [s for s in SERVICES if s not in seen]
        if missing:
            self.compose("up", "-d", "--no-build", *missing, timeout=300)
            self.forget_containers()
            done.append(f"up {' '.join(missing)}")
        self._ids.update({s: cid for s, (cid, *_) in seen.items()})
        for service in SERVICES:
            if service in missing:
                continue
            cid, state, status, networks = seen[service]
            if state != "running":
                self.compose("start", service)
                done.append(f"start {service}")
            if self.network not in networks:
                self.connect(service)
                done.append(f"connect {service}")
            elif "(healthy)" not in status:
                done.append(f"wait for {service} ({status})")
        if done:
            self.wait_healthy()
        return done

    # -- the kv CLI ----------------------------------------------------------------------
    def endpoints(self, *services: str) -> str:
        return ",".join(f"127.0.0.1:{self.ports[s]}" for s in services or SERVICES)

    def host_env(self, user: str | None = HOST_USER, tls: bool = True) -> dict[str, str]:
        """The environment of a kv CLI on the host: this shell's on the default cluster; on
        the secure one none of this shell's KV_* settings, but the CA (KV_TLS, with tls) and
        `user`'s credentials (KV_USER, KV_PASSWORD_FILE; none for None)."""
        if self.certs is None:
            return dict(os.environ)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
        if tls:
            env["KV_TLS"] = str(self.certs)
        if user is not None:
            env.update(KV_USER=user, KV_PASSWORD_FILE=str(self.certs / f"{user}.pw"))
        return env

    def kv_cmd(self, *args: str, via: Sequence[str] = SERVICES) -> list[str]:
        """The argv of a host kv through the published ports of `via` (run it with
        host_env(): on the secure cluster that brings the CA and the credentials)."""
        return [*kv_command(), "--endpoints", self.endpoints(*via), *args]

    def kv(self, *args: str, via: Sequence[str] = SERVICES,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The kv CLI on the host, through the published ports of the `via` nodes."""
        return run(self.kv_cmd(*args, via=via), timeout=timeout, check=False,
                   env=self.host_env())

    def kv_as(self, user: str | None, *args: str, tls: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The host's kv on the secure cluster as `user` (None: no credentials), with the
        CA (tls) or in plaintext; a 5 s request deadline."""
        assert self.certs is not None, "kv_as is for the secure profile"
        return run(self.kv_cmd("--timeout", "5", *args), timeout=timeout, check=False,
                   env=self.host_env(user, tls))

    def kv_in(self, service: str, *args: str, timeout: float = 60,
              via_compose: bool = False) -> subprocess.CompletedProcess[str]:
        """The kv CLI inside a node's container (KV_ENDPOINTS there is the node itself; on
        the secure profile KV_TLS, KV_USER and KV_PASSWORD_FILE make it the admin over
        TLS): `compose exec -T` as users type it, or the quicker `docker exec`."""
        if via_compose:
            return self.compose("exec", "-T", service, "kv", *args, timeout=timeout,
                                check=False)
        return run(["docker", "exec", self.container(service), "kv", *args],
                   timeout=timeout, check=False)

    def wait_for_leader(self, timeout: float = LEADER_TIMEOUT) -> float:
        """Until `kv raft status` names a leader; seconds it took."""
        start = time.monotonic()
        while True:
            proc = self.kv("raft", "status", "--json")
            if proc.returncode == 0 and json.loads(proc.stdout).get("leader"):
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, \
                f"no raft leader within {timeout:.0f}s: {proc.stdout} {proc.stderr}"
            time.sleep(0.5)


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
    env: dict[str, str]  # KV_IMAGE, KV_COMPOSE, KV_BASE_IMAGE
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
    # KV_BASE_IMAGE: the base is in the engine (checked or made below), so the build uses
    # it at once instead of first trying to pull python:3.11-slim (~20 s without a registry)
    env = {**os.environ, "KV_IMAGE": image, "KV_COMPOSE": " ".join(compose),
           "KV_BASE_IMAGE": base}
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


def make_secure_material(directory: Path) -> None:
    """The CA, n1..n5's certificates and the users' passwords the secure profile mounts at
    /certs, readable by the image's user (uid 10001); the CA key stays off the nodes."""
    from kvstore.transport import certs

    certs.init_ca(directory)
    for node in NODES:
        certs.issue(directory, certs.KIND_NODE, node)
    for name in SECURE_USERS:
        (directory / f"{name}.pw").write_text(f"e2e-password-of-{name}\n")
    (directory / "ca.key").unlink()
    directory.chmod(0o755)
    for path in directory.iterdir():
        try:
            os.chown(path, 10001, 10001)
        except PermissionError:  # not root: a throwaway directory, world-readable then
            path.chmod(0o644)


def bootstrap_users(c: ComposeCluster) -> None:
    """The first admin with n1's node certificate on its peer port (inside the container:
    the peer port is not published), then the other users as that admin."""
    assert c.certs is not None
    deadline = time.monotonic() + 60
    while True:  # the Raft group elects its first leader
        res = run(["docker", "exec", c.container("n1"), "kv", "--endpoints", "127.0.0.1:7101",
                   "--cert", "n1", "user", "add", "root", "--role", "admin",
                   "--password-file", "/certs/root.pw"], check=False)
        if res.returncode == 0:
            break
        assert time.monotonic() < deadline, f"cannot add the admin user: {res.stderr}"
        time.sleep(1)
    for name, role in SECURE_USERS.items():
        if name != "root":
            res = c.kv_as("root", "user", "add", name, "--role", role, "--password-file",
                          str(c.certs / f"{name}.pw"))
            assert res.returncode == 0, res.stderr


class Clusters:
    """The session's compose clusters: at most one runs at a time; `get(profile)` brings
    that profile's up (taking the other down first) and `release()` takes it down."""

    def __init__(self, image: E2EImage, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.image = image
        self.tmp = tmp_path_factory
        self.current: ComposeCluster | None = None
        self.started = 0.0
        self.reshaped = False  # a `reshapes_cluster` test ran: the next test gets a new one
        self.failed: dict[str, str] = {}

    def get(self, profile: str, reshaping: bool = False) -> ComposeCluster:
        """The running cluster of `profile`, or a new one. A cluster a `reshapes_cluster`
        test changed goes on serving the next such tests (they run last, one after the
        other, each taking it as the one before left it); any other test gets a new one."""
        if self.current is not None and (self.current.profile != profile
                                         or (self.reshaped and not reshaping)):
            self.release()
        if profile in self.failed:
            pytest.fail(f"the {profile} cluster did not come up earlier in this session: "
                        f"{self.failed[profile][:2000]}")
        if self.current is None:
            self.started = time.monotonic()
            try:
                self.current = self._up(profile)
            except BaseException as exc:
                self.failed[profile] = str(exc)
                raise
        return self.current

    def _env(self, profile: str) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
        project = PROJECT if profile == "default" else SECURE_PROJECT
        env = {**self.image.env, "COMPOSE_PROJECT_NAME": project, "KV_NO_BUILD": "1",
               "KV_BIND": "127.0.0.1", "KV_CHAOS": "1"}  # nodes accept `kv chaos`
        got = free_ports(2 * len(NODES))
        ports = dict(zip(NODES, got[:len(NODES)], strict=True))
        metrics = dict(zip(NODES, got[len(NODES):], strict=True))
        env.update({f"KV_{s.upper()}_PORT": str(p) for s, p in ports.items()})
        env.update({f"KV_{s.upper()}_METRICS_PORT": str(p) for s, p in metrics.items()})
        return env, ports, metrics

    def _up(self, profile: str) -> ComposeCluster:
        env, ports, metrics = self._env(profile)
        certs = None
        if profile == "secure":
            certs = self.tmp.mktemp("secure-certs")
            make_secure_material(certs)
            env["KV_CERTS"] = str(certs)
        c = ComposeCluster(self.image.compose, env, ports, profile, certs, metrics)
        c.compose("--profile", "five", "down", "-v", "--remove-orphans",
                  check=False)  # whatever a crashed earlier run left
        try:
            t = time.monotonic()
            if profile == "default":
                # The README's docker command: create the Raft group, start n1..n3 and wait
                # until they are healthy (the image is e2e_image's, built by the same script).
                up = run(["make", "--no-print-directory", "docker-up"], timeout=1500, env=env)
                assert "kv --endpoints 127.0.0.1:" in up.stdout, up.stdout
                # the stop hint names the exact command, with the project it runs under
                assert (f"stop it with: COMPOSE_PROJECT_NAME={PROJECT} make docker-down"
                        in up.stderr), up.stderr
                TIMINGS["default: make docker-up (healthy)"] = time.monotonic() - t
            else:
                # a new cluster: n1..n3 create the Raft group (only this first `up`)
                run([*c.base, "up", "-d", "--no-build", *SERVICES], timeout=300,
                    env={**env, "KV_RAFT_BOOTSTRAP": "1"})
                c.wait_healthy()
                TIMINGS["secure: up -d (healthy)"] = time.monotonic() - t
                t = time.monotonic()
                bootstrap_users(c)
                TIMINGS["secure: users made"] = time.monotonic() - t
            c.wait_healthy()
            t = time.monotonic()
            took = c.wait_for_leader()
            TIMINGS[f"{profile}: raft leader known"] = time.monotonic() - t
            print(f"\n{profile} cluster: raft leader known {took:.1f}s after all were healthy")
            return c
        except BaseException:
            self._down(c)
            raise

    def _down(self, c: ComposeCluster) -> None:
        t = time.monotonic()
        if c.profile == "default":
            run(["make", "--no-print-directory", "docker-down", "V=1"], timeout=300,
                env=c.env, check=False)
        else:
            c.compose("--profile", "five", "down", "-v", "--remove-orphans", "-t", "15",
                      timeout=300, check=False)
        TIMINGS[f"{c.profile}: down -v"] = time.monotonic() - t

    def release(self) -> None:
        """Take the running cluster down (if any) and check nothing of it is left."""
        c, self.current, self.reshaped = self.current, None, False
        if c is None:
            return
        self._down(c)
        TIMINGS[f"{c.profile}: cluster, up to down"] = time.monotonic() - self.started
        left = c.leftovers()
        assert not left, f"the e2e run left these behind: {left}"


@pytest.fixture(scope="session")
def e2e_clusters(e2e_image: E2EImage,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    clusters = Clusters(e2e_image, tmp_path_factory)
    try:
        yield clusters
    finally:
        clusters.release()


@pytest.fixture
def compose_cluster(e2e_clusters: Clusters, e2e_profile: str,
                    request: pytest.FixtureRequest) -> Iterator[ComposeCluster]:
    """The session's cluster of the test's profile (pytest_generate_tests parametrizes
    e2e_profile), whole: every node running, healthy and connected."""
    reshaping = request.node.get_closest_marker("reshapes_cluster") is not None
    c = e2e_clusters.get(e2e_profile, reshaping)
    done = c.ensure_whole()
    if done:
        print(f"\nrestored the {e2e_profile} cluster before the test: {', '.join(done)}")
    yield c
    if reshaping:
        e2e_clusters.reshaped = True


@pytest.fixture
def secure_cluster(e2e_clusters: Clusters) -> ComposeCluster:
    """The session's secure cluster (for the checks only the secure profile has)."""
    c = e2e_clusters.get("secure")
    c.ensure_whole()
    return c


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "secure_ci: an e2e compose test that also runs on the "
                            "secure profile with KV_E2E_SECURE=subset (all do by default)")
    config.addinivalue_line("markers", "reshapes_cluster: an e2e compose test that leaves "
                            "its cluster changed (runs last, after the others of its profile "
                            "and before or after other such tests on the same cluster; the "
                            "next test of another kind gets a new one)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of the compose cluster runs on each profile; with KV_E2E_SECURE=subset
    only those marked secure_ci run on "secure"."""
    if "e2e_profile" not in metafunc.fixturenames:
        return
    marks: list = []
    if SECURE_SUBSET and not metafunc.definition.get_closest_marker("secure_ci"):
        marks = [pytest.mark.skip(reason="KV_E2E_SECURE=subset: on the secure profile only "
                                         "the tests marked secure_ci")]
    metafunc.parametrize("e2e_profile", ["default", pytest.param("secure", marks=marks)])


def _order(item: pytest.Item) -> tuple[int, int]:
    """The default cluster's tests, then the secure one's, then the rest; within a cluster
    the tests that reshape it last."""
    callspec = getattr(item, "callspec", None)
    profile = callspec.params.get("e2e_profile") if callspec is not None else None
    if profile is None and "secure_cluster" in getattr(item, "fixturenames", ()):
        profile = "secure"
    group = {"default": 0, "secure": 1}.get(profile, 2)
    return group, 1 if item.get_closest_marker("reshapes_cluster") else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Minutes of docker work are opt-in: `-m e2e` (make test-e2e) or KV_E2E=1. The e2e
    tests keep their places in the run but are ordered among themselves by cluster."""
    here = Path(__file__).parent
    places = [i for i, item in enumerate(items) if here in Path(item.fspath).parents]
    for i, item in zip(places, sorted((items[i] for i in places), key=_order), strict=True):
        items[i] = item
    if "e2e" in (config.option.markexpr or "") or os.environ.get("KV_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="docker compose e2e (minutes): run `make test-e2e`, "
                                   "`pytest -m e2e`, or set KV_E2E=1")
    for i in places:
        if items[i].get_closest_marker("e2e"):
            items[i].add_marker(skip)

