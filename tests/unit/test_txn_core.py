"""The transaction records in the metadata state machine (core/txn.py through
core/meta.py): PENDING -> COMMITTED | ABORTED exactly once by compare-and-set, the deadline
rules, exactly-once through sessions, forgetting, snapshots; and the request bounds."""

from __future__ import annotations

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import txn_pb2 as tpb
from kvstore.core import txn as core
from kvstore.core import versions
from kvstore.core.meta import MetaStateMachine


class Machine:
    def __init__(self) -> None:
        self.sm = MetaStateMachine()
        self.index = 0
        self.seq = 0
        self.cid = self.apply(mpb.MetaCommand(register=mpb.RegisterClient())).client_id

    def apply(self, cmd: mpb.MetaCommand) -> mpb.MetaResult:
        self.index += 1
        return self.sm.apply(self.index, cmd.SerializeToString())

    def cmd(self, seq: int | None = None, **op) -> mpb.MetaResult:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.apply(mpb.MetaCommand(session=mpb.Session(client_id=self.cid, seq=seq),
                                          **op))

    def begin(self, txn_id: str = "t1", deadline: int = 1000) -> mpb.MetaResult:
        return self.cmd(txn_begin=tpb.TxnBegin(txn_id=txn_id, keys=[b"a", b"b"],
                                               coordinator="n1", deadline_ms=deadline,
                                               now_ms=0))

    def decide(self, state: int, now: int, *, coordinator: bool = True,
               txn_id: str = "t1", seq: int | None = None) -> mpb.MetaResult:
        return self.cmd(seq, txn_decide=tpb.TxnDecide(
            txn_id=txn_id, state=state, by="n1" if coordinator else "n2", now_ms=now,
            by_coordinator=coordinator, commit_hlc=7 if state == tpb.TXN_COMMITTED else 0,
            versions=[tpb.TxnVersion(key=b"a", version=versions.sibling_to_pb(
                versions.Sibling("~t1", 1, value=b"x")))] if state == tpb.TXN_COMMITTED
            else []))


def test_a_record_is_decided_once_by_compare_and_set() -> None:
    m = Machine()
    r = m.begin()
    assert r.code == mpb.META_OK and r.txn.state == tpb.TXN_PENDING
    assert r.txn.created_revision == r.revision
    r = m.decide(tpb.TXN_COMMITTED, now=500)
    assert r.code == mpb.META_OK and r.txn.state == tpb.TXN_COMMITTED
    assert r.txn.decided_by == "n1" and r.txn.commit_hlc == 7 and len(r.txn.versions) == 1
    # someone finding it late cannot abort it: the CAS fails, the commit stands
    r = m.decide(tpb.TXN_ABORTED, now=5000, coordinator=False)
    assert r.code == mpb.META_COMPARE_FAILED and r.txn.state == tpb.TXN_COMMITTED
    # the same decision again (a second resolver) is fine
    assert m.decide(tpb.TXN_COMMITTED, now=600).code == mpb.META_OK


def test_deadline_rules() -> None:
    m = Machine()
    m.begin(deadline=1000)
    # before the deadline only the coordinator may abort
    r = m.decide(tpb.TXN_ABORTED, now=999, coordinator=False)
    assert r.code == mpb.META_COMPARE_FAILED and r.txn.state == tpb.TXN_PENDING
    # a commit after the deadline becomes ABORTED (expired)
    r = m.decide(tpb.TXN_COMMITTED, now=1001)
    assert r.code == mpb.META_COMPARE_FAILED and r.txn.state == tpb.TXN_ABORTED
    assert "expired" in r.txn.reason and not r.txn.versions
    m2 = Machine()
    m2.begin(deadline=1000)
    r = m2.decide(tpb.TXN_ABORTED, now=1001, coordinator=False)
    assert r.code == mpb.META_OK and r.txn.state == tpb.TXN_ABORTED and r.txn.decided_by == "n2"


