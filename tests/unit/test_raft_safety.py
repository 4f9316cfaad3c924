"""Raft paper section 5.4 (safety) and section 8 (linearizable reads without the log)."""

from __future__ import annotations

from kvstore.core.raft import MsgType, NotLeaderError, Role
from kvstore.core.raft.testing import MemCluster


def test_partitioned_old_leader_cannot_commit() -> None:
    c = MemCluster(["a", "b", "c", "d", "e"], seed=1)
    old = c.elect("a")
    c.propose("a", b"before")
    c.partition(["a", "b"], ["c", "d", "e"])
    commit = old.commit
    old.propose(b"doomed")
    for _ in range(5):
        c.tick("a")
        c.tick("b")
    assert old.commit == commit and b"doomed" not in c.data("a")
    new = c.elect("c")
    c.propose("c", b"after")
    c.heal()
    c.tick(n=3)
    assert old.role is Role.FOLLOWER and old.lead == "c" and new.role is Role.LEADER
    for n in c.nodes:
        assert c.data(n) == [b"before", b"after"], n


def test_only_current_term_entries_commit_by_counting() -> None:
    """Figure 8: an entry from an earlier term on a majority is not yet committed."""
    c = MemCluster(["a", "b", "c"], seed=2, max_entries_per_msg=1)
    a = c.elect("a")  # term 2; noop at index 4
    c.isolate("a")
    x = a.propose(b"x")  # index 5, term 2, only on a
    c.stabilize()
    c.crash("a")
    c.restart("a")
    c.heal()
    # Re-elect a in term 3 but let only the append carrying x reach b; its term-3 noop
    # (index 6) stays behind.
    c.drop = lambda m: (m.type is MsgType.APP and m.index >= x
                        and c.nodes[m.to].last_index() >= x)
    a = c.elect("a")
    assert a.term == 3 and a.progress["b"].match >= x  # x (term 2) is on a majority...
    assert a.commit < x  # ...but is not committed by counting replicas
    c.drop = None
    c.tick("a")
    assert a.commit >= x + 1  # committed together with the term-3 entry
    assert c.data("b") == [b"x"]


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    c = MemCluster(["a", "b", "c"], seed=3)
    lead = c.elect("a")
    c.propose("a", b"w")
    lead.read_index(b"r1")
    c.process("a")
    assert c.read_states["a"] == []  # no answer before a majority confirmed leadership
    c.stabilize()
    (rs,) = c.read_states["a"]
    assert rs.context == b"r1" and rs.index == lead.commit


def test_partitioned_old_leader_never_answers_a_read() -> None:
    c = MemCluster(["a", "b", "c"], seed=4)
    old = c.elect("a")
    c.isolate("a")
    old.read_index(b"stale?")
    c.elect("b")
    c.propose("b", b"newer")
    for _ in range(30):
        c.tick("a")
    assert c.read_states["a"] == []
    assert old.role is not Role.LEADER  # check-quorum made it step down; the read is dropped
    try:
        old.read_index(b"again")
        raise AssertionError("a follower must refuse reads")
    except NotLeaderError as exc:
        assert "not the raft leader" in str(exc)


def test_new_leader_defers_reads_until_it_commits_in_its_term() -> None:
    c = MemCluster(["a", "b", "c"], seed=5)
    c.drop = lambda m: m.type is MsgType.APP  # the noop cannot commit yet
    c.nodes["a"]._hup(transfer=True)
    c.stabilize()
    lead = c.nodes["a"]
    assert lead.role is Role.LEADER and lead.term_at(lead.commit) != lead.term
    lead.read_index(b"early")
    c.stabilize()
    assert c.read_states["a"] == []
    c.drop = None
    c.tick("a")
    assert [r.context for r in c.read_states["a"]] == [b"early"]


def test_lease_reads_answer_without_a_round_trip() -> None:
    c = MemCluster(["a", "b", "c"], seed=6, lease_reads=True)
    lead = c.elect("a")
    c.sent.clear()
    lead.read_index(b"fast")
    c.process("a")
    assert [r.context for r in c.read_states["a"]] == [b"fast"]
    assert not [m for m in c.sent if m.type is MsgType.HEARTBEAT]
