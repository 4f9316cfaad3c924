"""Raft paper section 5.2 (leader election), plus pre-vote and check-quorum (thesis 9.6)."""

from __future__ import annotations

import random

from kvstore.core.raft import Config, Message, MsgType, RaftNode, Role
from kvstore.core.raft.testing import MemCluster


def test_ticking_elects_exactly_one_leader_that_everybody_follows() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    for _ in range(40):
        c.tick()
        if c.leaders():
            break
    assert len(c.leaders()) == 1
    lead = c.nodes[c.leaders()[0]]
    assert all(n.lead == lead.id and n.term == lead.term for n in c.nodes.values())


def test_five_nodes_elect_after_leader_crash() -> None:
    c = MemCluster(["a", "b", "c", "d", "e"], seed=3)
    c.elect("a")
    c.crash("a")
    for _ in range(60):
        c.tick()
        if c.leaders():
            break
    assert len(c.leaders()) == 1 and c.leaders()[0] != "a"


def test_a_vote_is_granted_once_per_term() -> None:
    n = RaftNode(Config("a", pre_vote=False), random.Random(0), bootstrap_voters=["a", "b", "c"])
    n.step(Message(MsgType.VOTE, "a", "b", term=5, index=3, log_term=1))
    n.step(Message(MsgType.VOTE, "a", "c", term=5, index=3, log_term=1))
    rd = n.ready()
    grants = {m.to: not m.reject for m in rd.messages if m.type is MsgType.VOTE_RESP}
    assert grants == {"b": True, "c": False}
    assert rd.hard_state.vote == "b" and rd.must_sync  # the vote is fsynced before the answer


def test_election_timeouts_come_from_the_injected_rng() -> None:
    def first_campaign_tick(seed: int) -> int:
        n = RaftNode(Config("a", election_tick=10), random.Random(seed),
                     bootstrap_voters=["a", "b", "c"])
        for t in range(1, 100):
            n.tick()
            if n.role is not Role.FOLLOWER:
                return t
        raise AssertionError("never campaigned")

    ticks = [first_campaign_tick(s) for s in range(30)]
    assert all(10 <= t < 20 for t in ticks)
    assert len(set(ticks)) > 3  # randomized
    assert ticks == [first_campaign_tick(s) for s in range(30)]  # deterministic


def test_candidate_with_a_stale_log_cannot_win() -> None:
    """Election restriction (5.4.1): voters refuse candidates whose log is behind theirs."""
    c = MemCluster(["a", "b", "c"], seed=2)
    c.elect("a")
    c.isolate("c")
    c.propose("a", b"x")
    c.heal()
    c.crash("a")
    c.nodes["c"]._hup(transfer=True)  # forced campaign: no lease or pre-vote in the way
    c.stabilize()
    assert c.nodes["c"].role is not Role.LEADER
    c.elect("b")  # b has the entry and wins


def test_pre_vote_keeps_a_rejoining_node_from_deposing_a_healthy_leader() -> None:
    c = MemCluster(["a", "b", "c"], seed=4)
    lead = c.elect("a")
    term = lead.term
    c.isolate("c")
    for _ in range(100):  # c times out again and again while cut off
        c.tick()
    assert c.nodes["c"].term == term  # pre-votes never raised its term
    c.heal()
    for _ in range(30):
        c.tick()
    assert c.leaders() == ["a"] and lead.term == term


def test_without_pre_vote_a_rejoining_node_does_depose_the_leader() -> None:
    """The contrast that shows the test above can fail."""
    c = MemCluster(["a", "b", "c"], seed=4, pre_vote=False, check_quorum=False)
    lead = c.elect("a")
    term = lead.term
    c.isolate("c")
    for _ in range(100):
        c.tick()
    assert c.nodes["c"].term > term
    c.heal()
    for _ in range(30):
        c.tick()
        if lead.term > term:
            break
    assert lead.term > term  # the healthy leader was forced out of its term


def test_check_quorum_leader_steps_down_when_cut_off_from_the_majority() -> None:
    c = MemCluster(["a", "b", "c"], seed=5)
    lead = c.elect("a")
    c.isolate("a")
    for _ in range(25):
        c.tick("a")
    assert lead.role is Role.FOLLOWER and lead.lead == ""


def test_followers_in_lease_ignore_vote_requests() -> None:
    c = MemCluster(["a", "b", "c"], seed=6)
    lead = c.elect("a")
    b = c.nodes["b"]
    term = b.term
    b.step(Message(MsgType.VOTE, "b", "c", term=term + 5, index=100, log_term=term))
    assert b.term == term and b.lead == "a"
    c.stabilize()
    assert lead.role is Role.LEADER
