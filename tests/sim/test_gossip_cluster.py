"""Gossip inside running nodes: detection of crashes and restarts, joins, hostile input."""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb


async def until(condition, limit: float, step: float = 0.1) -> float:
    """Virtual seconds until `condition()` holds; fails past `limit`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        assert loop.time() - start < limit, f"not reached within {limit} s"
        await asyncio.sleep(step)
    return loop.time() - start


def test_crashed_node_is_marked_down_by_every_peer_then_up_after_restart():
    async def scenario(c: SimCluster):
        await asyncio.sleep(10)  # a few gossip rounds: every detector has history
        peers = [n for n in c.ids if n != "n3"]
        assert all(c.nodes[p].membership.is_up("n3") for p in peers)
        generation = c.nodes["n1"].membership.gossiper.endpoints["n3"].generation
        c.crash("n3")
        took = await until(lambda: all(not c.nodes[p].membership.is_up("n3") for p in peers),
                           limit=30)
        print(f"n3 marked down by every peer after {took:.1f} s (virtual)")
        await asyncio.sleep(2)
        await c.restart("n3")
        took = await until(lambda: all(c.nodes[p].membership.is_up("n3") for p in peers),
                           limit=15)
        print(f"n3 marked up again after {took:.1f} s")
        assert c.nodes["n1"].membership.gossiper.endpoints["n3"].generation > generation

    run(scenario, size=4)


def test_a_new_node_joins_through_one_seed_and_everyone_puts_it_on_the_ring():
    async def scenario(c: SimCluster):
        await asyncio.sleep(3)
        node = await c.join("n5", seeds=["n1:1"])
        await until(lambda: node.membership.ready, limit=10)
        await until(lambda: all("n5" in c.nodes[n].membership.ring.nodes for n in c.ids),
                    limit=30)
        rings = {tuple(c.nodes[n].membership.ring.tokens) for n in c.ids}
        assert len(rings) == 1, "members disagree about the ring"
        key = next(f"k{i}".encode() for i in range(500) if "n5" in c.replicas(f"k{i}".encode()))
        assert (await c.put("n5", key, b"v", "ALL")).HasField("put")
        assert values(await c.get("n1", key, "ALL")) == [b"v"]

    run(scenario, size=4)


def test_writes_skip_a_replica_the_detector_marks_down():
    async def scenario(c: SimCluster):
        await asyncio.sleep(5)
        c.crash("n2")
        await until(lambda: not c.nodes["n1"].membership.is_up("n2"), limit=30)
        key = next(f"k{i}".encode() for i in range(500)
                   if "n2" in c.replicas(f"k{i}".encode()) and "n1" in c.replicas(f"k{i}".encode()))
        reply = await c.put("n1", key, b"v", "ALL", trace=True, sloppy=True)
        assert reply.HasField("put"), reply.error.message
        events = " ".join(e.event for e in reply.trace.events)
        assert "n2 is down or slow: writing a hint" in events
        # the hint was sent at once, not after a timeout
        assert reply.trace.total_ms < 100

    run(scenario, size=4)


def test_hostile_gossip_is_rejected_and_the_node_keeps_working():
    async def scenario(c: SimCluster):
        node = c.nodes["n1"]
        for garbage in (b"\xff\x00garbage", b"", b"\x0a\x05hello"):
            result = await node.handle_peer("attacker", pb.PeerMessage(gossip=garbage))
            assert result.HasField("error") or result.raw == b""
            if result.HasField("error"):
                assert result.error.code == common_pb2.INVALID_ARGUMENT
        assert node.membership.metrics["rejected"] >= 1
        assert sorted(node.membership.members) == sorted(c.ids)
        assert (await c.put("n1", b"k", b"v", "QUORUM")).HasField("put")

    run(scenario)
