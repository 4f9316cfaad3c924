"""Fencing enforced by the store, on real processes (issue 11).

A lock holder is SIGSTOPped past its TTL, a second client acquires the lock and writes, the
first is resumed and its guarded write is refused by the store (exit 4, FENCED). And a
concurrent stale write that slipped onto one replica before the new holder's write reached
it (the other replicas were down, then that replica was paused while the new holder wrote)
is superseded everywhere once the replicas have exchanged their versions.

Locks come from `kv lock` (the Raft lock service, docs/coordination.md): the first holder
runs its work as `kv lock NAME --ttl 2 -- python HOLDER` and gets KV_FENCE; the whole
process group is paused past the TTL, the lease ends on the leader's clock, and the second
holder's `kv lock` is granted a higher token (the revision of its grant). The paused
holder's work is resumed first (before its `kv lock` parent could notice the lost lease and
stop it): its late write under the old token is what the store must refuse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import start_cluster

pytestmark = pytest.mark.integration

LOCK = "jobs/nightly"
KEY = "report:today"
TTL_S = 2.0

# The lock holder: acquires, writes once, says READY, then "works" (it is paused here);
# once resumed and told to go, it writes again under the token it still believes it holds.
HOLDER = textwrap.dedent("""
    import os, subprocess, sys, time
    KV = [sys.executable, "-m", "kvstore"]
    KEY, GO = sys.argv[1:3]

    def kv(*args):
        return subprocess.run([*KV, *args], capture_output=True, text=True, timeout=60)

    fence = os.environ["KV_FENCE"]  # set by `kv lock`: LOCK:TOKEN
    print("PID", os.getpid(), flush=True)
    print("TOKEN", fence.rsplit(":", 1)[1], flush=True)
    first = kv("put", KEY, "a-1", "--fence", fence)
    print("FIRST", first.returncode, first.stderr.strip(), flush=True)
    print("READY", flush=True)
    while not os.path.exists(GO):
        time.sleep(0.02)
    late = kv("put", KEY, "a-2", "--fence", fence)
    print("LATE", late.returncode, late.stderr.strip(), flush=True)
""")

NODE_ARGS = ["--raft-voters", "n1,n2,n3", "--antientropy-interval", "0"]


def kv(endpoints, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KV_ENDPOINTS=",".join(endpoints))
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def acquire(endpoints) -> tuple[subprocess.Popen, int]:
    """The second holder: `kv lock` holding the lock until stopped; its token."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "lock", LOCK, "--ttl", "30", "--json", "--wait", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, KV_ENDPOINTS=",".join(endpoints)))
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)["token"]


