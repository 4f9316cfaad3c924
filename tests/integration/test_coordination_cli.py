"""`kv meta`, `kv lease`, `kv lock`, `kv elect` against three real raft voters (issue 11):
every command, its --json, and bad input (unknown lease, expired lease, bad ids, bad token
syntax) with clear errors and the documented exit codes. One cluster for the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import kv_in_process as kv
from conftest import start_cluster
from foreground import as_foreground

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def eps(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("coord"),
                            extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
    try:
        yield ",".join(cluster.endpoints())
    finally:
        cluster.stop()




def jkv(eps: str, *args: str) -> tuple[int, dict]:
    r = kv(eps, *args, "--json")
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}


def test_meta_commands_and_revisions(eps) -> None:
    code, put = jkv(eps, "meta", "put", "cfg/x", "1")
    assert code == 0 and put["ok"] and put["revision"] > 0 and put["previous"] is None
    code, got = jkv(eps, "meta", "get", "cfg/x")
    assert code == 0 and got["kv"]["value"] == "1"
    assert got["kv"]["create_revision"] == got["kv"]["mod_revision"] == put["revision"]
    assert got["revision"] >= put["revision"]
    code, ser = jkv(eps, "meta", "get", "cfg/x", "--serializable")
    assert code == 0 and ser["kv"]["value"] == "1"
    r = kv(eps, "meta", "cas", "cfg/x", "0", "2")
    assert r.returncode == 1 and "compare failed: 'cfg/x' is '1', not '0'" in r.stderr
    code, cas = jkv(eps, "meta", "cas", "cfg/x", "1", "2")
    assert code == 0 and cas["previous"]["value"] == "1"
    code, failed = jkv(eps, "meta", "cas", "cfg/x", "1", "3")
    assert code == 1 and failed["outcome"] == "failed" and failed["current"]["value"] == "2"
    assert kv(eps, "meta", "cas", "--absent", "cfg/y", "-", "y").returncode == 0
    code, rng = jkv(eps, "meta", "get", "cfg/", "--prefix")
    assert [k["key"] for k in rng["kvs"]] == ["cfg/x", "cfg/y"]
    assert kv(eps, "meta", "delete", "cfg/y").returncode == 0
    r = kv(eps, "meta", "get", "cfg/y")
    assert r.returncode == 3 and "not found" in r.stderr
    r = kv(eps, "meta", "put", "", "v")
    assert r.returncode == 2 and "non-empty" in r.stderr and "Traceback" not in r.stderr


def test_leases_attached_keys_and_bad_lease_input(eps) -> None:
    code, lease = jkv(eps, "lease", "grant", "2")
    assert code == 0 and lease["ttl"] == 2
    lid = str(lease["id"])
    assert kv(eps, "meta", "put", "eph/a", "v", "--lease", lid).returncode == 0
    code, ttl = jkv(eps, "lease", "ttl", lid)
    assert code == 0 and 0 < ttl["remaining"] <= 2 and ttl["keys"] == ["eph/a"]
    r = kv(eps, "lease", "keepalive", lid, "--once")
    assert r.returncode == 0 and "kept alive" in r.stdout
    code, listed = jkv(eps, "lease", "list")
    assert any(x["id"] == lease["id"] for x in listed["leases"])
    time.sleep(3.5)  # not kept alive: it expires, and its key with it
    assert kv(eps, "meta", "get", "eph/a").returncode == 3
    for args in (["lease", "ttl", lid], ["lease", "keepalive", lid, "--once"],
                 ["lease", "revoke", lid], ["meta", "put", "k", "v", "--lease", lid]):
        r = kv(eps, *args)
        assert r.returncode == 1 and f"lease {lid} not found" in r.stderr, (args, r.stderr)
    for args in (["lease", "ttl", "abc"], ["lease", "ttl", "0"], ["lease", "grant", "0"],
                 ["lease", "grant", "-5"], ["meta", "put", "k", "v", "--lease", "x"]):
        r = kv(eps, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
    code, lease2 = jkv(eps, "lease", "grant", "30")
    code, revoked = jkv(eps, "lease", "revoke", str(lease2["id"]))
    assert code == 0 and revoked["id"] == lease2["id"]


def test_lock_runs_a_command_with_its_fence_and_tokens_grow(eps, tmp_path) -> None:
    out = tmp_path / "fence"
    r = kv(eps, "lock", "jobs/nightly", "--ttl", "5", "--", sys.executable, "-c",
           "import os, sys; open(sys.argv[1], 'w').write(os.environ['KV_FENCE'])", str(out))
    assert r.returncode == 0, r.stderr
    fence = out.read_text()
    name, token = fence.rsplit(":", 1)
    assert name == "jobs/nightly" and int(token) > 0
    # the fence guards a write to the replicated store
    w = kv(eps, "put", "report:today", "v", "--fence", fence)
    assert w.returncode == 0, w.stderr
    r2 = kv(eps, "lock", "jobs/nightly", "--json", "--", sys.executable, "-c",
            "import sys; sys.exit(7)")
    assert r2.returncode == 7
    second = json.loads(r2.stdout.splitlines()[0])
    assert second["token"] > int(token) and second["fence"] == f"jobs/nightly:{second['token']}"
    # the old token is now refused by the store (exit 4)
    assert kv(eps, "put", "report:today", "w", "--fence", f"jobs/nightly:{second['token']}"
              ).returncode == 0
    stale = kv(eps, "put", "report:today", "x", "--fence", fence)
    assert stale.returncode == 4, stale.stderr
    bad = kv(eps, "put", "report:today", "x", "--fence", "jobs/nightly:notanumber")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert kv(eps, "lock", "", "--", "true").returncode == 2


def test_lock_waiters_are_served_in_order_and_a_held_lock_blocks(eps) -> None:
    env = dict(os.environ)
    holder = subprocess.Popen([sys.executable, "-m", "kvstore", "--endpoints", eps, "lock",
                               "q/lock", "--ttl", "5", "--json"], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        first = json.loads(holder.stdout.readline())
        r = kv(eps, "lock", "q/lock", "--wait", "1", "--", "true")
        assert r.returncode == 1 and "not granted within 1s" in r.stderr
        holder.send_signal(signal.SIGINT)  # releases (revokes its lease)
        holder.wait(timeout=10)
        r = kv(eps, "lock", "q/lock", "--json", "--wait", "5", "--", "true")
        assert r.returncode == 0 and json.loads(r.stdout)["token"] > first["token"]
    finally:
        if holder.poll() is None:
            holder.kill()


@pytest.mark.timeout(90)
def test_elect_and_observe(eps) -> None:
    obs = subprocess.Popen([sys.executable, "-m", "kvstore", "--endpoints", eps, "elect",
                            "svc/sched", "--observe", "--json"], stdout=subprocess.PIPE,
                           text=True)
    camps = []
    try:
        time.sleep(1.0)
        for who in ("a", "b"):
            camps.append(subprocess.Popen(
                [sys.executable, "-m", "kvstore", "--endpoints", eps, "elect", "svc/sched",
                 "--value", who, "--ttl", "3"], stdout=subprocess.PIPE, text=True))
            if who == "a":  # a stands first (a process start can take a second)
                assert camps[0].stdout.readline().startswith("leader a")
        time.sleep(1.0)  # b stands behind a
        camps[0].send_signal(signal.SIGINT)  # a resigns: b leads
        camps[0].wait(timeout=10)
        assert camps[1].stdout.readline().startswith("leader b")
        seen = [json.loads(obs.stdout.readline()) for _ in range(2)]
        assert [s["value"] for s in seen] == ["a", "b"]
        assert seen[0]["revision"] < seen[1]["revision"]
        r = kv(eps, "elect", "svc/sched")
        assert r.returncode == 2 and "--value" in r.stderr
    finally:
        for p in [obs, *camps]:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_watch_prints_changes_in_order_from_a_revision(eps) -> None:
    _code, put = jkv(eps, "meta", "put", "w/a", "1")
    kv(eps, "meta", "put", "w/b", "2")
    kv(eps, "meta", "delete", "w/a")
    proc = subprocess.Popen(as_foreground([
        sys.executable, "-m", "kvstore", "--endpoints", eps, "meta", "watch", "w/", "--prefix",
        "--rev", str(put["revision"]), "--json"]), stdout=subprocess.PIPE, text=True)
    try:
        evs = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [(e["type"], e["kv"]["key"]) for e in evs] == [
            ("PUT", "w/a"), ("PUT", "w/b"), ("DELETE", "w/a")]
        assert evs[0]["revision"] == put["revision"]
        assert [e["revision"] for e in evs] == sorted(e["revision"] for e in evs)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
