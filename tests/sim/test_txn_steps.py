"""A transaction's coordinator crashing at each step, in a simulated cluster, and the
bounds and bad input a transaction is refused for (docs/transactions.md).

Before the commit point (the Raft record) a crash leaves intents that block the keys until
the deadline; then whoever finds them (here the sweeper) aborts the record by
compare-and-set in Raft and drops them: nothing of the transaction is ever visible. After
the commit point every key shows the new value, resolved or not."""

from __future__ import annotations

import asyncio

import pytest
from simkit.cluster import SimCluster, run_scenario, values

from kvstore._proto import common_pb2
from kvstore._proto import txn_pb2 as tpb
from kvstore.core import txn as core
from kvstore.core.errors import InvalidArgument

KEYS = [b"x", b"y", b"z"]
VOTERS = ["n1", "n2", "n3"]


class Crash(Exception):
    pass


def put_req(txn_id: str, **kw) -> tpb.TxnPutRequest:
    return tpb.TxnPutRequest(txn_id=txn_id, writes=[
        tpb.TxnWrite(key=k, value=b"new-" + k) for k in KEYS], ttl_ms=1000, **kw)


async def visible(c: SimCluster, via: str) -> list[list[bytes]]:
    got = await c.nodes[via].txn.get(tpb.TxnGetRequest(keys=KEYS))
    return [list(v.values) for v in got.values]


@pytest.mark.parametrize("step,committed", [("before_intents", False), ("intent", False),
                                            ("after_record", True), ("resolving", True)])
def test_a_coordinator_crash_at_each_step_is_all_or_nothing(step: str, committed: bool):
    async def scenario(c: SimCluster):
        await c.wait_raft_leader()
        first = await c.nodes["n1"].txn.put(tpb.TxnPutRequest(
            txn_id="old", writes=[tpb.TxnWrite(key=k, value=b"old-" + k) for k in KEYS]))
        assert first.state == tpb.TXN_COMMITTED
        svc = c.nodes["n4"].txn

        def crash(name: str) -> None:
            if name == step:
                c.kill("n4")
                raise Crash(name)
        svc.on_step = crash
        with pytest.raises(Crash):
            await svc.put(put_req("t1"))
        seen = await visible(c, "n2")
        expect = [[b"new-" + k] if committed else [b"old-" + k] for k in KEYS]
        assert seen == expect, seen
        if not committed and step == "intent":
            # intents block plain writes until the deadline: a clear refusal
            held = [k for k in KEYS if any(c.intents[n].get(k) for n in c.replicas(k))]
            assert held, "some intent was placed before the crash"
            owner = next(n for n in c.replicas(held[0]) if c.intents[n].get(held[0]))
            reply = await c.put(owner, held[0], b"plain", "QUORUM")
            assert reply.HasField("error") and reply.error.code == common_pb2.CONFLICT, reply
            assert "intent of transaction t1" in reply.error.message
        await asyncio.sleep(3.0)  # the deadline (1 s) passes; sweepers find the intents
        rec = await c.nodes["n2"].txn.record("t1")
        state = tpb.TXN_COMMITTED if committed else tpb.TXN_ABORTED
        assert rec is None or rec.state == state, rec
        assert not any(c.intents[n].table for n in c.ids if n != "n4")
        assert await visible(c, "n3") == expect
        for k, want in zip(KEYS, expect, strict=True):
            assert values(await c.get("n1", k)) == want
        await c.revive("n4")

    run_scenario(scenario, size=4, seed=5, raft_voters=VOTERS, timeout_ms=300)


def test_conflicting_transactions_are_serialized_or_refused_cleanly():
    """Two transactions on the same keys at once: one commits; the other either is refused
    (ABORTED, nothing of it anywhere) or commits strictly after it (it met the first one's
    intents, resolved them, then wrote over them): its versions supersede the first's."""

    async def scenario(c: SimCluster):
        await c.wait_raft_leader()
        a, b = await asyncio.gather(c.nodes["n1"].txn.put(put_req("ta")),
                                    c.nodes["n4"].txn.put(put_req("tb")))
        done = sorted((r.revision, r.txn_id) for r in (a, b) if r.state == tpb.TXN_COMMITTED)
        assert done, (a, b)
        last = done[-1][1]
        await asyncio.sleep(0.5)
        got = await c.nodes["n2"].txn.get(tpb.TxnGetRequest(keys=KEYS))
        assert all(v.values == [b"new-" + v.key] for v in got.values)
        for k in KEYS:  # only the last committed one is held: a loser wrote nothing
            for n in c.replicas(k):
                assert {s.node for s in c.stored(n, k)} == {"~" + last}, (n, k)
        return [r.state for r in (a, b)]

    run_scenario(scenario, size=4, seed=7, raft_voters=VOTERS, timeout_ms=300)


@pytest.mark.parametrize("req,message", [
    (tpb.TxnPutRequest(writes=[tpb.TxnWrite(key=b"a", value=b"1")] * 2), "duplicate key"),
    (tpb.TxnPutRequest(writes=[tpb.TxnWrite(key=f"k{i}".encode(), value=b"1")
                               for i in range(core.MAX_KEYS + 1)]), "at most 64 keys"),
    (tpb.TxnPutRequest(writes=[tpb.TxnWrite(key=b"a", value=b"1")], checks=[tpb.TxnCheck(
        key=b"a", condition=tpb.TxnCondition(kind=tpb.TxnCondition.CONTEXT))]),
     "has no context"),
    (tpb.TxnPutRequest(writes=[tpb.TxnWrite(key=b"a", value=b"1")], checks=[tpb.TxnCheck(
        key=b"a", condition=tpb.TxnCondition(kind=tpb.TxnCondition.CONTEXT,
                                             context=b"garbage"))]), "not valid"),
    (tpb.TxnPutRequest(writes=[]), "at least one key"),
    (tpb.TxnPutRequest(txn_id="bad id!", writes=[tpb.TxnWrite(key=b"a", value=b"1")]),
     "transaction id"),
])
def test_bad_transactions_are_refused_and_nothing_is_applied(req, message):
    async def scenario(c: SimCluster):
        await c.wait_raft_leader()
        applied = c.nodes["n1"].raft.sm.applied_ops
        with pytest.raises(InvalidArgument, match=message):
            await c.nodes["n1"].txn.put(req)
        assert c.nodes["n1"].raft.sm.applied_ops == applied
        assert not any(c.intents[n].table for n in c.ids)

    run_scenario(scenario, size=3, seed=3, raft_voters=VOTERS, timeout_ms=300)


def test_an_expired_transaction_is_not_committed():
    """The coordinator is too slow: its commit arrives after the deadline, and the state
    machine turns it into ABORTED (reason: expired); nothing is visible."""

    async def scenario(c: SimCluster):
        await c.wait_raft_leader()
        svc = c.nodes["n1"].txn
        real = svc.clock_ms

        def late(name: str) -> None:
            if name == "intent":
                svc.clock_ms = lambda: real() + 5_000  # the coordinator stalls

        svc.on_step = late
        reply = await svc.put(put_req("slow"))
        svc.clock_ms, svc.on_step = real, None
        assert reply.state == tpb.TXN_ABORTED and "expired" in reply.reason, reply
        assert reply.error.code == common_pb2.CONFLICT
        await asyncio.sleep(0.5)
        assert await visible(c, "n2") == [[], [], []]

    run_scenario(scenario, size=3, seed=4, raft_voters=VOTERS, timeout_ms=300)
