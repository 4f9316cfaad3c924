"""The Raft metadata group inside simulated Nodes: the same composition root as a real
process (Node builds the RaftDriver), over the in-memory network, in virtual time."""

from __future__ import annotations

import asyncio

import pytest
from simkit.cluster import run_scenario

from kvstore.services.raft_start import RaftStartRefused


def test_nodes_elect_a_leader_and_serve_metadata_next_to_the_data_path() -> None:
    async def scenario(cluster):
        lead = await cluster.wait_raft_leader()
        assert lead in ("n1", "n2", "n3")
        assert cluster.nodes["n4"].raft.core is None  # not a voter: it forwards
        put = await cluster.meta("n4", {"op": "put", "key": "cfg/a", "value": "1"})
        assert put["ok"] and put["leader"] == lead
        follower = next(n for n in ("n1", "n2", "n3") if n != lead)
        got = await cluster.meta(follower, {"op": "get", "key": "cfg/a"})
        assert (got["ok"], got["value"], got["found"], got["leader"]) == (True, "1", True, lead)
        # the data path runs beside it on the same nodes and network
        assert (await cluster.put("n2", b"k", b"v")).HasField("put")
        status = await cluster.meta(lead, {"op": "status"})
        assert {m["id"] for m in status["members"]} == {"n1", "n2", "n3"}
        assert status["commit_index"] >= 5  # 3 configuration entries, a no-op, the put
        return lead, asyncio.get_running_loop().time()

    first = run_scenario(scenario, size=4, seed=11, raft_voters=["n1", "n2", "n3"])
    again = run_scenario(scenario, size=4, seed=11, raft_voters=["n1", "n2", "n3"])
    assert first == again  # seeded and in virtual time: the same run twice


def test_a_voter_that_lost_its_raft_state_refuses_then_comes_back_as_a_learner() -> None:
    """Issue 10: a voter restarted with an empty raft directory must not start as a voter;
    the way back (remove, join, add as learner, promote) brings it back with every
    committed entry, and it votes again only after its promotion."""

    async def scenario(cluster):
        lead = await cluster.wait_raft_leader()
        for i in range(30):
            assert (await cluster.meta("n4", {"op": "put", "key": f"k{i}", "value": str(i)}
                                       ))["ok"]
        victim = next(n for n in ("n1", "n2", "n3") if n != lead)
        cluster.crash(victim)
        cluster.wipe_raft(victim)
        with pytest.raises(RaftStartRefused) as refused:
            await cluster.restart(victim)
        msg = str(refused.value)
        assert "\n" not in msg and msg.startswith(f"{victim} is a raft voter")
        assert "--raft-bootstrap was not given" in msg and "unsafe" in msg
        for command in (f"kv raft remove {victim}", "--raft-join",
                        f"kv raft add {victim} --learner", f"kv raft promote {victim}"):
            assert command in msg

        # the way back
        r = await cluster.meta("n4", {"op": "conf", "change": "remove", "node": victim})
        assert r["ok"] and victim not in r["voters"], r
        await cluster.restart(victim, raft_join=True)
        joiner = cluster.nodes[victim].raft
        assert joiner.status()["joining"] is True
        r = await cluster.meta(victim, {"op": "conf", "change": "promote", "node": victim})
        assert not r["ok"] and "learner first" in r["error"]  # forwarded, refused, explained
        r = await cluster.meta("n4", {"op": "conf", "change": "add_learner", "node": victim})
        assert r["ok"] and r["learners"] == [victim] and "warning" not in r, r  # it joins
        r = await cluster.meta("n4", {"op": "conf", "change": "promote", "node": victim})
        assert r["ok"] and victim in r["voters"] and r["learners"] == [], r
        for _ in range(100):
            await asyncio.sleep(0.05)
            if joiner.sm.applied >= cluster.nodes[lead].raft.core.commit:
                break
        assert joiner.sm.get("k29") == "29" and joiner.sm.get("k0") == "0"
        assert "joining" not in joiner.status() and not joiner.core.joining
        assert cluster.nodes[victim].raft.log.files.read("raft.joining") == b""

        # it is a full voter again: with the old leader gone it helps elect a new one
        cluster.crash(lead)
        await cluster.nodes[lead].raft.stop()
        new = await cluster.wait_raft_leader()
        assert new != lead
        got = await cluster.meta(victim, {"op": "get", "key": "k29"})
        assert got["value"] == "29"

    run_scenario(scenario, size=4, seed=5, raft_voters=["n1", "n2", "n3"])


def test_raft_config_in_the_log_wins_over_the_flag() -> None:
    """After a membership change, --raft-voters (static, the same on every node) no longer
    describes the group; a restarted node follows its log."""

    async def scenario(cluster):
        lead = await cluster.wait_raft_leader()
        r = await cluster.meta(lead, {"op": "conf", "change": "add_learner", "node": "n4"})
        # added first (etcd's order), but n4 runs no raft member yet: the leader says so
        assert r["ok"] and "n4 answers but runs no raft member" in r["warning"], r
        assert "KV_RAFT_JOIN=1" in r["warning"], r
        await cluster.restart("n4", raft_join=True)  # n4 is not in --raft-voters
        r = await cluster.meta(lead, {"op": "conf", "change": "promote", "node": "n4"})
        assert r["ok"] and r["voters"] == ["n1", "n2", "n3", "n4"], r
        await cluster.restart("n4")  # no --raft-join now: it recovers its state
        await cluster.restart("n1")
        await asyncio.sleep(2.0)
        for n in ("n1", "n4"):
            status = cluster.nodes[n].raft.status()
            assert {m["id"] for m in status["members"]} == {"n1", "n2", "n3", "n4"}, status

    run_scenario(scenario, size=4, seed=6, raft_voters=["n1", "n2", "n3"])
