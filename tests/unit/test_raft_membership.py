"""Raft paper section 6 / thesis chapter 4: one-server membership changes, learners that
catch up before they vote, and leadership transfer (thesis 3.10)."""

from __future__ import annotations

import pytest

from kvstore.core.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    MsgType,
    ProposalDroppedError,
    RaftError,
    Role,
)
from kvstore.core.raft.testing import MemCluster

ADD_LEARNER, ADD_VOTER, REMOVE = (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER,
                                  ConfChangeType.REMOVE)


def _change(c: MemCluster, lead: str, t: ConfChangeType, node: str) -> None:
    c.nodes[lead].propose_conf_change(ConfChange(t, node))
    c.stabilize()


def test_learner_catches_up_then_is_promoted() -> None:
    c = MemCluster(["a", "b", "c"], seed=1)
    lead = c.elect("a")
    for i in range(5):
        c.propose("a", f"e{i}".encode())
    d = c.add_node("d")
    _change(c, "a", ADD_LEARNER, "d")
    assert lead.conf.learners == {"d"} and "d" not in lead.conf.voters
    c.tick("a", n=2)
    assert c.data("d") == c.data("a")  # the learner received the whole log
    assert d.role is Role.FOLLOWER
    for _ in range(50):  # a learner never campaigns
        d.tick()
    assert d.role is Role.FOLLOWER
    _change(c, "a", ADD_VOTER, "d")
    assert lead.conf.voters == {"a", "b", "c", "d"} and not lead.conf.learners
    assert d.conf.voters == lead.conf.voters


def test_new_nodes_must_join_as_learners_first() -> None:
    c = MemCluster(["a", "b", "c"], seed=2)
    lead = c.elect("a")
    c.add_node("d")
    with pytest.raises(ConfChangeError, match="learner first"):
        lead.propose_conf_change(ConfChange(ADD_VOTER, "d"))


def test_a_lagging_learner_is_not_promoted() -> None:
    c = MemCluster(["a", "b", "c"], seed=3)
    lead = c.elect("a")
    c.add_node("d")
    c.isolate("d")
    _change(c, "a", ADD_LEARNER, "d")
    c.propose("a", b"x")
    with pytest.raises(ConfChangeError, match="behind"):
        lead.propose_conf_change(ConfChange(ADD_VOTER, "d"))


def test_one_membership_change_at_a_time() -> None:
    c = MemCluster(["a", "b", "c"], seed=4)
    lead = c.elect("a")
    c.add_node("d")
    c.add_node("e")
    lead.propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    with pytest.raises(ConfChangeError, match="already in progress"):
        lead.propose_conf_change(ConfChange(ADD_LEARNER, "e"))
    c.stabilize()
    lead.propose_conf_change(ConfChange(ADD_LEARNER, "e"))  # fine once the first applied


def test_removed_follower_no_longer_counts() -> None:
    c = MemCluster(["a", "b", "c"], seed=5)
    lead = c.elect("a")
    _change(c, "a", REMOVE, "c")
    assert lead.conf.voters == {"a", "b"}
    c.crash("c")
    c.propose("a", b"with two")
    assert c.data("b") == [b"with two"]


def test_removing_the_leader_makes_it_step_down_and_the_rest_elect() -> None:
    c = MemCluster(["a", "b", "c"], seed=6)
    lead = c.elect("a")
    _change(c, "a", REMOVE, "a")
    assert lead.role is Role.FOLLOWER
    for _ in range(40):
        c.tick()
        if any(c.nodes[n].role is Role.LEADER for n in ("b", "c")):
            break
    assert c.leaders() and c.leaders()[0] in ("b", "c")
    new = c.nodes[c.leaders()[0]]
    assert new.conf.voters == {"b", "c"}


def test_leadership_transfer() -> None:
    c = MemCluster(["a", "b", "c"], seed=7)
    lead = c.elect("a")
    term = lead.term
    c.isolate("b")
    c.propose("a", b"b does not have this yet")
    c.heal()
    lead.transfer_leadership("b")
    with pytest.raises(ProposalDroppedError):
        lead.propose(b"during transfer")
    c.stabilize()  # b is caught up first, then told TimeoutNow
    assert c.nodes["b"].role is Role.LEADER and c.nodes["b"].term == term + 1
    assert lead.role is Role.FOLLOWER and lead.lead == "b"
    assert any(m.type is MsgType.TIMEOUT_NOW for m in c.sent)


def test_transfer_to_an_unreachable_node_is_aborted() -> None:
    c = MemCluster(["a", "b", "c"], seed=8)
    lead = c.elect("a")
    c.isolate("b")
    lead.transfer_leadership("b")
    for _ in range(12):
        c.tick("a")
        c.tick("c")
    assert lead.role is Role.LEADER
    lead.propose(b"accepted again")
    with pytest.raises(RaftError):
        lead.transfer_leadership("zz")
