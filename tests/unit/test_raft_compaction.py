"""Raft paper section 7: snapshots, log compaction and InstallSnapshot."""

from __future__ import annotations

from kvstore.core.raft import MsgType
from kvstore.core.raft.testing import MemCluster


def test_snapshot_compacts_the_log_and_survives_restart() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    for i in range(20):
        c.propose("a", f"e{i}".encode())
    snap = c.snapshot("b", keep=2)
    b = c.nodes["b"]
    assert snap.index == b.applied and b.first_index() == snap.index - 1
    assert snap.conf.voters == {"a", "b", "c"}
    c.crash("b")
    b = c.restart("b")
    assert b.snapshot.index == snap.index and b.commit >= snap.index
    c.propose("a", b"after restart")
    assert c.data("b") == c.data("a") and lead.role.value == "leader"


def test_lagging_follower_catches_up_through_install_snapshot() -> None:
    c = MemCluster(["a", "b", "c"], seed=2)
    c.elect("a")
    c.isolate("c")
    for i in range(30):
        c.propose("a", f"e{i}".encode())
    c.snapshot("a")  # the entries c needs are gone from a's log
    c.heal()
    c.tick("a", n=2)
    snaps = [m for m in c.sent if m.type is MsgType.SNAP and m.to == "c"]
    assert len(snaps) == 1
    assert c.data("c") == c.data("a") and c.nodes["c"].commit == c.nodes["a"].commit
    c.propose("a", b"after")
    assert c.data("c")[-1] == b"after"


def test_lost_snapshot_is_sent_again() -> None:
    c = MemCluster(["a", "b", "c"], seed=3)
    c.elect("a")
    c.isolate("c")
    for i in range(10):
        c.propose("a", f"e{i}".encode())
    c.snapshot("a")
    c.heal()
    lost = []
    c.drop = lambda m: m.type is MsgType.SNAP and not lost and not lost.append(m)
    for _ in range(15):
        c.tick("a")
    assert len(lost) == 1 and c.data("c") == c.data("a")
