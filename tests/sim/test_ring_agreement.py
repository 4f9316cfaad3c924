"""Ring changes agreed through the Raft group (issue 15), in simulated clusters.

* Two replacements of the same dead node start at the same moment: both claim its tokens.
  The Raft group records the first claim it orders; the other is refused with an error
  naming the holder, never gossips the tokens, and is on nobody's ring (pending or not).
* Every ring change (join, replace, decommission, remove) is committed in the Raft group
  before gossip announces it: each node's gossip state is watched, and at every status or
  token change it announces, the group's record must already say so.
* A cluster without a Raft group keeps the gossip-only path (the membership simulation,
  tests/sim/test_membership_moves.py, runs both ways).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from simkit import vtime
from simkit.cluster import SimCluster
from simkit.ringcheck import committed as committed_by
from simkit.ringcheck import watch_gossip as watch_by

VOTERS = ["n1", "n2", "n3"]


def committed(cluster: SimCluster) -> dict[str, tuple[str, tuple[int, ...]]]:
    return committed_by(cluster, VOTERS)


def watch_gossip(cluster: SimCluster, node_id: str, violations: list[str]) -> None:
    watch_by(cluster, node_id, violations, VOTERS)


async def wait_for(what: str, done, limit: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not done():
        assert loop.time() < deadline, f"{what} did not happen in {limit}s"
        await asyncio.sleep(0.05)


def finished(node) -> bool:
    return node.streamer.progress is not None and \
        node.streamer.progress.state in ("done", "failed")


async def racing_replacements(seed: int, move_dir: Path) -> None:
    cluster = await SimCluster(4, seed=seed, vnodes=8, raft_voters=VOTERS,
                               antientropy_interval=0, ring_delay=0.5, verify_moves=False,
                               gossip_interval=0.2, move_dir=move_dir).start()
    try:
        await cluster.wait_raft_leader()
        await wait_for("every member recorded NORMAL", lambda: all(
            committed(cluster).get(n, ("",))[0] == "NORMAL" for n in cluster.ids))
        for i in range(40):
            assert not (await cluster.put("n1", f"k{i}".encode(), b"v")).HasField("error")
        cluster.kill("n4")  # not a voter: the group keeps its three
        a = await cluster.join("n5", ["n1:1"], join=True, replace="n4")
        b = await cluster.join("n6", ["n2:1"], join=True, replace="n4")
        await wait_for("both replacements finished", lambda: finished(a) and finished(b))
        states = {n.node_id: n.streamer.progress for n in (a, b)}
        done = [n for n, p in states.items() if p.state == "done"]
        refused = [n for n, p in states.items() if p.state == "failed"]
        assert len(done) == 1 and len(refused) == 1, {n: (p.state, p.error)
                                                     for n, p in states.items()}
        winner, loser = done[0], refused[0]
        error = states[loser].error
        assert "refused by the raft group" in error and winner in error, error
        record = committed(cluster)
        assert record["n4"][0] == "LEFT" and record[winner][0] == "NORMAL", record
        assert loser not in record, record
        # the refused one never gossiped the tokens: on nobody's ring, pending or not
        assert cluster.nodes[loser].membership.gossiper.local.tokens == ()
        await asyncio.sleep(2.0)
        for node_id in ("n1", "n2", "n3", winner):
            membership = cluster.nodes[node_id].membership
            assert loser not in membership.ring.nodes
            assert membership.pending_ring is None or \
                loser not in membership.pending_ring.nodes
            assert sorted(membership.ring.nodes) == sorted(["n1", "n2", "n3", winner])
        for i in range(40):
            reply = await cluster.get("n1", f"k{i}".encode(), "ALL")
            assert not reply.HasField("error"), reply
        # restarted as it was started, the refused node tries again and is refused again:
        # it never comes back NORMAL with the tokens it was refused
        await cluster.restart(loser, join=True, replace="n4")
        again = cluster.nodes[loser]
        await wait_for("the refused node's second attempt", lambda: finished(again))
        assert again.streamer.progress.state == "failed", again.streamer.progress
        assert again.membership.status(loser) == "JOINING"
        assert again.membership.gossiper.local.tokens == ()
        assert loser not in committed(cluster)
    finally:
        await cluster.stop()


def run_racing(seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kv-race-") as move_dir:
        vtime.run(lambda: racing_replacements(seed, Path(move_dir)))


def test_two_racing_replacements_of_one_dead_node_one_is_refused():
    for seed in (1, 2):
        run_racing(seed)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KV_SLOW") != "1", reason="slow: set KV_SLOW=1")
@pytest.mark.parametrize("seed", range(3, 33))
def test_racing_replacements_more_seeds(seed):
    run_racing(seed)


async def changes_recorded_first(seed: int) -> list[str]:
    cluster = await SimCluster(4, seed=seed, vnodes=8, raft_voters=VOTERS,
                               antientropy_interval=0, ring_delay=0.5, verify_moves=False,
                               gossip_interval=0.2).start()
    violations: list[str] = []
    try:
        await cluster.wait_raft_leader()
        for node_id in cluster.ids:
            watch_gossip(cluster, node_id, violations)
        await wait_for("every member recorded NORMAL", lambda: all(
            committed(cluster).get(n, ("",))[0] == "NORMAL" for n in cluster.ids))
        for i in range(30):
            await cluster.put("n1", f"k{i}".encode(), b"v")
        # a join
        n5 = cluster.nodes["n5"] = await cluster.join("n5", ["n1:1"], join=True)
        watch_gossip(cluster, "n5", violations)
        await wait_for("n5 joined", lambda: finished(n5))
        assert n5.streamer.progress.state == "done", n5.streamer.progress.error
        # a decommission
        progress = cluster.nodes["n4"].streamer.start_decommission()
        await wait_for("n4 left", lambda: progress.state in ("done", "failed"))
        assert progress.state == "done", progress.error
        # a replacement of a dead voter (two of three voters stay)
        cluster.kill("n3")
        n6 = await cluster.join("n6", ["n1:1"], join=True, replace="n3")
        watch_gossip(cluster, "n6", violations)
        await wait_for("n6 replaced n3", lambda: finished(n6))
        assert n6.streamer.progress.state == "done", n6.streamer.progress.error
        # a forced removal of a dead node
        cluster.kill("n5")
        runner = cluster.nodes["n1"]
        await wait_for("n5 marked down", lambda: not runner.membership.is_up("n5"))
        progress = runner.streamer.start_remove("n5")
        await wait_for("n5 removed", lambda: progress.state in ("done", "failed"))
        assert progress.state == "done", progress.error
        record = committed(cluster)
        assert {n: s for n, (s, _) in record.items()} == {
            "n1": "NORMAL", "n2": "NORMAL", "n3": "LEFT", "n4": "LEFT", "n5": "LEFT",
            "n6": "NORMAL"}, record
        assert record["n6"][1] == tuple(sorted(
            cluster.nodes["n6"].membership.gossiper.local.tokens))
        # what kv ring shows: the epoch each node read, and the recorded statuses
        await asyncio.sleep(11.0)  # a refresh of the committed view on every node
        epochs = {n: cluster.nodes[n].ring_log.epoch for n in ("n1", "n2", "n6")}
        leader = cluster.nodes[cluster.raft_leader()].raft.sm.ring.epoch
        assert set(epochs.values()) == {leader}, (epochs, leader)
        assert cluster.nodes["n2"].ring_log.status("n5") == "LEFT"
    finally:
        await cluster.stop()
    return violations


def test_every_ring_change_is_recorded_before_gossip_announces_it():
    violations = vtime.run(lambda: changes_recorded_first(3))
    assert not violations, violations


async def clients_cannot_forge(seed: int) -> None:
    from kvstore._proto import meta_pb2 as mpb
    from kvstore.node.meta_service import MetaServicer

    cluster = await SimCluster(3, seed=seed, vnodes=8, raft_voters=VOTERS,
                               antientropy_interval=0, gossip_interval=0.2).start()
    try:
        await cluster.wait_raft_leader()
        await wait_for("every member recorded NORMAL", lambda: all(
            committed(cluster).get(n, ("",))[0] == "NORMAL" for n in cluster.ids))
        servicer = MetaServicer(cluster.nodes["n2"])
        forged = mpb.MetaRequest(command=mpb.MetaCommand(
            session=mpb.Session(client_id=1, seq=1),
            ring_change=mpb.RingChange(node="n3", status=4)))
        reply = await servicer.Call(forged, None)
        assert reply.result.code == mpb.META_BAD_REQUEST, reply
        assert "not sent by clients" in reply.result.error
        assert committed(cluster)["n3"][0] == "NORMAL"
        read = await servicer.Call(mpb.MetaRequest(ring_read=mpb.RingRead()), None)
        assert read.result.code == mpb.META_OK, read
        assert sorted(r.node for r in read.ring) == ["n1", "n2", "n3"]
        assert read.ring_epoch == max(r.revision for r in read.ring) > 0
    finally:
        await cluster.stop()


def test_clients_read_the_committed_ring_but_cannot_change_it():
    vtime.run(lambda: clients_cannot_forge(4))
