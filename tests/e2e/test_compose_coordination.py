"""Coordination (issue 11) and transactions (issue 12) against the compose cluster, from the
host, as a user types them: `kv lease/lock/elect/meta`, `kv txn`, `kv saga run` and the bank
workload, through the published ports only (--endpoints or KV_ENDPOINTS).

The compose cluster runs the Raft metadata group on n1..n3 (make docker-up creates it), which
every one of these commands goes through; the nodes' own addresses (nN:7001) do not resolve
on the host, so a command that followed a node-reported address instead of the endpoints it
was given fails here. One cluster for the module (conftest's compose_cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from .conftest import ROOT, ComposeCluster, kv_command, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

LEADER_TIMEOUT = 60.0


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (f"kv failed ({proc.returncode}):\nstdout: {proc.stdout}\n"
                                  f"stderr: {proc.stderr.strip()}")
    return proc.stdout


def kv_env(c: ComposeCluster, *args: str, timeout: float = 60,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The kv CLI on the host with KV_ENDPOINTS (no --endpoints), optionally under a
    prefix such as `timeout 5`."""
    env = {**os.environ, "KV_ENDPOINTS": c.endpoints()}
    return run([*prefix, *kv_command(), *args], timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def cluster(compose_cluster: ComposeCluster) -> ComposeCluster:
    """The compose cluster once its Raft group has a leader (everything here needs it)."""
    c = compose_cluster
    start = time.monotonic()
    while True:
        proc = c.kv("raft", "status", "--json")
        if proc.returncode == 0 and json.loads(proc.stdout).get("leader"):
            break
        assert time.monotonic() - start < LEADER_TIMEOUT, \
            f"no raft leader within {LEADER_TIMEOUT:.0f}s: {proc.stdout} {proc.stderr}"
        time.sleep(0.5)
    print(f"\nraft leader known {time.monotonic() - start:.1f}s after the cluster was healthy")
    return c


def test_lease_meta_and_lock_with_fencing_from_the_host(cluster: ComposeCluster) -> None:
    c = cluster
    granted = json.loads(ok(c.kv("lease", "grant", "10", "--json")))
    assert granted["ok"] and granted["id"] > 0 and granted["ttl"] == 10, granted
    lease_id = str(granted["id"])
    # plain output is the id alone (scripts do LEASE=$(kv lease grant 10))
    assert ok(kv_env(c, "lease", "grant", "10")).strip().isdigit()
    put = json.loads(ok(c.kv("meta", "put", "e2e/coord/leased", "held", "--lease", lease_id,
                             "--json")))
    assert put["ok"], put
    assert ok(kv_env(c, "meta", "get", "e2e/coord/leased")).strip() == "held"
    got = json.loads(ok(c.kv("meta", "get", "e2e/coord/leased", "--json")))
    assert json.dumps(got).count(lease_id) >= 1, got  # the key carries its lease
    ttl = json.loads(ok(c.kv("lease", "ttl", lease_id, "--json")))
    assert 0 < ttl["remaining"] <= 10, ttl
    # revoking the lease deletes its key: exit 3 (absent) afterwards
    ok(c.kv("lease", "revoke", lease_id, "--json"))
    assert c.kv("meta", "get", "e2e/coord/leased").returncode == 3

    # kv lock NAME -- COMMAND: the command runs with KV_FENCE=NAME:TOKEN, kv exits with its
    # code, and each holder gets a larger token than the one before.
    tokens = []
    for _ in range(2):
        proc = kv_env(c, "lock", "e2e/coord/job", "--", "sh", "-c", 'echo "fence=$KV_FENCE"')
        out = ok(proc)
        fence = out.strip().removeprefix("fence=")
        assert out.startswith("fence=e2e/coord/job:"), (out, proc.stderr)
        assert "acquired e2e/coord/job token" in proc.stderr, proc.stderr
        tokens.append(int(fence.rsplit(":", 1)[1]))
    assert tokens[0] < tokens[1], tokens
    assert c.kv("lock", "e2e/coord/job", "--", "sh", "-c", "exit 7").returncode == 7
    # The lock was released at the end of each run: a holder without a command gets it now
    # (bounded by --wait) and prints its fence as JSON.
    held = subprocess.Popen([*kv_command(), "--endpoints", c.endpoints(), "lock",
                             "e2e/coord/job", "--wait", "20", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = held.stdout.readline()
        acquired = json.loads(line)
        assert acquired["ok"] and acquired["token"] > tokens[1], acquired
        # while it is held, another one with --wait 1 gives up: exit 1
        busy = c.kv("lock", "e2e/coord/job", "--wait", "1", "--", "true")
        assert busy.returncode == 1, (busy.returncode, busy.stderr)
    finally:
        held.terminate()  # SIGTERM: kv releases the lock and exits 0
        rc = held.wait(timeout=30)
        err = held.stderr.read()
    assert rc == 0, (rc, err)


def test_elect_campaign_and_observe_bounded(cluster: ComposeCluster) -> None:
    c = cluster
    if shutil.which("timeout") is None:
        pytest.skip("coreutils `timeout` is not on PATH")
    candidate = subprocess.Popen(["timeout", "30", *kv_command(), "--endpoints",
                                  c.endpoints(), "elect", "e2e/coord/svc", "--value",
                                  "host-a", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
    try:
        leads = json.loads(candidate.stdout.readline())
        assert leads["ok"] and leads["value"] == "host-a", leads
        # a second candidate waits in line while the first leads: `timeout` ends it (124)
        second = kv_env(c, "elect", "e2e/coord/svc", "--value", "host-b", "--json",
                        prefix=("timeout", "3"))
        assert second.returncode == 124 and second.stdout == "", \
            (second.returncode, second.stdout, second.stderr)
        # an observer sees the current leader first
        seen = kv_env(c, "elect", "e2e/coord/svc", "--observe", "--json",
                      prefix=("timeout", "3"))
        assert seen.returncode == 124, (seen.returncode, seen.stderr)
        first = json.loads(seen.stdout.splitlines()[0])
        assert first["value"] == "host-a", seen.stdout
    finally:
        candidate.terminate()  # the leader resigns (its lease revoked) and exits 0
        rc = candidate.wait(timeout=30)
        err = candidate.stderr.read()
    assert rc == 0, (rc, err)
    # after the resignation a new candidate leads at once
    third = kv_env(c, "elect", "e2e/coord/svc", "--value", "host-c", "--json",
                   prefix=("timeout", "5"))
    assert third.returncode == 124, (third.returncode, third.stderr)
    assert json.loads(third.stdout.splitlines()[0])["value"] == "host-c", third.stdout


def test_txn_put_get_status_and_refused_condition(cluster: ComposeCluster) -> None:
    c = cluster
    put = json.loads(ok(c.kv("txn", "put", "e2e:a=1", "e2e:b=2", "--json")))
    assert put["ok"] and put["state"] == "COMMITTED", put
    got = json.loads(ok(kv_env(c, "txn", "get", "e2e:a", "e2e:b", "--json")))
    assert {k: v["values"] for k, v in got["values"].items()} == \
        {"e2e:a": ["1"], "e2e:b": ["2"]}, got
    status = json.loads(ok(c.kv("txn", "status", put["txn_id"], "--json")))
    assert status["found"] and status["state"] == "COMMITTED", status
    # --if-absent on a key that exists: ABORTED (exit 1), and nothing of it applied
    refused = c.kv("txn", "put", "e2e:a=9", "e2e:c=9", "--if-absent", "e2e:a", "--json")
    assert refused.returncode == 1, (refused.returncode, refused.stdout, refused.stderr)
    out = json.loads(refused.stdout)
    assert not out["ok"] and out["state"] == "ABORTED", out
    after = json.loads(ok(c.kv("txn", "get", "e2e:a", "e2e:c", "--json")))["values"]
    assert after["e2e:a"]["values"] == ["1"] and not after["e2e:c"]["found"], after
    # the plain KV API sees the transaction's writes too
    got = json.loads(ok(c.kv("get", "e2e:b", "--consistency", "QUORUM", "--json")))
    assert [s["value"] for s in got["siblings"]] == ["2"], got


def test_saga_transfer_example_commits(cluster: ComposeCluster) -> None:
    c = cluster
    # the README's saga lines: open the accounts, run docs/examples/transfer.json
    ok(c.kv("put", "acct:alice", "100", "--consistency", "QUORUM"))
    ok(c.kv("put", "acct:bob", "100", "--consistency", "QUORUM"))
    proc = c.kv("saga", "run", "docs/examples/transfer.json", "--id", "e2e-transfer",
                "--json", timeout=120)
    rec = json.loads(ok(proc))
    assert rec["ok"] and rec["state"] == "COMMITTED", rec
    status = json.loads(ok(kv_env(c, "saga", "status", "e2e-transfer", "--json")))
    assert status["state"] == "COMMITTED", status
    for key, value in (("acct:alice", "90"), ("acct:bob", "110"),
                       ("transfer:1", "alice->bob 10")):
        assert ok(c.kv("get", key, "--consistency", "QUORUM")).strip() == value, key
    # run again: the first step's condition (alice holds 100) fails, so it compensates:
    # exit 6, nothing changed
    again = c.kv("saga", "run", "docs/examples/transfer.json", "--json", timeout=120)
    assert again.returncode == 6, (again.returncode, again.stdout, again.stderr)
    assert json.loads(again.stdout)["state"] == "COMPENSATED", again.stdout
    assert ok(c.kv("get", "acct:alice", "--consistency", "QUORUM")).strip() == "90"


def test_bank_workload_keeps_the_total(cluster: ComposeCluster) -> None:
    c = cluster
    proc = kv_env(c, "bench", "--workload", "bank", "--accounts", "5", "--duration", "5s",
                  "--concurrency", "4", "--seed", "7", "--json", timeout=120)
    result = json.loads(ok(proc))
    print(f"\nbank on compose: {result['committed']} committed, {result['aborted']} aborted, "
          f"{result['unknown']} unknown, {result['errors']} errors in "
          f"{result['duration_s']} s; p50 {result['latency_ms']['p50']} ms")
    assert result["total_ok"] and result["reflected_ok"], result
    assert result["total"] == result["expected_total"], result
    assert result["committed"] > 0, result
