"""Three-phase commit beside the Raft-record protocol (docs/transactions.md, "Protocols
compared"): the partition in which 3PC commits on one side and aborts on the other,
shown rather than asserted.

The coordinator sends PreCommit to one participant, then dies, and the network splits
that participant from the others. Each side follows 3PC's rules to the letter: the
precommitted participant, hearing nothing, commits when its timeout passes; the others,
uncertain and unable to reach anyone precommitted, run the termination protocol among
themselves and abort. The transaction is half applied. The same crash under the default
protocol is all-or-nothing (tests/sim/test_txn_steps.py): the decision is one record in
Raft, which a minority side cannot change.
"""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, run_scenario

from kvstore._proto import txn_pb2 as tpb


class Crash(Exception):
    pass


def test_3pc_commits_on_one_side_of_a_partition_and_aborts_on_the_other():
    async def scenario(c: SimCluster):
        coordinator = "n5"
        keys = [k for k in (f"acct{i}".encode() for i in range(200))
                if coordinator not in c.replicas(k)][:2]
        parts = [(k, n) for k in keys for n in c.replicas(k)]
        first = parts[0][1]  # the one participant that will hear PreCommit
        svc = c.nodes[coordinator].txn
        sent = []

        def step(name: str) -> None:
            if name == "precommit" and not sent:
                sent.append(name)
                c.kill(coordinator)
                c.network.partition({first}, set(c.ids) - {first})
                raise Crash("the coordinator died after one PreCommit")

        svc.on_step = step
        req = tpb.TxnPutRequest(txn_id="split", protocol="3pc", ttl_ms=500, writes=[
            tpb.TxnWrite(key=k, value=b"moved") for k in keys])
        try:
            await svc.put(req)
            raise AssertionError("the coordinator should have crashed")
        except Crash:
            pass
        await asyncio.sleep(4.0)  # the phase timeouts pass; each side decides
        outcome = {n: c.nodes[n].txn.outcomes_3pc.get("split") for _, n in parts}
        assert outcome[first] is True, outcome
        others = {n for _, n in parts} - {first}
        assert others and all(outcome[n] is False for n in others), outcome
        # the precommitted participant applied the write; the others did not
        key0 = parts[0][0]
        assert [s.value for s in c.stored(first, key0)] == [b"moved"]
        for k, n in parts:
            if n != first:
                assert all(s.value != b"moved" for s in c.stored(n, k)), (k, n)
        # no intent is left: each participant decided (differently)
        assert not any(c.intents[n].table for _, n in parts)
        return outcome

    run_scenario(scenario, size=5, seed=12, raft_voters=["n1", "n2", "n3"], timeout_ms=300)


def test_3pc_without_faults_commits_everywhere():
    async def scenario(c: SimCluster):
        reply = await c.nodes["n1"].txn.put(tpb.TxnPutRequest(
            txn_id="calm", protocol="3pc", trace=True,
            writes=[tpb.TxnWrite(key=b"x", value=b"1"), tpb.TxnWrite(key=b"y", value=b"2")]))
        assert reply.state == tpb.TXN_COMMITTED, reply
        assert any("PreCommit" in line for line in reply.trace)
        for k, v in ((b"x", b"1"), (b"y", b"2")):
            for n in c.replicas(k):
                assert [s.value for s in c.stored(n, k)] == [v]
        got = await c.nodes["n2"].txn.get(tpb.TxnGetRequest(keys=[b"x", b"y"]))
        assert [list(v.values) for v in got.values] == [[b"1"], [b"2"]]

    run_scenario(scenario, size=3, seed=13, raft_voters=["n1", "n2", "n3"], timeout_ms=300)