def test_a_retried_command_applies_once_and_a_repeated_begin_keeps_the_record() -> None:
    m = Machine()
    m.begin()
    first = m.decide(tpb.TXN_COMMITTED, now=10)
    again = m.decide(tpb.TXN_COMMITTED, now=10, seq=m.seq)  # the same (client, seq)
    assert again.duplicate and again.txn.decided_revision == first.txn.decided_revision
    r = m.begin()  # a client retrying the whole transaction with the same id
    assert r.code == mpb.META_OK and r.txn.state == tpb.TXN_COMMITTED


def test_forget_keeps_a_small_record_and_snapshots_round_trip() -> None:
    m = Machine()
    m.begin()
    assert m.cmd(txn_forget=tpb.TxnForget(txn_id="t1")).code == mpb.META_BAD_REQUEST
    m.decide(tpb.TXN_COMMITTED, now=10)
    assert "t1" in m.sm.txns.live
    assert m.cmd(txn_forget=tpb.TxnForget(txn_id="t1")).code == mpb.META_OK
    assert "t1" not in m.sm.txns.live and not m.sm.txns.get("t1").versions
    assert m.sm.txns.get("t1").state == tpb.TXN_COMMITTED  # still there for status
    m.begin("t2")
    image = m.sm.snapshot()
    other = MetaStateMachine()
    other.restore(image, m.index)
    assert other.snapshot() == image
    assert other.txns.get("t2").state == tpb.TXN_PENDING and other.txns.live == {"t2"}


def test_malformed_txn_commands_are_refused_alike_everywhere() -> None:
    m = Machine()
    r = m.cmd(txn_begin=tpb.TxnBegin(txn_id="bad id", keys=[b"a"]))
    assert r.code == mpb.META_BAD_REQUEST
    r = m.cmd(txn_begin=tpb.TxnBegin(txn_id="t", keys=[b"a", b"a"]))
    assert r.code == mpb.META_BAD_REQUEST and "duplicate" in r.error
    r = m.cmd(txn_decide=tpb.TxnDecide(txn_id="t", state=tpb.TXN_PENDING))
    assert r.code == mpb.META_BAD_REQUEST
    assert m.decide(tpb.TXN_COMMITTED, now=1, txn_id="nope").code == mpb.META_NOT_FOUND


def test_request_bounds() -> None:
    ok = core.check_request("t", [(b"b", b"1"), (b"a", b"2")], [(b"c", 2, b"")], 0)
    assert ok == [b"a", b"b", b"c"]  # sorted: two transactions meet on their first key
    with pytest.raises(core.BadTxn, match="duplicate key"):
        core.check_request("t", [(b"a", b"1"), (b"a", b"2")], [], 0)
    with pytest.raises(core.BadTxn, match="at most 64 keys"):
        core.check_request("t", [(f"k{i}".encode(), b"") for i in range(65)], [], 0)
    with pytest.raises(core.BadTxn, match="has no context"):
        core.check_request("t", [(b"a", b"1")], [(b"a", 1, b"")], 0)
    with pytest.raises(core.BadTxn, match="16384 bytes"):
        core.check_request("t", [(b"a", b"x" * 20_000)], [], 0)
    with pytest.raises(core.BadTxn, match="deadline"):
        core.check_request("t", [(b"a", b"1")], [], 10)


def test_conditions_and_the_commit_version() -> None:
    old = versions.Sibling("n1@1", 3, value=b"old")
    seen = versions.encode_context(versions.read_context([old]))
    ctx = tpb.TxnCondition(kind=tpb.TxnCondition.CONTEXT, context=seen)
    assert core.check_condition(ctx, [old]) is None
    newer = versions.Sibling("n2@1", 1, value=b"new")
    assert "changed" in core.check_condition(ctx, [old, newer])
    absent = tpb.TxnCondition(kind=tpb.TxnCondition.ABSENT)
    assert core.check_condition(absent, []) is None
    assert core.check_condition(absent, [versions.Sibling("n1@1", 1, tombstone=True)]) is None
    assert "exists" in core.check_condition(absent, [old])
    v = core.commit_version("t9", b"v", False, [[old], [old, newer]], 5)
    assert v.dot == ("~t9", 1) and v.supersedes(*old.dot) and v.supersedes(*newer.dot)
    assert core.commit_version("t9", b"v", False, [[newer], [old]], 5) == v  # any order
