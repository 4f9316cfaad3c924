"""A corrupted record is reported, never served, and restored from the other replicas."""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import common_pb2

KEY = b"precious"


def test_corrupted_replica_is_not_served_and_read_repair_restores_it():
    async def scenario(c: SimCluster):
        assert (await c.put("n1", KEY, b"gold", "ALL")).HasField("put")
        await c.settle()
        c.engines["n2"].corrupt_for_test(KEY)
        got = await c.get("n1", KEY, "ALL", trace=True)
        # ALL cannot be met while n2 refuses to serve the damaged record
        assert got.error.code == common_pb2.CORRUPTION, got
        assert "corrupted record" in got.error.message and "n2" in got.error.message
        # the failed read already sent the good copy to n2
        await c.settle()
        assert [s.value for s in c.stored("n2", KEY)] == [b"gold"]
        assert values(await c.get("n2", KEY, "ALL")) == [b"gold"]

    run(scenario, seed=21, read_all_chance=1.0)


def test_quorum_read_skips_and_repairs_a_corrupted_replica():
    async def scenario(c: SimCluster):
        assert (await c.put("n1", KEY, b"gold", "ALL")).HasField("put")
        await c.settle()
        c.engines["n2"].corrupt_for_test(KEY)
        for via in c.ids:
            assert values(await c.get(via, KEY, "QUORUM")) == [b"gold"]
        await c.get("n1", KEY, "ALL")
        await c.settle()
        assert [s.value for s in c.stored("n2", KEY)] == [b"gold"]

    run(scenario, seed=23, read_all_chance=1.0)


def test_anti_entropy_restores_a_corrupted_record():
    async def scenario(c: SimCluster):
        assert (await c.put("n1", KEY, b"gold", "ALL")).HasField("put")
        await c.settle()
        c.engines["n3"].corrupt_for_test(KEY)
        stats, _, errors = await c.nodes["n3"].antientropy.repair()
        assert not errors
        assert c.nodes["n3"].antientropy.metrics["corrupt_records"] >= 1
        assert [s.value for s in c.stored("n3", KEY)] == [b"gold"]
        assert stats.keys_received >= 1

    run(scenario, seed=22, hinted_handoff=False, antientropy_interval=0)


def test_a_corrupted_record_whose_good_copies_are_collectable_tombstones_is_replaced():
    """Found by the data-path simulation on code before purge markers: merges refused
    tombstones past their grace period for a key they did not hold, so such a damaged
    record was never replaced, and repair raised Corruption out of its first session."""

    async def scenario(c: SimCluster):
        put = await c.put("n1", KEY, b"gold", "ALL")
        assert (await c.delete("n1", KEY, "ALL", context=put.put.context)).HasField("put")
        await c.settle()
        await asyncio.sleep(2.5)  # past the grace period
        c.engines["n3"].corrupt_for_test(KEY)
        _, _, errors = await c.nodes["n3"].antientropy.repair()  # must not raise
        assert not errors, errors
        assert [s.tombstone for s in c.stored("n3", KEY)] in ([True], [])

    run(scenario, seed=24, hinted_handoff=False, antientropy_interval=0,
        tombstone_grace_ms=2000, max_clock_skew_ms=500)


def test_a_corrupted_record_of_a_key_the_others_purged_is_dropped():
    async def scenario(c: SimCluster):
        put = await c.put("n1", KEY, b"gold", "ALL")
        assert (await c.delete("n1", KEY, "ALL", context=put.put.context)).HasField("put")
        await c.settle()
        await asyncio.sleep(2.5)  # past the grace period
        for node_id in ("n1", "n3"):  # they confirm with every replica and purge theirs
            await c.nodes[node_id].antientropy.repair()
        assert c.stored("n1", KEY) == [] and c.stored("n3", KEY) == []
        await asyncio.sleep(2.5)  # their purge markers expire (they live a grace period)
        c.engines["n2"].corrupt_for_test(KEY)  # n2 had not purged its copy yet
        for _ in range(3):
            for node_id in c.ids:
                await c.nodes[node_id].antientropy.repair()
        got = await c.get("n1", KEY, "ALL")
        assert got.HasField("get") and not got.get.found, got.error.message

    run(scenario, seed=25, hinted_handoff=False, antientropy_interval=0,
        tombstone_grace_ms=2000, max_clock_skew_ms=500)
