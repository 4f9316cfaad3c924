"""Joins and decommissions racing with writes and reads, in virtual time, over many seeds.

Each seed builds a cluster of 3 or 4 nodes and starts clients that write new keys at
QUORUM through random coordinators. In half the seeds a node is also killed for good
and removed (`kv node remove`: its ranges copied from the survivors), and in half a node
is killed for good and a new one takes its place (`--join --replace`: it takes the dead
node's tokens and streams its ranges from the survivors). The clients also
read back keys whose writes were acknowledged before the read started. Then, in a
seeded order, a node joins (`--join`: it streams the ranges it will own) and another is
decommissioned (it streams its ranges out; in half the seeds it crashes part way, comes
back LEAVING and resumes, skipping the ranges it had pushed). Faults are seeded as well:
message loss, jittered latency that reorders messages, and partitions: in half the moves
a node (the one moving, or another) is cut off from all the others while the move is
announced, for up to 1.5 s, then the partition heals. A move that fails meanwhile (its
pulls or pushes found no way through) is resumed, as an operator would: the joining node
is restarted, the decommission or removal is run again.

The odd seeds run with a Raft group (one voter, n1, which never leaves): every ring
change is then recorded in it before gossip announces it, and the simulation checks that
order at every change any node announces (simkit/ringcheck.py). The other half keep the
gossip-only path.

Anti-entropy is off, and so is the Merkle check after a join. Only streaming, pending
ranges and the ring-change window carry the data, so the checks show that these alone
suffice:
* read-your-writes: a QUORUM read that starts after a write was acknowledged returns it,
  also while ranges move and while nodes learn of a ring change;
* nothing is lost: once the moves are done and the cluster has settled, every
  acknowledged write is stored on all N = 3 of its final owners when the seed loses no
  messages and has no partition (streaming plus pending writes put it there; no read
  repair ran), and on at least a QUORUM of them otherwise (lossy and partitioned seeds
  also read every key back at QUORUM right after each move). In a partitioned seed
  without loss or a dead node, one anti-entropy round between the final members (as a
  real cluster runs) then puts it on all N. A final ALL read returns it.

A failing seed prints the command that replays it:
    KV_MOVE_SEED=7 .venv/bin/python -m pytest tests/sim/test_membership_moves.py -k replay -s
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from simkit import vtime
from simkit.cluster import SimCluster, values
from simkit.ringcheck import watch_gossip

from kvstore.core.gossip import Status
from kvstore.services.streaming import RangeStreamer

SLOW = os.environ.get("KV_SLOW") == "1"
# 10 in the default run: with partitions and the Raft seeds a seed costs ~1.6x the CPU it
# did, and 10 cost about what 16 did before (~45 s of CPU); KV_SLOW=1 runs 300
SEEDS = int(os.environ.get("KV_MOVE_SEEDS", "300" if SLOW else "10"))
REPLAY = os.environ.get("KV_MOVE_SEED")


@dataclass
class Outcome:
    seed: int
    acked: dict[bytes, bytes] = field(default_factory=dict)
    writes: int = 0
    reads: int = 0
    violations: list[str] = field(default_factory=list)
    streamed_keys: int = 0
    streamed_bytes: int = 0
    moves: list[str] = field(default_factory=list)
    removed: bool = False  # a node died holding copies: a QUORUM of final owners is the bar
    raft: bool = False
    partitions: int = 0
    resumed: int = 0


async def scenario(seed: int, move_dir: Path) -> Outcome:
    rng = random.Random(seed)
    out = Outcome(seed)
    size = rng.choice([3, 4])
    # the Raft group and the partitions draw from their own stream: the other choices of
    # a seed are those it made before they were added
    xrng = random.Random(f"{seed}/ring")
    out.raft = seed % 2 == 1  # odd seeds: ring changes go through a Raft group
    voters = ["n1"] if out.raft else []
    cluster = await SimCluster(size, seed=seed, vnodes=8, timeout_ms=500,
                               antientropy_interval=0, ring_delay=0.6,
                               verify_moves=False, gossip_interval=0.2,
                               move_dir=move_dir, raft_voters=voters).start()
    network = cluster.network

    def watch(node_id: str) -> None:
        if out.raft:
            watch_gossip(cluster, node_id, out.violations, voters)

    if out.raft:
        await cluster.wait_raft_leader()
        for node_id in cluster.ids:
            watch(node_id)
    network.faults.drop = rng.choice([0.0, 0.0, 0.005, 0.02])
    lossless = network.faults.drop == 0.0
    network.faults.jitter = rng.choice([0.0, 0.002, 0.01])
    loop = asyncio.get_running_loop()
    acked_at: dict[bytes, float] = {}
    stop = asyncio.Event()
    serving: list[str] = list(cluster.ids)  # nodes clients may use as coordinators

    async def client(cid: int) -> None:
        crng = random.Random(seed * 1000 + cid)
        n = 0
        while not stop.is_set():
            via = crng.choice(serving)
            if acked_at and crng.random() < 0.4:
                key = crng.choice(sorted(acked_at))
                started = loop.time()
                reply = await cluster.get(via, key, "QUORUM")
                if reply.HasField("error"):  # not an answer; only wrong answers count
                    continue
                out.reads += 1
                if acked_at[key] < started and out.acked[key] not in values(reply):
                    out.violations.append(
                        f"read-your-writes: {key!r} acknowledged at {acked_at[key]:.3f}s, a "
                        f"QUORUM read through {via} at {started:.3f}s returned {values(reply)}")
            else:
                n += 1
                key, value = f"c{cid}-k{n}".encode(), f"v{cid}-{n}".encode()
                reply = await cluster.put(via, key, value, "QUORUM")
                out.writes += 1
                if not reply.HasField("error"):
                    out.acked[key], acked_at[key] = value, loop.time()
            await asyncio.sleep(crng.uniform(0.0, 0.02))

    clients = [asyncio.ensure_future(client(i)) for i in range(4)]
    await asyncio.sleep(rng.uniform(0.3, 1.0))

    async def wait_for(what: str, done, limit: float = 60.0) -> None:
        deadline = loop.time() + limit
        while not done():
            assert loop.time() < deadline, f"seed {seed}: {what} did not finish in {limit}s"
            await asyncio.sleep(0.05)

    async def sweep(when: str) -> None:
        keys = sorted(acked_at)
        for key in rng.sample(keys, min(len(keys), 150)):
            started = loop.time()
            via = rng.choice(serving)
            reply = await cluster.get(via, key, "QUORUM")
            if not reply.HasField("error") and acked_at[key] < started and \
                    out.acked[key] not in values(reply):
                out.violations.append(f"read-your-writes {when}: {key!r} through {via} "
                                      f"returned {values(reply)}")

    order = ["join", "decommission"] if rng.random() < 0.5 else ["decommission", "join"]
    if rng.random() < 0.5:  # and a node dies for good and is removed (with 4+ nodes)
        earliest = 0 if size >= 4 else order.index("join") + 1
        order.insert(rng.randrange(earliest, len(order) + 1), "remove")
    if rng.random() < 0.5:  # and a node dies for good and a new one takes its place
        order.insert(rng.randrange(0, len(order) + 1), "replace")
    def progress_of(node_id: str):
        return lambda: cluster.nodes[node_id].streamer.progress

    async def partition_during(mover: str, progress_of) -> None:
        """Cut a node off from the others while the move is announced, then heal."""
        if xrng.random() < 0.5:
            return
        deadline = loop.time() + 30.0
        while loop.time() < deadline:
            progress = progress_of()
            if progress is not None and progress.state != "announcing":
                return  # announced already (or over): no partition this time
            if progress is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(xrng.uniform(0.0, 0.5))
        victim = xrng.choice([mover, *[n for n in serving if n != mover]])
        others = set(cluster.ids) - {victim}
        network.isolate(victim, others)
        out.partitions += 1
        lasts = xrng.uniform(0.2, 1.5)
        out.moves.append(f"{victim} cut off at {loop.time():.2f}s for {lasts:.2f}s")
        await asyncio.sleep(lasts)
        network.heal()

    async def resume(what: str, node_id: str, progress_of, again) -> object:
        """Wait for the move; if it failed (a partition in its way), run it again."""
        for _ in range(5):
            await wait_for(what, lambda: progress_of() is not None
                           and progress_of().state in ("done", "failed"))
            if progress_of().state == "done":
                return progress_of()
            out.resumed += 1
            await asyncio.sleep(0.5)
            await again()
        return progress_of()

    async def start_and_stream(new: str, label: str, replace: str | None = None):
        """Start `new` joining (in `replace`'s place, if given), cut a node off while the
        move is announced, and follow the move to its end, restarting `new` if it fails."""
        kwargs = {"replace": replace} if replace else {}
        await cluster.join(new, [f"{cluster.ids[0]}:1"], join=True, **kwargs)
        watch(new)
        of = progress_of(new)
        cut = asyncio.ensure_future(partition_during(new, of))

        async def rejoin(n=new):
            await cluster.restart(n)
            watch(n)

        progress = await resume(label, new, of, rejoin)
        await cut
        return progress

    for step in order:
        if step == "remove" and len(serving) < 4:
            order_note = "remove skipped (fewer than 4 nodes)"
            out.moves.append(order_note)
            continue
        if step == "join":
            new = f"n{len(cluster.ids) + 1}"
            progress = await start_and_stream(new, f"join of {new}")
            assert progress.state == "done", f"seed {seed}: join failed: {progress.error}"
            serving.append(new)
            out.moves.append(f"join {new}: {progress.ranges_total} ranges, {progress.keys} keys")
        elif step == "replace":
            dead = rng.choice([n for n in serving if n != cluster.ids[0]])
            serving.remove(dead)
            cluster.kill(dead)
            out.removed = True  # its copies are gone: a QUORUM of final owners is the bar
            new = f"n{len(cluster.ids) + 1}"
            progress = await start_and_stream(new, f"{new} replacing {dead}", replace=dead)
            assert progress.state == "done", f"seed {seed}: replace failed: {progress.error}"
            serving.append(new)
            out.moves.append(f"replace {dead} with {new}: {progress.ranges_total} ranges, "
                             f"{progress.keys} keys")
        elif step == "remove":
            dead = rng.choice([n for n in serving if n != cluster.ids[0]])
            serving.remove(dead)
            cluster.kill(dead)
            out.removed = True
            runner = cluster.nodes[cluster.ids[0]]
            await wait_for(f"{dead} marked down",
                           lambda d=dead, r=runner: not r.membership.is_up(d))
            runner.streamer.start_remove(dead)
            of = progress_of(runner.node_id)
            cut = asyncio.ensure_future(partition_during(runner.node_id, of))

            async def remove_again(r=runner, d=dead):
                r.streamer.start_remove(d)

            progress = await resume(f"removal of {dead}", runner.node_id, of, remove_again)
            await cut
            assert progress.state == "done", f"seed {seed}: removal failed: {progress.error}"
            out.moves.append(f"remove {dead}: {progress.ranges_total} ranges, "
                             f"{progress.keys} keys")
        else:
            leaving = rng.choice([n for n in serving if n != cluster.ids[0]])
            node = cluster.nodes[leaving]
            progress = node.streamer.start_decommission()
            of = progress_of(leaving)
            cut = asyncio.ensure_future(partition_during(leaving, of))
            crash = rng.random() < 0.5  # it crashes part way and comes back
            if crash:
                pushed = rng.randint(0, 3)
                await wait_for(f"{pushed} ranges of {leaving}'s decommission",
                               lambda p=progress, k=pushed: (p.ranges_done >= k
                               and p.state == "streaming") or p.state in ("done", "failed"))
            if crash and progress.state == "streaming":  # (one that finished is LEFT)
                cluster.kill(leaving)
                await asyncio.sleep(rng.uniform(0.1, 2.0))
                if RangeStreamer.peek(move_dir / leaving / "move.json")["state"] == "left":
                    # it had told every member it left, and recorded it: that one refuses
                    # to start again with its data (tests/unit/test_move_state.py)
                    out.moves.append(f"{leaving} crashed after it left")
                    serving.remove(leaving)
                    await cut
                    continue
                node = await cluster.revive(leaving)
                watch(leaving)
                status = node.membership.status(leaving)
                assert status == Status.LEAVING.name, \
                    f"seed {seed}: {leaving} came back {status} during its decommission"
                progress = node.streamer.progress
                out.moves.append(f"{leaving} crashed after {pushed}+ ranges and resumed")
            async def leave_again(n=leaving):
                cluster.nodes[n].streamer.start_decommission()

            progress = await resume(f"decommission of {leaving}", leaving, of, leave_again)
            await cut
            assert progress.state == "done", f"seed {seed}: decommission failed: {progress.error}"
            serving.remove(leaving)
            out.moves.append(f"decommission {leaving}: {progress.ranges_total} ranges, "
                             f"{progress.keys} keys")
        out.streamed_keys += progress.keys
        out.streamed_bytes += progress.bytes
        if not lossless or out.partitions:  # read every acknowledged key back now
            await sweep(f"after {out.moves[-1]}")
        await asyncio.sleep(rng.uniform(0.2, 1.0))

    stop.set()
    await asyncio.gather(*clients)
    network.faults.drop, network.faults.jitter = 0.0, 0.0
    network.heal()
    await cluster.settle()
    await asyncio.sleep(4.0)  # background replica calls, hint delivery and gossip finish

    final = cluster.nodes[serving[0]].membership.ring
    assert final.nodes == set(serving), (final.nodes, serving)
    for node_id in serving:
        status = cluster.nodes[serving[0]].membership.status(node_id)
        assert status == Status.NORMAL.name, f"seed {seed}: {node_id} is {status}"
    def check_copies(strict: bool, when: str = "") -> None:
        for key, value in sorted(out.acked.items()):
            owners = final.preference_list(key, 3)
            holding = [o for o in owners if value in
                       [s.value for s in cluster.stored(o, key) if not s.tombstone]]
            if len(holding) < (3 if strict else 2):
                out.violations.append(f"{key!r} is on {holding} of its final owners {owners}"
                                      f"{when} (want {'all' if strict else 'a QUORUM'})")

    check_copies(lossless and not out.removed and not out.partitions)
    if lossless and not out.removed and out.partitions:
        # A write that a node cut off missed reaches it by a hint; when that node was
        # giving the range up, the hint can land after it pushed the range, so the new
        # owner lacks that copy until anti-entropy runs (off here). Settle as a real
        # cluster does: one anti-entropy session between every two final members.
        for a in serving:
            for b in serving:
                if a < b:
                    await cluster.nodes[a].antientropy.repair_with(b)
        check_copies(True, " after one anti-entropy round")
    for key, value in sorted(out.acked.items()):
        # ALL is R=N=3: with two nodes left, QUORUM (R=2) asks every node
        reply = await cluster.get(serving[0], key, "ALL" if len(serving) >= 3 else "QUORUM")
        if reply.HasField("error") or value not in values(reply):
            out.violations.append(f"an ALL read of {key!r} did not return {value!r}: {reply}")
    await cluster.stop()
    return out


def run_seed(seed: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="kv-moves-") as move_dir:
        return vtime.run(lambda: scenario(seed, Path(move_dir)))


def replay_command(seed: int) -> str:
    return (f"KV_MOVE_SEED={seed} .venv/bin/python -m pytest "
            "tests/sim/test_membership_moves.py -k replay -s")


@pytest.mark.parametrize("seed", range(SEEDS))
def test_moves_lose_nothing_and_keep_read_your_writes(seed):
    out = run_seed(seed)
    assert out.acked, f"seed {seed}: no write was acknowledged"
    assert not out.violations, (f"seed {seed} ({'; '.join(out.moves)}; raft group: {out.raft}, "
                                f"{out.partitions} partitions) failed; replay with:\n"
                                f"    {replay_command(seed)}\n" + "\n".join(out.violations[:10]))


@pytest.mark.skipif(REPLAY is None, reason="set KV_MOVE_SEED=N to replay one seed")
def test_replay():
    out = run_seed(int(REPLAY))
    print(f"seed {out.seed}: {out.writes} writes ({len(out.acked)} acknowledged), {out.reads} "
          f"reads; {'; '.join(out.moves)}; {out.streamed_keys} keys, {out.streamed_bytes} "
          f"bytes streamed; raft group: {out.raft}; {out.partitions} partitions, "
          f"{out.resumed} moves resumed")
    for v in out.violations:
        print(v)
    assert not out.violations
