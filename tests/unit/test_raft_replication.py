"""Raft paper section 5.3 (log replication): consistency check, conflict repair with fast
back-off, batching and pipelining."""

from __future__ import annotations

from kvstore.core.raft import MsgType, ProgressState
from kvstore.core.raft.testing import MemCluster


def test_entries_commit_and_apply_in_the_same_order_everywhere() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    c.elect("a")
    for i in range(10):
        c.propose("a", f"e{i}".encode())
    want = [f"e{i}".encode() for i in range(10)]
    assert all(c.data(n) == want for n in c.nodes)


def test_nothing_commits_without_a_majority() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    c.isolate("b")
    c.isolate("c")
    commit = lead.commit
    c.propose("a", b"x")
    assert lead.commit == commit and c.data("a") == []
    c.heal()
    c.tick("a")
    assert c.data("a") == [b"x"]


def test_conflicting_uncommitted_suffix_is_replaced() -> None:
    c = MemCluster(["a", "b", "c"], seed=2)
    c.elect("a")
    c.isolate("a")
    for i in range(5):
        c.nodes["a"].propose(f"lost{i}".encode())  # never committed
    c.stabilize()
    c.elect("b")
    c.propose("b", b"kept")
    c.heal()
    c.tick(n=3)
    assert all(c.data(n) == [b"kept"] for n in c.nodes)
    a, b = c.nodes["a"], c.nodes["b"]
    assert a.entries_from(1, a.last_index()) == b.entries_from(1, b.last_index())


def test_fast_backoff_repairs_a_long_divergent_log_in_few_round_trips() -> None:
    c = MemCluster(["a", "b", "c"], seed=3, max_entries_per_msg=100)
    c.elect("a")
    c.isolate("a")
    for i in range(60):
        c.nodes["a"].propose(f"stale{i}".encode())
    c.stabilize()
    c.elect("b")
    for i in range(60):
        c.nodes["b"].propose(f"new{i}".encode())
    c.stabilize()
    c.crash("b")
    c.heal()
    c.sent.clear()
    c.elect("c")  # its first probe for a is at index 66, far above a's conflicting entries
    c.tick("c")
    rejects = [m for m in c.sent if m.type is MsgType.APP_RESP and m.reject and m.frm == "a"]
    assert len(rejects) == 1  # one hint jumps over 60 conflicting entries (not 60 round trips)
    assert c.data("a") == [f"new{i}".encode() for i in range(60)]


def test_leader_batches_and_pipelines_without_waiting_for_acks() -> None:
    c = MemCluster(["a", "b", "c"], seed=4, max_entries_per_msg=4, max_inflight=3)
    lead = c.elect("a")
    assert lead.progress["b"].state is ProgressState.REPLICATE
    c.sent.clear()
    for i in range(20):
        lead.propose(f"p{i}".encode())
    c.process("a")
    apps = [m for m in c.sent if m.type is MsgType.APP and m.to == "b" and m.entries]
    assert len(apps) == 3  # three batches in flight at once, no ack yet: flow control
    assert all(1 <= len(m.entries) <= 4 for m in apps) and len(apps[0].entries) > 1
    c.stabilize()
    assert len(c.data("b")) == 20


def test_lost_append_in_replicate_state_is_recovered() -> None:
    c = MemCluster(["a", "b", "c"], seed=5, max_inflight=2)
    c.elect("a")
    dropped = []

    def drop_first_two(m):
        if m.type is MsgType.APP and m.to == "b" and m.entries and len(dropped) < 2:
            dropped.append(m)
            return True
        return False

    c.drop = drop_first_two
    for i in range(6):
        c.propose("a", f"x{i}".encode())
    c.drop = None
    c.tick(n=3)
    assert len(dropped) == 2 and len(c.data("b")) == 6
