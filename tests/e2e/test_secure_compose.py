"""The secure compose profile (docker-compose.yml + docker-compose.secure.yml, issue 16):
mutual TLS between nodes on a private peer port, TLS and authentication for clients.

Brings up n1..n3 under a compose project of its own (`kvstore-e2e-secure-HASH`: it never
shares containers, networks or volumes with the default cluster's project), on the image
the session built (e2e_image), with a throwaway CA; makes the first admin with n1's node
certificate on its peer port, as docs/security.md says, then checks from the host:
* a plaintext client is refused (the client port speaks TLS only);
* a TLS client without credentials is refused with Unauthenticated;
* a client with the CA and a readwrite user's token writes and reads at QUORUM and ALL;
* a readonly user reads but its write is refused (PermissionDenied), and so is its
  `kv user add` (admin only);
* a node's dashboard gathers every member over mutual TLS on the peer port.
Always torn down (`down -v`), and checked that nothing of the project is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    CHECKOUT,
    ROOT,
    SERVICES,
    TIMINGS,
    ComposeCluster,
    E2EImage,
    free_ports,
    kv_command,
    project_leftovers,
    run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SECURE_PROJECT = f"kvstore-e2e-secure-{CHECKOUT}"
FILES = ("docker-compose.yml", "docker-compose.secure.yml")
USERS = {"root": "admin", "alice": "readwrite", "bob": "readonly"}


def make_secure_material(directory: Path) -> None:
    """The CA, n1..n3's certificates and the admin password the profile mounts at /certs,
    readable by the image's user (uid 10001); the CA key stays off the nodes."""
    from kvstore.transport import certs

    certs.init_ca(directory)
    for node in SERVICES:
        certs.issue(directory, certs.KIND_NODE, node)
    for name in USERS:
        (directory / f"{name}.pw").write_text(f"e2e-password-of-{name}\n")
    (directory / "ca.key").unlink()
    directory.chmod(0o755)
    for path in directory.iterdir():
        try:
            os.chown(path, 10001, 10001)
        except PermissionError:  # not root: a throwaway directory, world-readable then
            path.chmod(0o644)


