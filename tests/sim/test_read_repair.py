"""Read repair: stale replicas that answer a read get the merged versions."""

from __future__ import annotations

import pytest
from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

KEY = b"user:42"


@pytest.mark.parametrize("read_all_chance", [1.0, 0.0])
def test_quorum_read_repairs_a_stale_replica_so_the_next_quorum_pair_sees_it(read_all_chance):
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        # v1 reaches only a (b and c are cut off from a while it is written at W=1)
        c.network.partition({a}, {b, cc})
        assert (await c.put(a, KEY, b"v1", "ONE")).HasField("put")
        await c.settle()
        c.network.heal()
        assert c.stored(b, KEY) == [] and c.stored(cc, KEY) == []
        # a QUORUM read through a while b is cut off: answers come from a and c
        c.network.isolate(b, set(c.ids))
        got = await c.get(a, KEY, "QUORUM", trace=True)
        assert values(got) == [b"v1"]
        events = [e.event for e in got.trace.events]
        assert any("read repair" in e and cc in e for e in events), events
        # the repair finished before the read answered
        assert [s.value for s in c.stored(cc, KEY)] == [b"v1"]
        # now a is gone: the pair (b, c) must still return v1
        c.network.heal()
        c.network.isolate(a, set(c.ids))
        assert values(await c.get(b, KEY, "QUORUM")) == [b"v1"]

    run(scenario, read_all_chance=read_all_chance)


def test_read_at_one_repairs_in_the_background():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        c.network.partition({a}, {b, cc})
        assert (await c.put(a, KEY, b"v1", "ONE")).HasField("put")
        await c.settle()
        c.network.heal()
        got = await c.get(b, KEY, "ONE")
        # ONE may answer from a stale replica; either way the stale ones get repaired
        assert values(got) in ([b"v1"], [])
        await c.settle()
        await c.get(b, KEY, "ALL")
        await c.settle()
        for node in (a, b, cc):
            assert [s.value for s in c.stored(node, KEY)] == [b"v1"]

    run(scenario)


def test_siblings_are_merged_onto_every_replica_by_an_all_read():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        c.network.partition({a}, {b, cc})
        await c.put(a, KEY, b"left", "ONE")
        await c.put(b, KEY, b"right", "ONE")
        await c.settle()
        c.network.heal()
        got = await c.get(cc, KEY, "ALL")
        assert values(got) == [b"left", b"right"]
        for node in (a, b, cc):
            assert sorted(s.value for s in c.stored(node, KEY)) == [b"left", b"right"]

    run(scenario)
