"""In-memory cluster tests of the quorum protocol, under partitions and crashes."""

from __future__ import annotations

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore._proto import common_pb2
from kvstore.core import versions

KEY = b"user:1"


def test_quorum_write_then_quorum_read_with_one_replica_partitioned():
    async def scenario(c: SimCluster):
        replicas = c.replicas(KEY)
        cut = replicas[2]
        c.network.isolate(cut, set(c.ids))
        coordinator = replicas[0]
        put = await c.put(coordinator, KEY, b"alice", "QUORUM")
        assert put.HasField("put"), put
        got = await c.get(replicas[1], KEY, "QUORUM")
        assert values(got) == [b"alice"]
        # the cut replica never saw it
        assert c.stored(cut, KEY) == []

    run(scenario)


def test_all_fails_with_unavailable_naming_the_missing_replica():
    async def scenario(c: SimCluster):
        replicas = c.replicas(KEY)
        c.crash(replicas[1])
        put = await c.put(replicas[0], KEY, b"v", "ALL")
        assert put.error.code == common_pb2.UNAVAILABLE
        assert "W=3 needs 3 replicas, 2 answered" in put.error.message
        assert replicas[1] in put.error.message
        assert "may become visible" in put.error.message
        got = await c.get(replicas[0], KEY, "ALL")
        assert got.error.code == common_pb2.UNAVAILABLE
        assert "R=3 needs 3 replicas, 2 answered" in got.error.message
        # QUORUM still works
        assert values(await c.get(replicas[2], KEY, "QUORUM")) == [b"v"]

    run(scenario)


def test_partitioned_replica_times_out_with_deadline_in_message():
    async def scenario(c: SimCluster):
        replicas = c.replicas(KEY)
        c.network.isolate(replicas[2], set(c.ids))
        put = await c.put(replicas[0], KEY, b"v", "ALL")
        assert put.error.code == common_pb2.UNAVAILABLE
        assert f"{replicas[2]} timed out after 500 ms" in put.error.message

    run(scenario)


def test_concurrent_writes_from_two_coordinators_become_siblings_and_merge():
    async def scenario(c: SimCluster):
        a, b, _ = c.replicas(KEY)
        first = await c.put(a, KEY, b"v0", "ALL")
        ctx = first.put.context
        # two clients both saw v0 and write concurrently through different coordinators
        ra = await c.put(a, KEY, b"from-a", "QUORUM", context=ctx)
        rb = await c.put(b, KEY, b"from-b", "QUORUM", context=ctx)
        assert ra.HasField("put") and rb.HasField("put")
        await c.settle()
        got = await c.get(a, KEY, "ALL")
        assert values(got) == [b"from-a", b"from-b"]
        # a put with the merged context collapses them
        merged = await c.put(b, KEY, b"resolved", "ALL", context=got.get.context)
        assert merged.HasField("put"), merged
        await c.settle()
        for node in c.replicas(KEY):
            assert [s.value for s in c.stored(node, KEY)] == [b"resolved"]

    run(scenario)


def test_blind_writes_are_kept_as_siblings_never_dropped():
    async def scenario(c: SimCluster):
        a, b, cc = c.replicas(KEY)
        for i, via in enumerate([a, b, cc, a]):
            assert (await c.put(via, KEY, f"w{i}".encode(), "ONE")).HasField("put")
        await c.settle()
        got = await c.get(a, KEY, "ALL")
        assert values(got) == [b"w0", b"w1", b"w2", b"w3"]

    run(scenario)


def test_delete_writes_a_tombstone_that_hides_the_value():
    async def scenario(c: SimCluster):
        a = c.replicas(KEY)[0]
        put = await c.put(a, KEY, b"v", "ALL")
        deleted = await c.delete(a, KEY, "ALL", context=put.put.context)
        assert deleted.HasField("put"), deleted
        got = await c.get(a, KEY, "ALL")
        assert not got.get.found and values(got) == []
        assert versions.decode_context(got.get.context)  # the tombstone is in the context
        await c.settle()
        for node in c.replicas(KEY):
            stored = c.stored(node, KEY)
            assert len(stored) == 1 and stored[0].tombstone

    run(scenario)


def test_write_through_non_replica_is_forwarded_and_traced():
    async def scenario(c: SimCluster):
        key = next(f"k{i}".encode() for i in range(100)
                   if "n4" not in c.replicas(f"k{i}".encode()))
        reply = await c.put("n4", key, b"v", "QUORUM", trace=True)
        assert reply.HasField("put"), reply
        assert reply.trace.forwarded_to in c.replicas(key)
        assert len([r for r in reply.trace.replicas if r.ok]) >= 2
        got = await c.get("n4", key, "QUORUM", trace=True)
        assert values(got) == [b"v"]
        assert {r.node for r in got.trace.replicas} <= set(c.replicas(key))
        assert all(r.latency_ms >= 0 for r in got.trace.replicas)

    run(scenario, size=4)


def test_bad_requests_get_specific_errors_and_write_nothing():
    async def scenario(c: SimCluster):
        a = c.ids[0]
        r = await c.put(a, b"", b"v")
        assert r.error.code == common_pb2.INVALID_ARGUMENT and "key is empty" in r.error.message
        r = await c.put(a, b"k" * 2000, b"v")
        assert "the limit is 1024 bytes" in r.error.message
        r = await c.put(a, KEY, b"x" * (2 * 1024 * 1024))
        assert "value is 2097152 bytes" in r.error.message
        r = await c.put(a, KEY, b"v", w=4)
        assert "W=4 exceeds the replication factor N=3" in r.error.message
        r = await c.put(a, KEY, b"v", context=b"\xff\xff\xff")
        assert r.error.code == common_pb2.INVALID_ARGUMENT
        for node in c.ids:
            assert c.stored(node, KEY) == []

    run(scenario)


def test_crashed_node_restarts_with_its_data():
    async def scenario(c: SimCluster):
        keys = [f"key{i}".encode() for i in range(200)]
        for k in keys:
            assert (await c.put(c.ids[0], k, k, "QUORUM")).HasField("put")
        await c.settle()
        c.crash("n2")
        for k in keys:
            assert values(await c.get("n1", k, "QUORUM")) == [k]
        await c.restart("n2")
        mine = [k for k in keys if "n2" in c.replicas(k)]
        assert mine
        for k in mine:
            assert [s.value for s in c.stored("n2", k)] == [k]
        for k in keys:
            assert values(await c.get("n2", k, "QUORUM")) == [k]

    run(scenario)
