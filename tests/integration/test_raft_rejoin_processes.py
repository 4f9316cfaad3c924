"""Issue 10 with real processes: a voter whose data directory was removed must refuse to
start as a voter, with a message that says what to do; the supported way back (remove,
start with --raft-join, add as learner, promote) brings it back with every committed entry.
Every wait is bounded."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import start_cluster
from metahelp import meta_sync

from kvstore.cli.main import cli
from kvstore.cli.raft_cmds import meta_request

pytestmark = pytest.mark.integration


def _status(endpoint: str) -> dict:
    return meta_request([endpoint], {"op": "status", "leader_view": False}, timeout=2.0)


def _leader(cluster, exclude: str = "", timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in cluster.nodes:
            if n.id == exclude or n.id not in cluster.procs:
                continue
            try:
                if _status(n.address).get("role") == "leader":
                    return n.id
            except Exception:
                pass
        time.sleep(0.05)
    raise TimeoutError("no raft leader")


def _refused(cluster, node_id: str, extra: list[str] | None = None) -> str:
    """Start `node_id`; it must exit 1 within 30 s. Returns its last log line."""
    cluster.start_node(node_id, extra)
    proc = cluster.procs.pop(node_id)
    try:
        code = proc.wait(timeout=30)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    lines = Path(cluster.node(node_id).log).read_text().strip().splitlines()
    assert code == 1, f"{node_id} exited {code}:\n" + "\n".join(lines[-15:])
    return lines[-1]


def test_a_wiped_voter_refuses_then_rejoins_through_a_membership_change(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KV_RAFT_SNAPSHOT_EVERY", "50")  # it catches up through a snapshot
    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    try:
        leader = _leader(cluster)
        endpoints = cluster.endpoints()
        written = {}
        for i in range(120):
            r = meta_sync(endpoints, {"op": "put", "key": f"cfg/{i}", "value": f"v{i}"},
                             timeout=5.0)
            assert r.get("ok"), r
            written[f"cfg/{i}"] = f"v{i}"
        victim = next(n for n in ("n1", "n2", "n3") if n != leader)
        cluster.kill(victim, signal.SIGTERM)
        data_dir = Path(cluster.node(victim).data_dir)

        # Only its raft directory is gone: the rest of the data directory shows it lived.
        shutil.rmtree(data_dir / "raft")
        line = _refused(cluster, victim)
        assert line.startswith(f"Error: {victim} is a raft voter (--raft-voters n1,n2,n3) "
                               "but its raft state is missing"), line
        assert "earlier life (members.json" in line and "unsafe" in line

        # The whole data directory is gone: it still must not start as a voter.
        shutil.rmtree(data_dir)
        line = _refused(cluster, victim)
        assert line.startswith(f"Error: {victim} is a raft voter"), line
        assert "--raft-bootstrap was not given" in line and "forget its vote" in line
        for command in (f"`kv raft remove {victim}`", "--raft-join",
                        f"`kv raft add {victim} --learner`", f"`kv raft promote {victim}`"):
            assert command in line, (command, line)

        # Meanwhile the other two keep committing.
        for i in range(120, 150):
            r = meta_sync(endpoints, {"op": "put", "key": f"cfg/{i}", "value": f"v{i}"},
                             timeout=5.0)
            assert r.get("ok"), r
            written[f"cfg/{i}"] = f"v{i}"

        # The way back, with the commands the message names.
        live = ",".join(n.address for n in cluster.nodes if n.id != victim)

        def kv(*args: str):
            return CliRunner().invoke(cli, ["--endpoints", live, *args],
                                      catch_exceptions=False)

        r = kv("raft", "add", victim, "--learner")
        assert r.exit_code == 1 and "remove" in r.output  # still a member: refused, explained
        r = kv("raft", "remove", victim, "--json")
        assert r.exit_code == 0, r.output
        removed = json.loads(r.output)
        assert removed["ok"] and victim not in removed["voters"]
        cluster.start_node(victim, ["--raft-join"])
        cluster.wait_healthy(nodes=[victim], timeout=30)
        assert _status(cluster.node(victim).address).get("joining") is True
        r = kv("raft", "add", victim, "--learner")
        assert r.exit_code == 0 and f"{victim} added as a learner" in r.output, r.output
        deadline = time.monotonic() + 30
        while True:  # a learner is promoted once it has caught up
            r = kv("raft", "promote", victim)
            if r.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.exit_code == 0 and "promoted to voter" in r.output, r.output

        target = _status(cluster.node(leader).address)["commit_index"]
        deadline = time.monotonic() + 30
        s: dict = {}
        while time.monotonic() < deadline:
            s = _status(cluster.node(victim).address)
            if s.get("applied_index", 0) >= target and "joining" not in s:
                break
            time.sleep(0.05)
        assert s.get("applied_index", 0) >= target and "joining" not in s, s
        assert s["snapshot_index"] > 0  # it got the state as a snapshot, then the log
        members = {m["id"]: m["role"] for m in _status(
            cluster.node(leader).address)["members"]}
        assert members[victim] == "follower" and len(members) == 3, members

        # It votes again: with the old leader gone, the group needs it to elect a leader,
        # and every acknowledged write is still there.
        cluster.kill(leader)
        new_leader = _leader(cluster, exclude=leader, timeout=30)
        assert new_leader != leader
        rest = [n.address for n in cluster.nodes if n.id != leader]
        lost = {k: v for k, v in written.items()
                if meta_sync(rest, {"op": "get", "key": k}, timeout=5.0).get("value") != v}
        assert not lost, f"{len(lost)} committed writes lost, e.g. {list(lost)[:3]}"
        print(f"\nraft rejoin: {victim} refused twice, then came back through remove / "
              f"join / learner / promote; applied {s['applied_index']} (snapshot at "
              f"{s['snapshot_index']}); {new_leader} elected with it after {leader} died")
    finally:
        cluster.stop()