class SecureCluster(ComposeCluster):
    def __init__(self, image: E2EImage, certs: Path) -> None:
        ports = free_ports(6)
        names = [f"n{i}" for i in range(1, 4)]
        env = {**image.env, "COMPOSE_PROJECT_NAME": SECURE_PROJECT, "KV_BIND": "127.0.0.1",
               "KV_CERTS": str(certs), "KV_RAFT_BOOTSTRAP": "1"}
        for name, port, metrics in zip(names, ports[:3], ports[3:], strict=True):
            env[f"KV_{name.upper()}_PORT"] = str(port)
            env[f"KV_{name.upper()}_METRICS_PORT"] = str(metrics)
        super().__init__(image.compose, env, dict(zip(names, ports[:3], strict=True)))
        files = [arg for f in FILES for arg in ("-f", str(ROOT / f))]
        self.base = [*image.compose, "-p", SECURE_PROJECT, *files]
        self.metrics = dict(zip(names, ports[3:], strict=True))
        self.certs = certs

    def kv_as(self, user: str | None, *args: str, tls: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The host's kv through the published client ports: with the CA (tls) and, for a
        user, their password; none of the KV_* settings of this shell."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
        opts = ["--tls", str(self.certs)] if tls else []
        if user is not None:
            opts += ["--user", user, "--password-file", str(self.certs / f"{user}.pw")]
        return run([*kv_command(), "--endpoints", self.endpoints(), "--timeout", "5", *opts,
                    *args], timeout=timeout, env=env, check=False)


def bootstrap_users(c: SecureCluster) -> None:
    """The first admin with n1's node certificate on its peer port (inside the container:
    the peer port is not published), then the other users as that admin."""
    deadline = time.monotonic() + 60
    while True:  # the Raft group elects its first leader
        res = run(["docker", "exec", c.container("n1"), "kv", "--endpoints", "127.0.0.1:7101",
                   "--cert", "n1", "user", "add", "root", "--role", "admin",
                   "--password-file", "/certs/root.pw"], check=False)
        if res.returncode == 0:
            break
        assert time.monotonic() < deadline, f"cannot add the admin user: {res.stderr}"
        time.sleep(1)
    for name, role in USERS.items():
        if name != "root":
            res = c.kv_as("root", "user", "add", name, "--role", role, "--password-file",
                          str(c.certs / f"{name}.pw"))
            assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def secure_cluster(e2e_image: E2EImage, tmp_path_factory) -> Iterator[SecureCluster]:
    started = time.monotonic()
    certs = tmp_path_factory.mktemp("secure-certs")
    make_secure_material(certs)
    c = SecureCluster(e2e_image, certs)
    c.compose("down", "-v", "--remove-orphans", check=False)  # a crashed earlier run's
    try:
        c.compose("up", "-d", "--no-build", *SERVICES, timeout=300)
        TIMINGS["secure: up -> healthy"] = time.monotonic() - started + c.wait_healthy()
        bootstrap_users(c)
        TIMINGS["secure: users made"] = time.monotonic() - started
        yield c
    finally:
        t = time.monotonic()
        c.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        TIMINGS["secure: down -v"] = time.monotonic() - t
        TIMINGS["secure: whole"] = time.monotonic() - started
        left = project_leftovers(SECURE_PROJECT)
        assert not left, f"the secure e2e run left these behind: {left}"


def test_a_plaintext_client_is_refused(secure_cluster: SecureCluster) -> None:
    res = secure_cluster.kv_as(None, "get", "e2e:any", tls=False, timeout=30)
    assert res.returncode not in (0, 3), res.stdout  # 3: not found, i.e. it was served
    assert res.stderr.strip() and "Traceback" not in res.stderr, res.stderr
    # and TLS alone (the CA, no user) is not enough: authentication is required
    res = secure_cluster.kv_as(None, "get", "e2e:any", timeout=30)
    assert res.returncode == 1 and "Unauthenticated" in res.stderr, res.stderr


def test_a_client_with_the_ca_and_a_token_reads_and_writes(
        secure_cluster: SecureCluster) -> None:
    c = secure_cluster
    res = c.kv_as("alice", "put", "e2e:secure", "v1", "--consistency", "QUORUM")
    assert res.returncode == 0, res.stderr
    res = c.kv_as("alice", "get", "e2e:secure", "--consistency", "ALL", "--json")
    assert res.returncode == 0, res.stderr
    assert [s["value"] for s in json.loads(res.stdout)["siblings"]] == ["v1"]


def test_a_readonly_user_reads_but_may_not_write(secure_cluster: SecureCluster) -> None:
    c = secure_cluster
    assert c.kv_as("alice", "put", "e2e:ro", "mine").returncode == 0
    res = c.kv_as("bob", "get", "e2e:ro", "--json")
    assert res.returncode == 0, res.stderr
    res = c.kv_as("bob", "put", "e2e:ro", "bobs")
    assert res.returncode == 1 and "PermissionDenied" in res.stderr, res.stderr
    assert "readonly" in res.stderr
    res = c.kv_as("bob", "user", "add", "eve", "--role", "admin", "--password-file",
                  str(c.certs / "bob.pw"))
    assert res.returncode == 1 and "PERMISSION_DENIED" in res.stderr, res.stderr
    res = c.kv_as("alice", "get", "e2e:ro", "--json")
    assert [s["value"] for s in json.loads(res.stdout)["siblings"]] == ["mine"]


def test_the_dashboard_reaches_every_member_over_mutual_tls(
        secure_cluster: SecureCluster) -> None:
    url = f"http://127.0.0.1:{secure_cluster.metrics['n1']}/api/cluster"
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(url, timeout=10) as resp:
            nodes = json.loads(resp.read())["nodes"]
        errors = {n["node_id"]: n["error"] for n in nodes if n.get("error")}
        if not errors or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not errors, errors
    assert sorted(n["node_id"] for n in nodes) == ["n1", "n2", "n3"]
