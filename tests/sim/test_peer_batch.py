"""An inbound peer batch's replica writes are merged with one storage call
(Node.handle_peer_batch -> Replica.merge_many), and every write still lands on every
replica; other messages in the same batch (reads) are answered beside them, in order."""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run


def test_concurrent_writes_reach_every_replica_through_batched_merges():
    async def scenario(c: SimCluster):
        keys = [f"batch{i}".encode() for i in range(40)]
        replies = await asyncio.gather(*(c.put("n1", k, b"v-" + k, "QUORUM") for k in keys),
                                       *(c.get("n1", k, "ALL") for k in keys[:10]))
        assert all(not r.HasField("error") for r in replies), replies
        await c.settle()
        batched = sum(n.replica.metrics["merges_batched"] for n in c.nodes.values())
        assert batched >= 2, "no inbound batch carried two writes: the batch path never ran"
        for key in keys:
            for node in c.replicas(key):
                assert [s.value for s in c.stored(node, key)] == [b"v-" + key], (node, key)
            assert values(await c.get("n2", key, "ALL")) == [b"v-" + key]

    run(scenario, seed=7, antientropy_interval=0)