def read_line(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the holder exited before {prefix}: {proc.stderr.read()}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise TimeoutError(prefix)


def per_replica(endpoint: str) -> dict[str, list[dict]]:
    """Each replica's versions of KEY (a read at ALL with its trace)."""
    r = kv([endpoint], "get", KEY, "--consistency", "ALL", "--json", "--trace")
    assert r.returncode == 0, r.stderr
    replicas = json.loads(r.stdout)["trace"]["replicas"]
    assert len(replicas) == 3 and all(x["ok"] for x in replicas), replicas
    return {x["node"]: x["versions"] for x in replicas}


def test_a_paused_holders_write_is_refused_and_a_stale_write_is_superseded(tmp_path):
    cluster = start_cluster(tmp_path, extra_args=NODE_ARGS, raft_bootstrap=True)
    everyone = cluster.endpoints()
    n1, n2, n3 = (cluster.node(n).address for n in ("n1", "n2", "n3"))
    holder = second = None
    go = tmp_path / "go"
    try:
        # The first holder acquires and writes under its token.
        holder = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "lock", LOCK, "--ttl", str(TTL_S), "--",
             sys.executable, "-c", HOLDER, KEY, str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env=dict(os.environ, KV_ENDPOINTS=",".join(everyone)))
        work_pid = int(read_line(holder, "PID"))
        old = int(read_line(holder, "TOKEN"))
        assert read_line(holder, "FIRST").startswith("0"), "the holder's first write failed"
        read_line(holder, "READY")
        # ... and is paused (a GC pause, a stalled VM) past its TTL: `kv lock` (which keeps
        # the lease alive) and the work it runs.
        os.killpg(holder.pid, signal.SIGSTOP)
        second, new = acquire(everyone)  # granted once the lease ended on the leader's clock
        assert new > old

        # A stale write under the old token slips onto n1 alone: n2 and n3 are down, so
        # n1 keeps hints for them; it never saw the new token, so it acknowledges it.
        for node in ("n2", "n3"):
            cluster.kill(node, signal.SIGTERM)
        r = kv([n1], "put", KEY, "stale", "--fence", f"{LOCK}:{old}", "--consistency", "ONE",
               "--blind")
        assert r.returncode == 0, r.stderr
        # n1 pauses before handing its hints off; n2 and n3 come back, and the new holder
        # writes there: it reads (at QUORUM) and supersedes what it saw, not the stale write.
        os.kill(cluster.procs["n1"].pid, signal.SIGSTOP)
        try:
            for node in ("n2", "n3"):
                cluster.start_node(node)
            cluster.wait_healthy(nodes=["n2", "n3"])
            r = kv([n2, n3], "put", KEY, "b-1", "--fence", f"{LOCK}:{new}", "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["context_read"]["siblings"] == 1  # a-1 only
            r = kv([n2], "get", KEY, "--consistency", "TWO", "--json", "--trace")
            data = json.loads(r.stdout)
            assert [v["value"] for v in data["siblings"]] == ["b-1"]
            assert all("stale" not in [v["value"] for v in x["versions"]]
                       for x in data["trace"]["replicas"]), "the stale write reached n2/n3"
        finally:
            os.kill(cluster.procs["n1"].pid, signal.SIGCONT)

        # After handoff and repair every replica holds the stale version, fenced out, and
        # every read through every node returns the new holder's value only.
        cluster.wait_healthy()
        repaired = kv(everyone, "repair", "--json")
        assert repaired.returncode == 0, repaired.stderr
        for endpoint in everyone:
            held = per_replica(endpoint)
            for node, versions in held.items():
                shown = {v["value"]: v for v in versions}
                assert shown["stale"].get("fenced_out") is True, (node, versions)
                assert not shown["b-1"].get("fenced_out"), (node, versions)
            r = kv([endpoint], "get", KEY, "--consistency", "ALL")
            assert r.returncode == 0 and r.stdout.strip() == "b-1", (endpoint, r)

        # The first holder resumes and writes under the token it still believes it holds:
        # refused by the store, nothing written.
        go.touch()
        os.kill(work_pid, signal.SIGCONT)  # the work first: its `kv lock` is still paused
        late = read_line(holder, "LATE")
        code, _, error = late.partition(" ")
        assert code == "4", late
        assert f"lock '{LOCK}' token {old} is below the highest token seen for it ({new})" \
            in error, error
        assert "nothing was written" in error, error
        os.killpg(holder.pid, signal.SIGCONT)
        assert holder.wait(timeout=30) == 1  # `kv lock` found its lease gone
        assert "ended while held" in holder.stderr.read()
        for endpoint in everyone:
            r = kv([endpoint], "get", KEY, "--consistency", "ALL")
            assert r.stdout.strip() == "b-1", (endpoint, r)

        # The new holder's next read-modify-write supersedes the stale version for good.
        assert kv(everyone, "put", KEY, "b-2", "--fence", f"{LOCK}:{new}",
                  "--consistency", "ALL").returncode == 0
        assert kv(everyone, "repair").returncode == 0
        for node, versions in per_replica(n3).items():
            assert [v["value"] for v in versions] == ["b-2"], (node, versions)
    finally:
        if holder is not None and holder.poll() is None:
            os.killpg(holder.pid, signal.SIGCONT)
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
        if second is not None and second.poll() is None:
            second.send_signal(signal.SIGINT)
            second.wait(timeout=10)
        for proc in cluster.procs.values():  # never leave a node stopped
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        cluster.stop()
