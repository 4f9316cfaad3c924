"""Forwarded writes do not hold back the replica writes queued behind them.

A node that is not a replica of a key forwards the client's write to one (the coordinator's
`_forward`). The forward's answer waits for that replica's whole quorum round. When the
forward rode the same one-batch-in-flight queue to its peer as the node's own replica writes,
forwards in a cycle (n1's forward to n2 in flight while n2's forward to n3 is, and n3's to
n1, each coordinator needing an acknowledgement queued behind its own node's forward) waited
on each other until the deadline: with every node forwarding, all 200 ALL writes below timed
out on every seed (and the bench's ALL phase on 5 nodes without token-aware routing failed
~8% of its writes). Forwards now go on a lane of their own.
"""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster
from simkit.cluster import run_scenario as run


def _keys_not_replicated_by(c: SimCluster, node: str, count: int, tag: str) -> list[bytes]:
    keys, i = [], 0
    while len(keys) < count:
        key = f"fwd:{tag}:{i}".encode()
        i += 1
        if node not in c.replicas(key):
            keys.append(key)
    return keys


def test_concurrent_forwards_from_every_node_all_complete_at_all():
    async def scenario(c: SimCluster):
        await c.wait_ready()
        jobs = []
        for node in c.ids:
            for key in _keys_not_replicated_by(c, node, 40, node):
                jobs.append(c.put(node, key, b"v-" + key, "ALL"))
        replies = await asyncio.gather(*jobs)
        failed = [r.error.message for r in replies if r.HasField("error")]
        assert not failed, f"{len(failed)} of {len(replies)} forwarded ALL writes failed: " \
                           f"{failed[:3]}"
        forwarded = sum(n.coordinator.metrics["writes_forwarded"] for n in c.nodes.values())
        assert forwarded == len(replies), forwarded

    for seed in range(5):
        run(scenario, size=5, seed=seed, timeout_ms=2000, read_all_chance=0.0)
