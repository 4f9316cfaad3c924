"""The coordinator's quorum counting (`Coordinator._gather`, done-callbacks and one timer):
a replica that never answers is replaced by speculation after a quarter of the deadline,
a failed one at once, and a quorum that cannot be reached fails at the deadline."""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

KEY = b"gather:1"


def test_a_silent_replica_is_replaced_by_speculation_after_a_quarter_of_the_deadline():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        assert (await c.put(a, KEY, b"v1", "ALL")).HasField("put")
        await c.settle()
        coordinator = c.nodes[a].coordinator
        # a reads from itself and the first replica it thinks up; that one's messages are
        # lost (it stays "up": the detector has not noticed), so no quorum within
        # timeout/4 -> the third replica is asked too
        asked_first = sorted([b, cc], key=lambda n: not c.nodes[a].membership.is_up(n))[0]
        spare = cc if asked_first == b else b
        c.network.cut_one_way(a, asked_first)
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await c.get(a, KEY, "QUORUM", trace=True)
        took = loop.time() - started
        assert values(got) == [b"v1"]
        events = [e.event for e in got.trace.events]
        assert any(f"also asking {spare}" in e for e in events), events
        timeout = coordinator.config.timeout_ms / 1000
        assert timeout / 4 <= took < timeout, took
        answered = {r.node for r in got.trace.replicas if r.ok}
        assert answered == {a, spare}, got.trace.replicas

    run(scenario, read_all_chance=0.0)


def test_an_unreachable_quorum_fails_at_the_deadline_with_every_reason():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        assert (await c.put(a, KEY, b"v1", "ALL")).HasField("put")
        await c.settle()
        c.network.cut_one_way(a, b)
        c.network.cut_one_way(a, cc)
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await c.get(a, KEY, "ALL")
        took = loop.time() - started
        timeout = c.nodes[a].coordinator.config.timeout_ms / 1000
        assert got.HasField("error"), got
        assert "R=3 needs 3 replicas, 1 answered" in got.error.message, got.error.message
        assert b in got.error.message and cc in got.error.message, got.error.message
        assert timeout <= took < timeout * 1.5, took
        # a put at QUORUM through a with both peers silent: W=2 is not reached, and the
        # write is reported durable on a alone
        put = await c.put(a, KEY, b"v2", "QUORUM")
        assert put.HasField("error"), put
        assert "W=2 needs 2 replicas, 1 answered" in put.error.message, put.error.message

    run(scenario, read_all_chance=0.0, hinted_handoff=False)
