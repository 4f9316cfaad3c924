"""Three real Raft voters: SIGKILL the leader under a metadata write load. A new leader is
elected, no acknowledged write is lost, and the killed node rejoins and catches up through
a snapshot (it is far behind)."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import start_cluster
from metahelp import meta_sync

from kvstore.cli.raft_cmds import meta_request

pytestmark = pytest.mark.integration


def _status(endpoint: str) -> dict:
    return meta_request([endpoint], {"op": "status", "leader_view": False}, timeout=2.0)


def _leader(cluster, exclude: str = "", timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in cluster.nodes:
            if n.id == exclude:
                continue
            try:
                s = _status(n.address)
            except Exception:
                continue
            if s.get("role") == "leader":
                return n.id
        time.sleep(0.05)
    raise TimeoutError("no raft leader")


def test_leader_sigkill_under_write_load(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KV_RAFT_SNAPSHOT_EVERY", "50")
    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    stop = threading.Event()
    try:
        leader = _leader(cluster)
        endpoints = cluster.endpoints()
        acked: dict[str, str] = {}
        ack_times: list[tuple[float, str]] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                key, value = f"w{w}-{i}", f"v{i}"
                try:
                    r = meta_sync(endpoints, {"op": "put", "key": key, "value": value},
                                     timeout=1.0)
                except Exception:
                    r = {"ok": False}
                if r.get("ok"):
                    with lock:
                        acked[key] = value
                        ack_times.append((time.monotonic(), r.get("leader")))
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 100:
            assert time.monotonic() < deadline, f"only {len(acked)} writes acknowledged"
            time.sleep(0.02)
        before = len(acked)
        killed_at = time.monotonic()
        cluster.kill(leader)
        new_leader = _leader(cluster, exclude=leader)
        elected_at = time.monotonic()
        def by_new_leader() -> list[float]:
            return [t for t, who in list(ack_times) if who == new_leader]

        while not by_new_leader() and time.monotonic() < killed_at + 30:
            time.sleep(0.01)
        assert by_new_leader(), "the new leader acknowledged no write"
        first_ack = min(by_new_leader())
        deadline = time.monotonic() + 60
        while len(acked) < before + 300:  # the dead node falls far behind (snapshots every 50)
            assert time.monotonic() < deadline, f"writes stalled at {len(acked)} after failover"
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        print(f"\nraft failover: leader {leader} SIGKILLed; {new_leader} leads after "
              f"{(elected_at - killed_at) * 1000:.0f} ms; its first acknowledged write "
              f"{(first_ack - killed_at) * 1000:.0f} ms after the kill; "
              f"{len(acked)} writes acknowledged")

        lost = []
        for key, value in sorted(acked.items()):
            r = meta_sync(endpoints, {"op": "get", "key": key}, timeout=3.0)
            if r.get("value") != value:
                lost.append((key, value, r))
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"

        target = _status(cluster.node(new_leader).address)["commit_index"]
        cluster.start_node(leader)
        cluster.wait_healthy(nodes=[leader], timeout=30)
        deadline = time.monotonic() + 30
        s = {}
        while time.monotonic() < deadline:
            s = _status(cluster.node(leader).address)
            if s.get("applied_index", 0) >= target:
                break
            time.sleep(0.05)
        assert s.get("applied_index", 0) >= target, s
        assert s["snapshot_index"] > 0  # it caught up from a snapshot, not from log replay
        print(f"raft rejoin: {leader} applied {s['applied_index']} (snapshot at "
              f"{s['snapshot_index']})")
    finally:
        stop.set()  # writer threads end even if an assertion failed
        cluster.stop()


def test_meta_and_raft_status_commands(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from kvstore.cli.main import cli

    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    try:
        leader = _leader(cluster)
        ep = ",".join(cluster.endpoints())
        run = CliRunner().invoke

        def kv(*args: str):
            return run(cli, ["--endpoints", ep, *args], catch_exceptions=False)

        assert kv("meta", "put", "cfg/a", "1").exit_code == 0
        r = kv("meta", "get", "cfg/a")
        assert (r.exit_code, r.output.strip()) == (0, "1")
        assert kv("meta", "get", "cfg/missing").exit_code == 3
        r = kv("meta", "cas", "cfg/a", "0", "2")
        assert r.exit_code == 1 and "compare failed" in r.output
        assert kv("meta", "cas", "cfg/a", "1", "2").exit_code == 0
        assert kv("meta", "cas", "--absent", "cfg/b", "-", "x").exit_code == 0
        assert kv("meta", "get", "cfg/b").output.strip() == "x"
        r = kv("raft", "status", "--json")
        assert r.exit_code == 0
        s = json.loads(r.output)
        assert s["leader"] == leader and s["term"] >= 2
        assert s["commit_index"] >= 3 and s["applied_index"] >= 3
        assert {m["id"] for m in s["members"]} == {"n1", "n2", "n3"}
        assert all(isinstance(m["match_index"], int) for m in s["members"])
        r = kv("raft", "status")
        assert r.exit_code == 0 and f"leader {leader}" in r.output and "match index" in r.output
    finally:
        cluster.stop()
