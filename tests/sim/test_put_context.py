"""A put's reply context covers what the writer had seen plus its own write, never the
concurrent siblings the minting replica kept beside it (they come back in `stored`).

Before: the reply context was the join of every sibling at the minting replica, so a
client (or `kv bench`) that wrote again with it silently superseded writes it never read.
"""

from __future__ import annotations

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore.core import versions

KEY = b"user:1"


def keys_on(c: SimCluster, replicas: list[str]) -> list[bytes]:
    """Keys with this preference list."""
    return [k for k in (f"key{i}".encode() for i in range(2000)) if c.replicas(k) == replicas]


async def two_blind_writers_then_a_third_write(c: SimCluster, key: bytes, first_via: str,
                                               second_via: str, reuse: int, third_via: str):
    """Two blind writes (neither saw the other: concurrent, whenever they ran), the second
    one minted after the first reached its replica, then a write with one's put context."""
    one = await c.put(first_via, key, b"one", "QUORUM")
    await c.settle()
    two = await c.put(second_via, key, b"two", "QUORUM")
    assert one.HasField("put") and two.HasField("put"), (one, two)
    assert two.put.concurrent == 1 and len(two.put.stored) == 2  # it was told about "one"
    await c.settle()
    assert values(await c.get(third_via, key, "ALL")) == [b"one", b"two"]
    context = (one, two)[reuse].put.context
    third = await c.put(third_via, key, b"three", "ALL", context=context)
    assert third.HasField("put"), third
    await c.settle()
    return one, two, third


def test_siblings_survive_a_write_with_either_writers_put_context_same_replica():
    """Both blind writes are minted at one replica: the second one's dot is above the
    first one's, so its reply context carries it as a single dot."""

    async def scenario(c: SimCluster):
        a = c.replicas(KEY)[0]
        keys = keys_on(c, c.replicas(KEY))
        for key, (reuse, survivor) in zip(keys, ((1, b"one"), (0, b"two")), strict=False):
            one, _, third = await two_blind_writers_then_a_third_write(c, key, a, a, reuse, a)
            assert one.put.concurrent == 0 and third.put.concurrent == 1
            # the third write superseded only the writer it came from: the other survives
            # everywhere, and no false sibling of the superseded one comes back
            for node in c.replicas(key):
                assert sorted(s.value for s in c.stored(node, key)) == sorted(
                    [survivor, b"three"]), node
            assert values(await c.get(a, key, "ALL")) == sorted([survivor, b"three"])

    run(scenario, seed=41, antientropy_interval=0)


def test_siblings_survive_a_write_with_either_writers_put_context_two_replicas():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        keys = keys_on(c, c.replicas(KEY))
        for key, (reuse, survivor) in zip(keys, ((1, b"one"), (0, b"two")), strict=False):
            await two_blind_writers_then_a_third_write(c, key, a, b, reuse, cc)
            for node in c.replicas(key):
                assert sorted(s.value for s in c.stored(node, key)) == sorted(
                    [survivor, b"three"]), node

    run(scenario, seed=42, antientropy_interval=0)


def test_a_writer_chaining_its_put_contexts_supersedes_only_its_own_writes():
    """A writer that keeps writing with its last put's context replaces its own previous
    value each time; a concurrent blind value stays one sibling, never duplicated."""

    async def scenario(c: SimCluster):
        a = c.replicas(KEY)[0]
        first = await c.put(a, KEY, b"w0", "ALL")
        other = await c.put(a, KEY, b"other", "ALL")  # blind, concurrent with the chain
        assert other.put.concurrent == 1
        context = first.put.context
        for i in range(1, 6):
            reply = await c.put(a, KEY, f"w{i}".encode(), "ALL", context=context)
            assert reply.put.concurrent == 1  # "other", every time
            context = reply.put.context
            await c.settle()
            assert values(await c.get(a, KEY, "ALL")) == [b"other", f"w{i}".encode()]
        # a reader's context covers both: its write resolves them
        got = await c.get(a, KEY, "ALL")
        done = await c.put(a, KEY, b"resolved", "ALL", context=got.get.context)
        assert done.put.concurrent == 0
        await c.settle()
        assert values(await c.get(a, KEY, "ALL")) == [b"resolved"]
        assert versions.parse_context(done.put.context).dots == frozenset()

    run(scenario, seed=43, antientropy_interval=0)
