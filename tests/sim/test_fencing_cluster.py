"""Fencing enforced by the store, in whole simulated clusters (virtual time).

A stale lock holder's guarded write that reached a replica before the new holder's is
hidden everywhere once the replicas have exchanged versions, and the stale holder's next
write is refused; replicas that refuse a replicated write make the client learn it
(docs/architecture.md, "Fencing").
"""

from __future__ import annotations

import asyncio
from collections import Counter

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import common_pb2
from kvstore.core import versions

KEY = b"report:today"


async def repair_all(c: SimCluster, rounds: int = 2) -> None:
    for _ in range(rounds):
        for node_id in c.ids:
            if node_id in c.down:
                continue
            _, _, errors = await c.nodes[node_id].antientropy.repair()
            assert not errors, errors
    await c.settle()


def stored_values(c: SimCluster, node: str, key: bytes) -> set[bytes]:
    return {s.value for s in c.stored(node, key)}


def shown(c: SimCluster, node: str, key: bytes) -> list[bytes]:
    return sorted(s.value for s in versions.live(c.stored(node, key)))


def fenced(reply) -> common_pb2.Fenced:
    assert reply.HasField("error") and reply.error.code == common_pb2.FENCED, reply
    return reply.error.fenced


def test_a_stale_write_that_reached_a_replica_first_is_superseded_everywhere_after_repair():
    async def scenario(c: SimCluster):
        first, second, third = c.replicas(KEY)
        # The old holder (token 5) is cut off with one replica: its write lands there
        # first, and is acknowledged at ONE (that replica never saw a higher token).
        c.network.partition({first}, set(c.ids) - {first})
        reply = await c.put(first, KEY, b"stale", "ONE", fence=("jobs/nightly", 5))
        assert reply.HasField("put"), reply
        # The lock passed on (token 7); the new holder writes on the other side.
        reply = await c.put(second, KEY, b"newer", "QUORUM", fence=("jobs/nightly", 7))
        assert reply.HasField("put"), reply
        await c.settle()
        assert stored_values(c, first, KEY) == {b"stale"}
        c.network.heal()
        await repair_all(c)
        for node in (first, second, third):
            # both versions are held (a merge drops nothing) but only the newer is shown
            assert stored_values(c, node, KEY) == {b"stale", b"newer"}, node
            assert shown(c, node, KEY) == [b"newer"], node
        for via in c.ids:
            assert values(await c.get(via, KEY, "ALL")) == [b"newer"], via
        # The stale holder comes back: refused by the replica that took its first write
        # (repair taught it token 7), and nothing is written.
        before = stored_values(c, first, KEY)
        info = fenced(await c.put(first, KEY, b"again", "ONE", fence=("jobs/nightly", 5)))
        assert (info.lock, info.token, info.highest) == ("jobs/nightly", 5, 7)
        assert list(info.refused_by) == [first] and not info.accepted_by
        assert stored_values(c, first, KEY) == before
        # ... in another key too: the replica's table knows the lock, not just this key
        other = next(k for k in (f"k{i}".encode() for i in range(200))
                     if first in c.replicas(k))
        assert fenced(await c.put(first, other, b"x", "ALL", fence=("jobs/nightly", 6)))
        # The new holder's read-modify-write supersedes the stale version for good.
        read = await c.get(second, KEY, "QUORUM")
        reply = await c.put(second, KEY, b"final", "QUORUM", context=read.get.context,
                            fence=("jobs/nightly", 7))
        assert reply.HasField("put") and len(reply.put.stored) == 1, reply
        await repair_all(c)
        for node in (first, second, third):
            assert stored_values(c, node, KEY) == {b"final"}, node

    run(scenario, size=5, seed=3, antientropy_interval=0)


def test_replicas_that_refuse_a_replicated_write_make_the_client_learn_it():
    async def scenario(c: SimCluster):
        first, second, third = c.replicas(KEY)
        # `second` alone learns token 7 of the lock, through a key the others do not hold
        taught = next(k for k in (f"t{i}".encode() for i in range(500))
                      if second in c.replicas(k) and first not in c.replicas(k)
                      and third not in c.replicas(k))
        via = c.replicas(taught)[0]
        assert (await c.put(via, taught, b"x", "ALL", fence=("L", 7))).HasField("put")
        await c.settle()
        reply = await c.put(first, KEY, b"stale", "ALL", fence=("L", 5), trace=True)
        info = fenced(reply)
        assert list(info.refused_by) == [second] and info.highest == 7
        assert sorted(info.accepted_by) == sorted([first, third])
        assert "durable on" in reply.error.message and "not rolled back" in reply.error.message
        await c.settle()
        assert stored_values(c, second, KEY) == set()          # refused: not merged
        assert not any(c.hints[n].count_by_target().get(second) for n in c.ids), \
            "a replica that refused the write was sent a hint of it"
        assert stored_values(c, third, KEY) == {b"stale"}      # accepted where unknown
        # nothing of this key is newer, so the write shows: the guarantee is per key
        assert values(await c.get(first, KEY, "ONE")) == [b"stale"]
        # the new holder writes the key: the stale version is hidden everywhere
        assert (await c.put(second, KEY, b"newer", "ONE", fence=("L", 7))).HasField("put")
        await repair_all(c)
        for node in (first, second, third):
            assert shown(c, node, KEY) == [b"newer"], node

    run(scenario, size=5, seed=4, antientropy_interval=0)


