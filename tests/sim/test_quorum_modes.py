"""Strict quorums (the default), --sloppy and ANY: what each acknowledgement guarantees.

Strict (the default): only the key's own replicas count towards W, so a write
acknowledged at W is on W replicas of its preference list and every read at R with
R + W > N meets one of them. Sloppy: a hint on a fallback node counts for the replica it
stands in for, so a write can be acknowledged while only one true replica has it, and a
QUORUM read does not see it until hinted handoff has delivered the hints. ANY: a hint
alone is enough.
"""

from __future__ import annotations

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import common_pb2

QUIET = {"handoff_interval": 3600.0, "antientropy_interval": 0}  # nothing repairs behind us


def key_on(c: SimCluster, excluded: str) -> bytes:
    """A key whose preference list leaves out `excluded` (the fallback node)."""
    return next(k for k in (f"k{i}".encode() for i in range(500))
                if excluded not in c.replicas(k))


async def write_with_only_the_coordinator_reaching_its_replicas(c: SimCluster, **mode):
    """The coordinator cannot reach the other two replicas, but reaches the fallback n4."""
    key = key_on(c, "n4")
    a, b, cc = c.replicas(key)
    c.network.partition({a}, {b, cc})
    put = await c.put(a, key, b"v", "QUORUM", trace=True, **mode)
    # then the coordinator is cut off, and a QUORUM read goes to the other two replicas
    c.network.isolate(a, set(c.ids))
    got = await c.get(b, key, "QUORUM")
    return key, (a, b, cc), put, got


def test_strict_quorum_write_is_not_acknowledged_by_one_replica_and_hints():
    """Failed before the fix: the write was acknowledged (n1 + a hint on n4 counted as
    W=2), and the QUORUM read that followed did not find it."""

    async def scenario(c: SimCluster):
        _, (a, b, _), put, got = await write_with_only_the_coordinator_reaching_its_replicas(c)
        if put.HasField("put"):  # the guarantee itself: acknowledged => read sees it
            assert values(got) == [b"v"], "an acknowledged QUORUM write was not read at QUORUM"
        assert put.error.code == common_pb2.UNAVAILABLE, put
        text = put.error.message
        assert "W=2 needs 2 replicas, 1 answered" in text, text
        assert f"for {b} on n4" in text and "hints do not count" in text, text
        assert "--sloppy would have counted them (2 of 2)" in text, text
        assert f"durable on {a}" in text, text
        # the trace says which acknowledgements counted: the minting replica did, the
        # hint on n4 did not
        by_node = {r.node: r for r in put.trace.replicas if r.ok}
        assert by_node[a].counted and by_node[a].local
        assert by_node["n4"].hint_for == b and not by_node["n4"].counted
        assert any("not count towards W (strict)" in e.event for e in put.trace.events)

    run(scenario, size=4, seed=31, **QUIET)


def test_sloppy_write_counts_the_hint_and_a_quorum_read_misses_it_until_handoff():
    async def scenario(c: SimCluster):
        key, (_, b, _), put, got = await write_with_only_the_coordinator_reaching_its_replicas(
            c, sloppy=True)
        assert put.HasField("put"), put.error.message
        hint = next(r for r in put.trace.replicas if r.hint_for)
        assert hint.node == "n4" and hint.ok and hint.counted
        assert any("sloppy quorum" in e.event for e in put.trace.events)
        # documented: with --sloppy, R + W > N does not give read-your-writes ...
        assert got.HasField("get") and values(got) == []
        # ... until hinted handoff has delivered the hint to its owner
        assert await c.nodes["n4"].handoff.deliver_once() == 1
        assert values(await c.get(b, key, "QUORUM")) == [b"v"]

    run(scenario, size=4, seed=32, **QUIET)


def test_node_default_sloppy_and_strict_overriding_it():
    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        a, b, cc = c.replicas(key)
        c.crash(b)
        c.crash(cc)
        assert (await c.put(a, key, b"v1", "QUORUM")).HasField("put")  # the node's default
        strict = await c.put(a, key, b"v2", "QUORUM", strict=True)
        assert strict.error.code == common_pb2.UNAVAILABLE
        assert "hints do not count" in strict.error.message
        both = await c.put(a, key, b"v3", strict=True, sloppy=True)
        assert both.error.code == common_pb2.INVALID_ARGUMENT
        assert "contradict" in both.error.message

    run(scenario, size=4, seed=33, sloppy_quorum=True, **QUIET)


def test_strict_write_succeeds_when_enough_true_replicas_answer_and_hints_a_slow_one():
    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        a, b, cc = c.replicas(key)
        c.network.isolate(cc, set(c.ids))
        put = await c.put(a, key, b"v", "QUORUM", trace=True)
        assert put.HasField("put"), put.error.message
        counted = sorted(r.node for r in put.trace.replicas if r.counted)
        assert counted == sorted([a, b]), put.trace
        assert values(await c.get(b, key, "QUORUM")) == [b"v"]

    run(scenario, size=4, seed=34, **QUIET)


