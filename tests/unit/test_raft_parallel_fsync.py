"""The leader writes in parallel with its followers (Ongaro's thesis 10.2.1): its appends
may leave before its own write is durable (`Ready.send_first`), and it counts itself
toward the commit quorum only once `advance()` reports the write durable."""

from __future__ import annotations

import pytest

from kvstore.core.raft import Message, MsgType
from kvstore.core.raft.testing import MemCluster


def _leader_ready_in_flight(c: MemCluster):
    """Leader a proposes one entry; returns (index, its Ready - not yet persisted - and
    the appends it may send first)."""
    lead = c.nodes["a"]
    index = lead.propose(b"x")
    rd = lead.ready()
    assert rd.send_first and [e.index for e in rd.entries] == [index]
    apps = [m for m in rd.messages if m.type is MsgType.APP and m.entries]
    assert sorted(m.to for m in apps) == ["b", "c"]
    return index, rd, apps


def _follower_acks(c: MemCluster, m: Message) -> list[Message]:
    """Deliver an append to a follower, run its driver (persist, then send) and return the
    acknowledgements it sent."""
    f = c.nodes[m.to]
    f.step(m)
    acks = []
    while f.has_ready():
        rd = f.ready()
        assert not rd.send_first  # a follower acknowledges only what it has persisted
        c.durable[m.to].save(rd.snapshot, rd.hard_state, rd.entries)
        acks += [x for x in rd.messages if x.type is MsgType.APP_RESP]
        f.advance(rd)
    return acks


def test_one_follower_and_the_unsynced_leader_do_not_commit() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    index, rd, apps = _leader_ready_in_flight(c)
    for ack in _follower_acks(c, next(m for m in apps if m.to == "b")):
        lead.step(ack)
    assert lead.commit < index  # b has it on disk, a only in memory: no quorum
    assert lead.progress["a"].match < index
    c.durable["a"].save(rd.snapshot, rd.hard_state, rd.entries)  # a's fsync completes
    lead.advance(rd)
    assert lead.progress["a"].match == index and lead.commit == index


def test_the_followers_commit_while_the_leader_is_still_writing() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    index, rd, apps = _leader_ready_in_flight(c)
    for m in apps:
        for ack in _follower_acks(c, m):
            lead.step(ack)
    assert lead.commit == index  # b and c hold it durably: a quorum without the leader
    assert lead.progress["a"].match < index
    assert all(e.index < index for e in rd.committed)  # nothing applied before a's write
    lead.advance(rd)
    rd2 = lead.ready()
    assert [e.index for e in rd2.committed] == [index]  # applied once a's write is done


def test_a_group_of_one_commits_at_advance() -> None:
    c = MemCluster(["a"], seed=1)
    lead = c.elect("a")
    index = lead.propose(b"x")
    rd = lead.ready()
    assert lead.commit < index and not rd.committed
    lead.advance(rd)
    assert lead.commit == index


def test_counting_an_unsynced_entry_trips_the_assertion() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    index = lead.propose(b"x")
    lead.progress["a"].match = index  # what the code before 10.2.1 did at append time
    with pytest.raises(AssertionError, match=r"only \d+ is durable"):
        lead._maybe_commit()