def test_a_forwarded_guarded_write_refused_where_it_would_be_minted_writes_nothing():
    async def scenario(c: SimCluster):
        replicas = c.replicas(KEY)
        outsider = next(n for n in c.ids if n not in replicas)
        assert (await c.put(replicas[0], KEY, b"newer", "ALL", fence=("L", 9))).HasField("put")
        await c.settle()
        reply = await c.put(outsider, KEY, b"stale", "QUORUM", fence=("L", 8), trace=True)
        info = fenced(reply)
        assert info.token == 8 and info.highest == 9 and not info.accepted_by
        assert "nothing was written" in reply.error.message
        await c.settle()
        for node in replicas:
            assert stored_values(c, node, KEY) == {b"newer"}
        # a guarded delete under the current token is accepted and hides the key
        read = await c.get(outsider, KEY, "QUORUM")
        reply = await c.delete(outsider, KEY, "QUORUM", context=read.get.context,
                               fence=("L", 9))
        assert reply.HasField("put"), reply
        assert values(await c.get(outsider, KEY, "ALL")) == []

    run(scenario, size=5, seed=5, antientropy_interval=0)


def test_a_replica_that_lost_its_disk_may_acknowledge_a_stale_write_which_repair_hides():
    async def scenario(c: SimCluster):
        first, second, third = c.replicas(KEY)
        assert (await c.put(second, KEY, b"newer", "ALL", fence=("L", 7))).HasField("put")
        await c.settle()
        await c.lose_disk(first)               # its records and its fence table are gone
        await c.wait_ready()
        # at ONE the minting replica alone decides: it knows nothing, so it acknowledges
        reply = await c.put(first, KEY, b"stale", "ONE", fence=("L", 5))
        assert reply.HasField("put"), reply
        await c.settle()
        # the other replicas refused the replicated write; repair brings it to them,
        # and the newer token hides it on every replica
        assert b"stale" not in stored_values(c, second, KEY)
        await repair_all(c)
        for node in (first, second, third):
            assert shown(c, node, KEY) == [b"newer"], node
        # and the replica re-learned the lock's token from the merged versions
        assert c.nodes[first].replica.fences.highest("L") == 7
        # at QUORUM the same write is refused: another replica answers before W is met
        await c.lose_disk(first)
        await c.wait_ready()
        info = fenced(await c.put(first, KEY, b"stale2", "QUORUM", fence=("L", 5)))
        assert set(info.refused_by) <= {second, third} and first in info.accepted_by

    run(scenario, size=3, seed=6, antientropy_interval=0)


def test_stale_and_new_holders_under_partitions_converge_to_the_newest_token():
    """Holders take turns on a lock while links flap; each writes what it read under its
    token, stale holders keep writing at ONE. After healing and repair, every replica
    shows only versions of the newest token that wrote each key."""
    async def scenario(c: SimCluster):
        import random

        rng = random.Random(c.seed)
        outcomes: Counter = Counter()
        keys = [f"job:{i}".encode() for i in range(3)]
        token = 1
        holders: dict[str, int] = {}  # client -> its token (maybe stale)
        for step in range(60):
            if rng.random() < 0.3:
                a = rng.choice(c.ids)
                c.network.partition({a}, set(c.ids) - {a})
            elif rng.random() < 0.3:
                c.network.heal()
            client = f"c{rng.randrange(4)}"
            if client not in holders or rng.random() < 0.2:
                token += 1
                holders[client] = token
            key, via = rng.choice(keys), rng.choice(c.ids)
            ctx = b""
            if rng.random() < 0.7:
                read = await c.get(via, key, "ONE")
                ctx = read.get.context if read.HasField("get") else b""
            level = rng.choice(["ONE", "QUORUM"])
            reply = await c.put(via, key, f"{client}-{holders[client]}-{step}".encode(), level,
                                context=ctx, fence=("L", holders[client]))
            outcomes[common_pb2.ErrorCode.Name(reply.error.code)
                     if reply.HasField("error") else "ok"] += 1
            await asyncio.sleep(rng.random() * 0.2)
        c.network.heal()
        await c.settle()
        await repair_all(c, rounds=3)
        for key in keys:
            held = [c.stored(n, key) for n in c.replicas(key)]
            assert all({s.dot for s in h} == {s.dot for s in held[0]} for h in held), key
            high = versions.fences_of(held[0]).get("L", 0)
            for s in versions.live(held[0]):
                assert s.fence is None or s.fence[1] == high, (key, s.value, high)
            totals["hidden"] += len(versions.fenced_out(held[0]))
        totals.update(outcomes)

    totals: Counter = Counter()
    for seed in range(8):
        run(scenario, size=4, seed=seed, antientropy_interval=0)
    print(f"\nfenced writes: {dict(totals)}")
    # the histories did exercise the rule: refusals, and stale versions hidden at the end
    assert totals["FENCED"] and totals["hidden"] and totals["ok"]


def test_fence_input_errors():
    async def scenario(c: SimCluster):
        bad = [
            dict(fence=("L", 3), sloppy=True),
            dict(fence=("", 3)),
            dict(fence=("x" * 300, 3)),
        ]
        for kwargs in bad:
            reply = await c.put("n1", KEY, b"v", "QUORUM", **kwargs)
            assert reply.error.code == common_pb2.INVALID_ARGUMENT, (kwargs, reply)
        reply = await c.put("n1", KEY, b"v", "ANY", fence=("L", 3))
        assert reply.error.code == common_pb2.INVALID_ARGUMENT
        assert "always strict" in reply.error.message
        reply = await c.put("n1", KEY, b"v", "QUORUM", fence=("L", 0))
        assert reply.error.code == common_pb2.INVALID_ARGUMENT and "token 0" in reply.error.message

    run(scenario, size=3, seed=7, antientropy_interval=0)