def test_any_is_for_writes_and_cannot_be_strict():
    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        got = await c.get("n1", key, "ANY")
        assert got.error.code == common_pb2.INVALID_ARGUMENT
        assert "ANY is for writes only" in got.error.message
        strict = await c.put("n1", key, b"v", "ANY", strict=True)
        assert strict.error.code == common_pb2.INVALID_ARGUMENT
        assert "cannot be --strict" in strict.error.message

    run(scenario, size=4, seed=35, **QUIET)


def test_any_is_acknowledged_by_a_hint_alone():
    """The coordinator is a replica cut off from the other two: ANY is acknowledged, and
    the hint for each cut replica reaches it by handoff."""

    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        a, b, cc = c.replicas(key)
        c.crash(b)
        c.crash(cc)
        put = await c.put(a, key, b"v", "ANY", trace=True)
        assert put.HasField("put"), put.error.message
        assert put.trace.required == 1
        quorum = await c.put(a, key, b"w", "QUORUM", trace=True)
        assert quorum.error.code == common_pb2.UNAVAILABLE

    run(scenario, size=4, seed=36, **QUIET)


def test_any_forwarded_from_a_node_that_is_not_a_replica():
    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        a, b, cc = c.replicas(key)
        c.crash(b)
        c.crash(cc)
        put = await c.put("n4", key, b"v", "ANY", trace=True)
        assert put.HasField("put"), put.error.message
        assert put.trace.forwarded_to == a
        await c.settle()
        assert [s.value for s in c.stored(a, key)] == [b"v"]

    run(scenario, size=4, seed=37, **QUIET)


def test_write_mode_travels_with_a_forwarded_request():
    """A coordinator that is not a replica decides the mode (from its own default when the
    client gave none) and the replica it forwards to counts as told."""

    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        a, b, cc = c.replicas(key)
        c.crash(b)
        c.crash(cc)
        c.nodes["n4"].coordinator.config.sloppy_quorum = True  # only n4's default is sloppy
        request = cpb.ClientRequest(
            put=cpb.PutRequest(key=key, value=b"v", quorum=cpb.Quorum(level=cpb.QUORUM)),
            trace=True)
        put = await c.request("n4", request)
        assert put.HasField("put"), put.error.message
        assert put.trace.forwarded_to == a
        assert any(r.hint_for and r.counted for r in put.trace.replicas), put.trace
        # the same request through the replica itself uses its strict default
        direct = await c.request(a, request)
        assert direct.error.code == common_pb2.UNAVAILABLE
        assert "hints do not count" in direct.error.message

    run(scenario, size=5, seed=38, **QUIET)


def test_any_with_every_replica_down_is_acknowledged_by_a_hint_and_handed_off():
    """ANY through a node outside the preference list while every replica is down: the
    coordinator mints the version under a fresh actor (Replica.mint_unowned), keeps a
    durable hint for each replica, and handoff delivers them when the replicas are back."""

    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        replicas = c.replicas(key)
        for node in replicas:
            c.crash(node)
        put = await c.put("n4", key, b"v", "ANY", trace=True)
        assert put.HasField("put"), put.error.message
        new = put.put.stored[-1]
        assert new.dot.node.startswith("n4@"), new  # a fresh actor of the coordinator
        hints = [r for r in put.trace.replicas if r.hint_for]
        assert sorted(r.hint_for for r in hints) == sorted(replicas)
        assert all(r.node == "n4" and r.ok and r.counted for r in hints)
        assert any("fresh actor" in e.event for e in put.trace.events)
        # nothing on the replicas yet: no read guarantee (a read at ANY is refused anyway)
        assert all(c.stored(node, key) == [] for node in replicas)
        for node in replicas:
            await c.restart(node)
        assert await c.nodes["n4"].handoff.deliver_once() == 3
        for node in replicas:
            assert [s.value for s in c.stored(node, key)] == [b"v"], node
        got = await c.get(replicas[0], key, "QUORUM")
        assert values(got) == [b"v"]
        # the put's context supersedes it like any other version
        again = await c.put(replicas[0], key, b"w", "QUORUM", context=put.put.context)
        assert again.HasField("put") and again.put.concurrent == 0

    run(scenario, size=4, seed=39, **QUIET)


def test_any_through_a_node_without_hinted_handoff_says_why():
    async def scenario(c: SimCluster):
        key = key_on(c, "n4")
        for node in c.replicas(key):
            c.crash(node)
        put = await c.put("n4", key, b"v", "ANY")
        assert put.error.code == common_pb2.UNAVAILABLE, put
        assert "keeps no hints" in put.error.message
        assert "nothing was written" in put.error.message

    run(scenario, size=4, seed=40, hinted_handoff=False, **QUIET)
