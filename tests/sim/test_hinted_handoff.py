"""Sloppy quorum and hinted handoff under partitions and crashes (virtual time)."""

from __future__ import annotations

import asyncio
import logging

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import common_pb2
from kvstore.core import versions


def hints_total(c: SimCluster) -> int:
    return sum(store.count() for store in c.hints.values())


async def wait_for(condition, seconds: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.25)


def test_partitioned_replica_gets_every_write_by_handoff_after_heal():
    async def scenario(c: SimCluster):
        c.network.isolate("n3", set(c.ids))
        keys = [f"key-{i}".encode() for i in range(500)]
        for i, key in enumerate(keys):
            via = "n1" if i % 2 else "n2"
            reply = await c.put(via, key, b"v-" + key, "QUORUM")
            assert reply.HasField("put"), reply
        await c.settle()
        held = hints_total(c)
        assert held == len(keys), f"expected one hint per key for n3, found {held}"
        assert all(c.stored("n3", k) == [] for k in keys)
        c.network.heal()
        await wait_for(lambda: hints_total(c) == 0)
        for key in keys:
            assert [s.value for s in c.stored("n3", key)] == [b"v-" + key], key
        for key in keys[:50]:
            assert values(await c.get("n3", key, "ALL")) == [b"v-" + key]
        delivered = sum(n.handoff.metrics["delivered"] for n in c.nodes.values())
        assert delivered == len(keys)

    run(scenario, seed=1)


def test_sloppy_write_at_all_succeeds_through_a_fallback_and_is_handed_off():
    async def scenario(c: SimCluster):
        c.crash("n2")
        keys = [k for k in (f"k{i}".encode() for i in range(200)) if "n2" in c.replicas(k)]
        keys = keys[:60]
        for key in keys:
            coordinator = next(n for n in c.replicas(key) if n != "n2")
            reply = await c.put(coordinator, key, b"v", "ALL", trace=True, sloppy=True)
            assert reply.HasField("put"), reply.error.message
            hinted = [r for r in reply.trace.replicas if r.hint_for == "n2" and r.ok]
            assert hinted and hinted[0].node not in c.replicas(key)
            assert hinted[0].counted  # sloppy: the hint counted towards W
        await c.settle()
        assert hints_total(c) >= len(keys)
        await c.restart("n2")
        await wait_for(lambda: hints_total(c) == 0)
        for key in keys:
            assert [s.value for s in c.stored("n2", key)] == [b"v"]

    run(scenario, size=4, seed=2)


def test_strict_quorum_does_not_count_hints():
    async def scenario(c: SimCluster):
        c.crash("n2")
        key = next(k for k in (f"k{i}".encode() for i in range(100)) if "n2" in c.replicas(k))
        coordinator = next(n for n in c.replicas(key) if n != "n2")
        reply = await c.put(coordinator, key, b"v", "ALL", strict=True)
        assert reply.error.code == common_pb2.UNAVAILABLE
        assert "hints do not count" in reply.error.message
        # the write is still kept for n2 and delivered when it returns
        await c.settle()
        await c.restart("n2")
        await wait_for(lambda: hints_total(c) == 0)
        assert [s.value for s in c.stored("n2", key)] == [b"v"]

    run(scenario, size=4, seed=3)


def test_no_hinted_handoff_writes_no_hints():
    async def scenario(c: SimCluster):
        c.crash("n2")
        key = next(k for k in (f"k{i}".encode() for i in range(100)) if "n2" in c.replicas(k))
        coordinator = next(n for n in c.replicas(key) if n != "n2")
        reply = await c.put(coordinator, key, b"v", "ALL")
        assert reply.error.code == common_pb2.UNAVAILABLE
        await c.settle()
        assert hints_total(c) == 0

    run(scenario, size=4, seed=4, hinted_handoff=False)


def test_hints_for_departed_or_expired_owners_are_dropped_logged_and_counted(caplog):
    async def scenario(c: SimCluster):
        node = c.nodes["n1"]
        node.handoff.max_age_ms = 60_000
        c.network.crash("n2")  # so nothing is delivered meanwhile
        record = versions.encode(versions.update([], {}, "n1", b"x"))
        c.hints["n1"].add("n2", b"k2", record, node.handoff.clock_ms())
        await asyncio.sleep(61)  # the hint for n2 is now too old
        c.hints["n1"].add("ghost", b"k1", record, node.handoff.clock_ms())  # not a member
        with caplog.at_level(logging.WARNING):
            await node.handoff.deliver_once()
        assert c.hints["n1"].count() == 0
        assert node.handoff.metrics["dropped_not_member"] == 1
        assert node.handoff.metrics["dropped_expired"] == 1
        assert "ghost" in caplog.text and "expired" in caplog.text

    run(scenario, seed=5)


def test_handoff_is_paced_to_its_rate_and_still_drains_every_hint():
    """Issue 13: delivery never runs ahead of --handoff-rate (virtual time), in batches of
    at most `batch` writes, and every hint still arrives."""
    rate, keys_n = 40.0, 300

    async def scenario(c: SimCluster):
        c.network.isolate("n3", set(c.ids))
        keys = [f"key-{i}".encode() for i in range(keys_n)]
        for i, key in enumerate(keys):
            reply = await c.put("n1" if i % 2 else "n2", key, b"v-" + key, "QUORUM")
            assert reply.HasField("put"), reply
        await c.settle()
        assert hints_total(c) == keys_n
        held = {n: c.hints[n].count() for n in ("n1", "n2")}
        assert min(held.values()) > 2 * c.nodes["n1"].handoff.batch
        loop = asyncio.get_running_loop()
        healed = loop.time()
        c.network.heal()
        await wait_for(lambda: hints_total(c) == 0, seconds=120)
        took = loop.time() - healed
        # each node sends `held` hints at `rate` a second: it waits out the rate after
        # every batch but its last, i.e. at least (held - batch) / rate seconds
        batch = c.nodes["n1"].handoff.batch
        assert took >= (max(held.values()) - batch) / rate, (took, held)
        for key in keys:
            assert [s.value for s in c.stored("n3", key)] == [b"v-" + key], key
        assert sum(n.handoff.metrics["delivered"] for n in c.nodes.values()) == keys_n

    run(scenario, seed=6, handoff_rate=rate)
