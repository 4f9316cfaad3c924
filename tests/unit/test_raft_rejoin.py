"""A voter that lost its state must never vote or acknowledge as if it had not (DESIGN.md,
Raft invariants). Why: the first test shows the hazard - a wiped voter that simply starts a
fresh group copy again helps elect a leader that lacks a committed entry, and the entry is
lost. The way back is a membership change: remove it, let it join (`joining`: no votes, no
campaigns), add it as a learner, promote it."""

from __future__ import annotations

from kvstore.core.raft import ConfChange, ConfChangeType, Message, MsgType, Role
from kvstore.core.raft.raft import TRANSFER_CONTEXT
from kvstore.core.raft.testing import MemCluster

ADD_LEARNER, ADD_VOTER, REMOVE = (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER,
                                  ConfChangeType.REMOVE)


def _commit_without_b(c: MemCluster) -> None:
    """`a` leads; `important` is committed on a and c only (b is cut off)."""
    c.elect("a")
    c.propose("a", b"before")
    c.isolate("b")
    c.propose("a", b"important")
    assert b"important" in c.data("a") and b"important" in c.data("c")
    assert b"important" not in c.data("b")


def test_a_wiped_voter_that_bootstraps_again_loses_a_committed_entry() -> None:
    """The bug this guards against (what a voter with an empty raft directory used to do)."""
    c = MemCluster(["a", "b", "c"], seed=1)
    _commit_without_b(c)
    c.wipe("c")
    c.down.discard("c")
    c._start("c", bootstrap=["a", "b", "c"])  # "fresh" again: term 1, no vote, empty log
    c.crash("a")
    c.heal()
    c.elect("b")  # c's vote makes b leader although b lacks a committed entry
    c.propose("b", b"after")
    assert b"important" not in c.data("b") and b"important" not in c.data("c")


def test_a_joining_node_cannot_help_elect_a_leader_that_lacks_committed_entries() -> None:
    c = MemCluster(["a", "b", "c"], seed=2)
    _commit_without_b(c)
    c.wipe("c")
    c.down.discard("c")
    joiner = c.add_node("c", joining=True)
    c.crash("a")
    c.heal()
    c.nodes["b"]._hup(transfer=True)
    c.stabilize()
    assert c.nodes["b"].role is not Role.LEADER  # c refused its vote
    for _ in range(100):  # and c never campaigns, whatever it is told
        joiner.tick()
        c.process("c")
    joiner.step(Message(MsgType.TIMEOUT_NOW, "c", "b", c.nodes["b"].term))
    c.stabilize()
    assert joiner.role is Role.FOLLOWER and c.leaders() == []
    c.restart("a")  # the committed entry survives: a still has it, and a can win
    for _ in range(100):
        c.tick()
        if c.leaders():
            break
    assert c.leaders() == ["a"]
    c.propose("a", b"after")
    assert b"important" in c.data("a") and b"important" in c.data("b")


def test_the_way_back_remove_join_learner_promote() -> None:
    c = MemCluster(["a", "b", "c"], seed=3)
    lead = c.elect("a")
    for i in range(5):
        c.propose("a", f"e{i}".encode())
    c.wipe("c")
    lead.propose_conf_change(ConfChange(REMOVE, "c"))
    c.stabilize()
    assert lead.conf.voters == {"a", "b"}
    c.down.discard("c")
    joiner = c.add_node("c", joining=True)
    lead.propose_conf_change(ConfChange(ADD_LEARNER, "c"))
    c.stabilize()
    c.tick("a", n=3)
    assert c.data("c") == c.data("a") and joiner.joining  # caught up, still not voting
    assert joiner.conf.learners == {"c"}
    # a (pre-)vote it would grant were it not joining: b is as up to date as c
    joiner.step(Message(MsgType.PRE_VOTE, "c", "b", joiner.term + 1,
                        log_term=joiner.last_term(), index=joiner.last_index(),
                        context=TRANSFER_CONTEXT))
    c.process("c")
    assert [m.reject for m in c.inflight if m.frm == "c" and m.type is MsgType.PRE_VOTE_RESP
            ] == [True]
    c.inflight.clear()
    c.restart("c")  # the flag is durable: after a restart it still does not vote
    assert c.nodes["c"].joining
    lead.propose_conf_change(ConfChange(ADD_VOTER, "c"))
    c.stabilize()
    joiner = c.nodes["c"]
    assert not joiner.joining and joiner.conf.voters == {"a", "b", "c"}
    assert "c" not in c.joining  # the driver would clear the durable flag now
    c.crash("a")  # c is a full voter again: it can help elect a leader, and be one
    c.elect("c")
    c.propose("c", b"after")
    assert c.data("c")[-1] == b"after" and b"e4" in c.data("b")


def test_a_joiner_that_was_never_removed_never_votes() -> None:
    """The operator skipped `kv raft remove`: the leader still counts c as a voter and sends
    it the log, whose configuration entries name c a voter. c stores and acknowledges (that
    is truthful), but it stays non-voting: those entries are from before it lost its state."""
    c = MemCluster(["a", "b", "c"], seed=4)
    c.elect("a")
    c.propose("a", b"x")
    c.wipe("c")
    c.down.discard("c")
    joiner = c.add_node("c", joining=True)
    # The leader still believes c holds the log (a rejection below its match index looks
    # stale); a new leader probes c from scratch and sends it everything.
    c.nodes["a"].transfer_leadership("b")
    c.stabilize()
    assert c.leaders() == ["b"]
    c.propose("b", b"y")
    c.tick("b", n=3)
    assert c.data("c") == c.data("b") and joiner.conf.voters == {"a", "b", "c"}
    assert joiner.joining
    c.crash("b")
    for _ in range(60):
        c.tick()
    assert joiner.role is Role.FOLLOWER
    assert c.leaders() == []  # a cannot win without c's vote; c never campaigns


def test_a_promotion_that_arrives_in_a_snapshot_ends_joining() -> None:
    c = MemCluster(["a", "b", "c"], seed=5, learner_max_lag=1000)
    lead = c.elect("a")
    lead.propose_conf_change(ConfChange(REMOVE, "c"))
    c.stabilize()
    c.wipe("c")
    c.down.discard("c")
    joiner = c.add_node("c", joining=True)
    lead.propose_conf_change(ConfChange(ADD_LEARNER, "c"))
    c.stabilize()
    c.tick("a", n=3)
    assert joiner.conf.learners == {"c"}
    c.isolate("c")
    lead.propose_conf_change(ConfChange(ADD_VOTER, "c"))
    c.stabilize()
    for i in range(5):
        c.propose("a", f"e{i}".encode())
    c.snapshot("a")  # the promotion is compacted away: c gets it in a snapshot
    c.heal()
    c.tick("a", n=4)
    assert joiner.conf.voters == {"a", "b", "c"} and not joiner.joining
