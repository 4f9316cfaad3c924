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
    put = json.loads(ok(c.kv("meta", "put", "e2e/coord/leased", "held", "--lease", lease_id,
                             "--json")))
    assert put["ok"], put
    assert ok(kv_env(c, "meta", "get", "e2e/coord/leased")).strip() == "held"
    ttl = json.loads(ok(c.kv("lease", "ttl", lease_id, "--json")))
    assert 0 < ttl["remaining"] <= 10 and ttl["keys"] == ["e2e/coord/leased"], ttl
    # revoking the lease deletes its key: exit 3 (absent) afterwards
    ok(c.kv("lease", "revoke", lease_id, "--json"))
    assert c.kv("meta", "get", "e2e/coord/leased").returncode == 3

    # kv lock NAME -- COMMAND: the command runs with KV_FENCE=NAME:TOKEN, kv exits with its
    # code, and each holder gets a larger token than the one before.
    proc = kv_env(c, "lock", "e2e/coord/job", "--", "sh", "-c", 'echo "fence=$KV_FENCE"')
    out = ok(proc)
    assert out.startswith("fence=e2e/coord/job:"), (out, proc.stderr)
    assert "acquired e2e/coord/job token" in proc.stderr, proc.stderr
    first_token = int(out.strip().rsplit(":", 1)[1])
    assert c.kv("lock", "e2e/coord/job", "--", "sh", "-c", "exit 7").returncode == 7
    # The lock was released at the end of each run: a holder without a command gets it now
    # (bounded by --wait) and prints its fence as JSON.
    held = subprocess.Popen([*kv_command(), "--endpoints", c.endpoints(), "lock",
                             "e2e/coord/job", "--wait", "20", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        acquired = json.loads(held.stdout.readline() or "{}")
        assert acquired.get("ok") and acquired["token"] > first_token, acquired
        # while it is held, another one with --wait 1 gives up: exit 1
        busy = c.kv("lock", "e2e/coord/job", "--wait", "1", "--", "true")
        assert busy.returncode == 1, (busy.returncode, busy.stderr)
    finally:
        held.terminate()  # SIGTERM: kv releases the lock and exits 0
        rc = held.wait(timeout=30)
        err = held.stderr.read()
    assert rc == 0, (rc, err)


def first_line(proc: subprocess.Popen[str]) -> dict:
    line = proc.stdout.readline() if proc.stdout else ""
    return json.loads(line) if line else {}


def test_elect_campaign_and_observe_bounded(cluster: ComposeCluster) -> None:
    """`kv elect` runs until stopped, so each one here is bounded by coreutils `timeout`
    (exit 124 when it ended them)."""
    c = cluster
    if shutil.which("timeout") is None:
        pytest.skip("coreutils `timeout` is not on PATH")

    def elect(bound: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["timeout", bound, *kv_command(), "--endpoints",
                                 c.endpoints(), "elect", "e2e/coord/svc", *args, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)

    candidate = elect("30", "--value", "host-a")
    try:
        leads = first_line(candidate)
        assert leads.get("ok") and leads["value"] == "host-a", leads
        # a second candidate waits in line while the first leads; an observer sees the
        # current leader first
        second = elect("4", "--value", "host-b")
        observer = elect("4", "--observe")
        second_out, second_err = second.communicate(timeout=30)
        seen, seen_err = observer.communicate(timeout=30)
        assert second.returncode == 124 and second_out == "", \
            (second.returncode, second_out, second_err)
        assert observer.returncode == 124 and seen, (observer.returncode, seen_err)
        assert json.loads(seen.splitlines()[0])["value"] == "host-a", seen
    finally:
        candidate.terminate()  # `timeout` passes SIGTERM on: the leader resigns, exits 0
        rc = candidate.wait(timeout=30)
        err = candidate.stderr.read() if candidate.stderr else ""
    assert rc == 0, (rc, err)
    # after the resignation a new candidate leads at once
    third = elect("30", "--value", "host-c")
    try:
        assert first_line(third).get("value") == "host-c"
    finally:
        third.terminate()
        assert third.wait(timeout=30) == 0


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
    ok(c.kv("txn", "put", "acct:alice=100", "acct:bob=100"))
    proc = c.kv("saga", "run", "docs/examples/transfer.json", "--id", "e2e-transfer",
                "--json", timeout=120)
    rec = json.loads(ok(proc))
    assert rec["ok"] and rec["state"] == "COMMITTED", rec
    status = json.loads(ok(kv_env(c, "saga", "status", "e2e-transfer", "--json")))
    assert status["state"] == "COMMITTED", status
    # run again: the first step's condition (alice holds 100) is false, so it compensates
    # (exit 6) and changes nothing
    again = c.kv("saga", "run", "docs/examples/transfer.json", "--json", timeout=120)
    assert again.returncode == 6, (again.returncode, again.stdout, again.stderr)
    assert json.loads(again.stdout)["state"] == "COMPENSATED", again.stdout
    got = json.loads(ok(c.kv("txn", "get", "acct:alice", "acct:bob", "transfer:1",
                             "--json")))["values"]
    assert {k: v["values"] for k, v in got.items()} == \
        {"acct:alice": ["90"], "acct:bob": ["110"], "transfer:1": ["alice->bob 10"]}, got


def test_bank_workload_keeps_the_total(cluster: ComposeCluster) -> None:
    c = cluster
    proc = kv_env(c, "bench", "--workload", "bank", "--accounts", "5", "--duration", "4s",
                  "--concurrency", "4", "--seed", "7", "--json", timeout=120)
    result = json.loads(ok(proc))
    print(f"\nbank on compose: {result['committed']} committed, {result['aborted']} aborted, "
          f"{result['unknown']} unknown, {result['errors']} errors in "
          f"{result['duration_s']} s; p50 {result['latency_ms']['p50']} ms")
    assert result["total_ok"] and result["reflected_ok"], result
    assert result["total"] == result["expected_total"], result
    assert result["committed"] > 0, result
