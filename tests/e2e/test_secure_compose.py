"""What only the secure compose profile has (docker-compose.yml + docker-compose.secure.yml,
issue 16): mutual TLS between nodes on a private peer port, TLS and authentication for
clients, roles.

The cluster is conftest's secure one (`secure_cluster`: the session's, which the compose
tests of test_compose.py and test_compose_coordination.py run on as well, under the
project `kvstore-e2e-secure-HASH`, never sharing containers, networks or volumes with the
default cluster's), on the image the session built, with a throwaway CA; its first admin
(`root`) was made with n1's node certificate on its peer port, as docs/security.md says,
and then a readwrite (`alice`) and a readonly (`bob`) user. From the host:
* a plaintext client is refused (the client port speaks TLS only);
* a TLS client without credentials is refused with Unauthenticated;
* a client with the CA and a readwrite user's token writes and reads at QUORUM and ALL;
* a readonly user reads but its write is refused (PermissionDenied), and so is its
  `kv user add` (admin only);
* a node's dashboard gathers every member over mutual TLS on the peer port.
Always torn down (`down -v`), and checked that nothing of the project is left (conftest).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from .conftest import ComposeCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SecureCluster = ComposeCluster  # conftest's, on the secure profile


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
