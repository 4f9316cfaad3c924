"""The Raft metadata group inside simulated Nodes: the same composition root as a real
process (Node builds the RaftDriver), over the in-memory network, in virtual time."""

from __future__ import annotations

import asyncio

from simkit.cluster import run_scenario


def test_nodes_elect_a_leader_and_serve_metadata_next_to_the_data_path() -> None:
    async def scenario(cluster):
        lead = await cluster.wait_raft_leader()
        assert lead in ("n1", "n2", "n3")
        assert cluster.nodes["n4"].raft.core is None  # not a voter: it forwards
        put = await cluster.meta("n4", {"op": "put", "key": "cfg/a", "value": "1"})
        assert put["ok"] and put["leader"] == lead
        follower = next(n for n in ("n1", "n2", "n3") if n != lead)
        got = await cluster.meta(follower, {"op": "get", "key": "cfg/a"})
        assert got == {"ok": True, "value": "1", "found": True, "leader": lead}
        # the data path runs beside it on the same nodes and network
        assert (await cluster.put("n2", b"k", b"v")).HasField("put")
        status = await cluster.meta(lead, {"op": "status"})
        assert {m["id"] for m in status["members"]} == {"n1", "n2", "n3"}
        assert status["commit_index"] >= 5  # 3 configuration entries, a no-op, the put
        return lead, asyncio.get_running_loop().time()

    first = run_scenario(scenario, size=4, seed=11, raft_voters=["n1", "n2", "n3"])
    again = run_scenario(scenario, size=4, seed=11, raft_voters=["n1", "n2", "n3"])
    assert first == again  # seeded and in virtual time: the same run twice
