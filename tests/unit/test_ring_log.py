"""The committed ring (core/ringlog.py): the lifecycle and the token check, applied
through the metadata state machine as Raft applies them."""

from __future__ import annotations

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.meta import MetaStateMachine, command
from kvstore.core.ringlog import JOINING, LEAVING, LEFT, NORMAL, RingTable, validate_change


class Group:
    """A state machine fed one command per entry, with a session."""

    def __init__(self) -> None:
        self.sm = MetaStateMachine()
        self.index = 0
        self.seq = 0
        self.client = self._apply(command(register=mpb.RegisterClient())).client_id

    def _apply(self, cmd: mpb.MetaCommand) -> mpb.MetaResult:
        self.index += 1
        return self.sm.apply(self.index, cmd.SerializeToString())

    def change(self, node: str, status: int, tokens=(), replaces: str = "",
               by: str = "") -> mpb.MetaResult:
        self.seq += 1
        return self._apply(command((self.client, self.seq, self.seq - 1),
                                   ring_change=mpb.RingChange(node=node, status=status,
                                                              tokens=tokens,
                                                              replaces=replaces, by=by)))

    def status(self, node: str) -> int | None:
        m = self.sm.ring.members.get(node)
        return m.status if m else None


def ok(result: mpb.MetaResult) -> None:
    assert result.code == mpb.META_OK, result.error


def refused(result: mpb.MetaResult, *words: str) -> str:
    assert result.code == mpb.META_COMPARE_FAILED, result
    for word in words:
        assert word in result.error, result.error
    return result.error


def test_overlapping_claims_first_committed_wins_the_other_is_refused():
    g = Group()
    ok(g.change("n1", NORMAL, [10, 20, 30]))
    ok(g.change("n4", JOINING, [40, 50]))
    before = g.sm.ring.snapshot()
    error = refused(g.change("n5", JOINING, [50, 60]), "n4", "JOINING", "1 of the 2 tokens")
    assert "cannot own the same tokens" in error
    assert g.sm.ring.snapshot() == before  # nothing changed
    refused(g.change("n6", NORMAL, [30]), "n1", "NORMAL")  # a first record is checked too
    ok(g.change("n5", JOINING, [60, 70]))
    assert g.sm.ring.epoch == g.index


def test_lifecycle_and_retries():
    g = Group()
    ok(g.change("n4", JOINING, [1, 2]))
    ok(g.change("n4", JOINING, [1, 2]))  # a restart resumes: accepted, nothing new
    refused(g.change("n4", JOINING, [1, 3]), "other tokens")
    refused(g.change("n4", LEFT), "not LEAVING")
    ok(g.change("n4", NORMAL))
    ok(g.change("n4", JOINING, [1, 2]))  # a join resumed after it was recorded NORMAL
    assert g.status("n4") == NORMAL
    refused(g.change("n4", JOINING, [1, 2], replaces="n9"), "already a member")
    ok(g.change("n4", LEAVING))
    refused(g.change("n4", NORMAL), "LEAVING, not JOINING")
    ok(g.change("n4", LEFT))
    refused(g.change("n4", NORMAL), "left the ring")
    refused(g.change("n4", LEAVING), "LEFT, not NORMAL")
    # LEFT tokens are free again; a left member comes back only by joining afresh
    ok(g.change("n7", JOINING, [1, 2]))
    refused(g.change("n4", JOINING, [1, 2]), "n7")
    ok(g.change("n4", JOINING, [5]))


def test_unrecorded_member_first_record_needs_tokens():
    g = Group()
    refused(g.change("n2", NORMAL), "must name its tokens")
    refused(g.change("n2", LEFT), "not recorded")
    ok(g.change("n2", LEAVING, [7, 8], by="n1"))  # a remove of a member never recorded
    assert g.sm.ring.members["n2"].by == "n1"
    ok(g.change("n2", LEFT, by="n1"))


def test_one_replacement_per_dead_member():
    g = Group()
    ok(g.change("n3", NORMAL, [1, 2, 3]))
    refused(g.change("n5", JOINING, [1, 2], replaces="n3"), "not those of n3")
    ok(g.change("n5", JOINING, [1, 2, 3], replaces="n3"))
    assert g.status("n3") == LEAVING and g.sm.ring.members["n3"].replaced_by == "n5"
    refused(g.change("n6", JOINING, [1, 2, 3], replaces="n3"), "being replaced by n5")
    refused(g.change("n6", JOINING, [3, 4]), "n3")  # held by both n3 and n5
    ok(g.change("n5", NORMAL))
    assert g.status("n3") == LEFT
    refused(g.change("n6", JOINING, [1, 2, 3], replaces="n3"), "LEFT (replaced by n5)")
    # a decommission in progress is not a place to take
    ok(g.change("n8", NORMAL, [20]))
    ok(g.change("n8", LEAVING))
    refused(g.change("n9", JOINING, [20], replaces="n8"), "LEAVING")


def test_replacement_of_a_member_never_recorded():
    g = Group()
    ok(g.change("n5", JOINING, [1, 2], replaces="n3"))
    assert g.status("n3") == LEAVING
    refused(g.change("n6", JOINING, [1, 2], replaces="n3"), "being replaced by n5")


def test_snapshot_restores_the_ring_and_replicas_agree():
    a, b = Group(), Group()
    for g in (a, b):
        ok(g.change("n1", NORMAL, [1]))
        ok(g.change("n2", JOINING, [2], replaces=""))
        refused(g.change("n3", JOINING, [2]), "n2")
    assert a.sm.snapshot() == b.sm.snapshot()
    c = MetaStateMachine()
    c.restore(a.sm.snapshot(), a.index)
    assert c.ring.snapshot() == a.sm.ring.snapshot() and c.ring.epoch == a.sm.ring.epoch
    assert [r.node for r in c.ring.records()] == ["n1", "n2"]


@pytest.mark.parametrize("change, problem", [
    (mpb.RingChange(node="", status=JOINING), "not a node id"),
    (mpb.RingChange(node="n1", status=9), "unknown status"),
    (mpb.RingChange(node="n1", status=JOINING, tokens=[1, 1]), "duplicate"),
    (mpb.RingChange(node="n1", status=NORMAL, replaces="n2"), "only a joining node"),
    (mpb.RingChange(node="n1", status=JOINING, replaces="n1"), "only a joining node"),
])
def test_malformed_changes(change, problem):
    with pytest.raises(ValueError, match=problem):
        validate_change(change)
    g = Group()
    g.seq += 1
    g.index += 1
    cmd = command((g.client, g.seq, 0), ring_change=change)
    result = g.sm.apply(g.index, cmd.SerializeToString())
    assert result.code == mpb.META_BAD_REQUEST and problem in result.error


def test_table_alone():
    t = RingTable()
    t.apply(5, mpb.RingChange(node="a", status=NORMAL, tokens=[3, 1]))
    assert t.members["a"].tokens == (1, 3) and t.epoch == 5
    assert t.holder([3]) == ("a", t.members["a"]) and t.holder([3], ("a",)) is None
