"""A dot names one event for ever: writes after a replica forgot a key are never lost.

Each scenario is Riak's KV679 ("doomstone") in one of its forms: a replica that has no
record of a key (it purged the tombstone, lost its disk, lost the record, came back from
a backup) writes the key again. Minting `(node, 1)` again made the other replicas take the
new write for one they had already seen superseded: they acknowledged it, and repair
then spread the old version over it everywhere. With per-key actor epochs the new write
is a fresh event, so it survives beside (or over) whatever the others hold.
"""

from __future__ import annotations

import asyncio

from simkit.cluster import SimCluster, values
from simkit.cluster import run_scenario as run

from kvstore.core import versions
from kvstore.storage import DISCARD

GRACE_MS = 150_000  # virtual time; must exceed twice the 60 s clock-skew allowance
KEY = b"doomstone"


async def repair_all(c: SimCluster) -> None:
    for _ in range(2):
        for node_id in c.ids:
            _, _, errors = await c.nodes[node_id].antientropy.repair()
            assert not errors, errors


async def read_all(c: SimCluster, via: str = "n2") -> list[bytes]:
    reply = await c.get(via, KEY, "ALL")
    assert reply.HasField("get"), reply
    return values(reply)


def assert_everywhere(c: SimCluster, value: bytes) -> None:
    for node_id in c.ids:
        held = [s.value for s in versions.live(c.stored(node_id, KEY))]
        assert value in held, f"{node_id} lost {value!r}: holds {held}"


def test_a_write_after_a_purged_tombstone_survives_repair():
    async def scenario(c: SimCluster):
        put = await c.put("n1", KEY, b"v1", "ALL")
        assert (await c.delete("n1", KEY, "ALL", context=put.put.context)).HasField("put")
        await c.settle()
        await asyncio.sleep(GRACE_MS / 1000 + 1)
        # n1 alone collects the tombstone: its sessions confirm it with n2 and n3
        await c.nodes["n1"].antientropy.repair()
        assert c.stored("n1", KEY) == [] and c.stored("n2", KEY)
        # a blind write through the node that has no record of the key any more
        again = await c.put("n1", KEY, b"v2", "ALL", trace=True)
        assert again.HasField("put"), again
        await c.settle()
        await repair_all(c)
        assert await read_all(c) == [b"v2"]
        assert_everywhere(c, b"v2")

    run(scenario, seed=1, antientropy_interval=0, tombstone_grace_ms=GRACE_MS,
        hint_max_age_ms=5_000)


def test_a_write_after_a_lost_disk_survives_repair():
    async def scenario(c: SimCluster):
        first = await c.put("n1", KEY, b"v1", "ALL")
        await c.put("n1", KEY, b"v2", "ALL", context=first.put.context)
        await c.settle()
        await c.lose_disk("n1")
        assert c.stored("n1", KEY) == []
        assert (await c.put("n1", KEY, b"v3", "ALL")).HasField("put")  # blind
        await c.settle()
        await repair_all(c)
        assert await read_all(c) == [b"v2", b"v3"]  # concurrent: both kept
        assert_everywhere(c, b"v3")

    run(scenario, seed=2, antientropy_interval=0)


def test_a_write_after_a_lost_record_survives_repair():
    async def scenario(c: SimCluster):
        first = await c.put("n1", KEY, b"v1", "ALL")
        await c.put("n1", KEY, b"v2", "ALL", context=first.put.context)
        await c.settle()
        c.engines["n1"].apply([(KEY, DISCARD)])  # one record gone (say, dropped as corrupt)
        assert (await c.put("n1", KEY, b"v3", "ALL")).HasField("put")
        await c.settle()
        await repair_all(c)
        assert await read_all(c) == [b"v2", b"v3"]
        assert_everywhere(c, b"v3")

    run(scenario, seed=3, antientropy_interval=0)


def test_a_write_after_restoring_a_backup_survives_repair():
    async def scenario(c: SimCluster):
        first = await c.put("n1", KEY, b"v1", "ALL")
        await c.settle()
        backup = c.engines["n1"].snapshot()
        second = await c.put("n1", KEY, b"v2", "ALL", context=first.put.context)
        await c.put("n1", KEY, b"v3", "ALL", context=second.put.context)
        await c.settle()
        await c.restore("n1", backup)  # `kv node start --restored`
        assert [s.value for s in c.stored("n1", KEY)] == [b"v1"]
        assert (await c.put("n1", KEY, b"v4", "ALL")).HasField("put")  # blind
        await c.settle()
        await repair_all(c)
        assert await read_all(c) == [b"v3", b"v4"]
        assert_everywhere(c, b"v4")

    run(scenario, seed=4, antientropy_interval=0)


def test_a_regressed_record_is_detected_from_a_client_context():
    """Restored without --restored: the context a client read shows the record is behind."""
    async def scenario(c: SimCluster):
        first = await c.put("n1", KEY, b"v1", "ALL")
        await c.settle()
        backup = c.engines["n1"].snapshot()
        await c.put("n1", KEY, b"v2", "ALL", context=first.put.context)
        await c.settle()
        c.crash("n1")
        c.engines["n1"] = backup.snapshot()
        await c.restart("n1")  # the operator forgot --restored
        seen = await c.get("n2", KEY, "QUORUM")
        assert values(seen) == [b"v2"]
        # a read-modify-write through n1 with that context
        assert (await c.put("n1", KEY, b"v3", "ALL", context=seen.get.context)).HasField("put")
        await c.settle()
        assert c.nodes["n1"].replica.metrics["amnesia_detected"] == 1
        await repair_all(c)
        assert await read_all(c) == [b"v3"]

    run(scenario, seed=5, antientropy_interval=0)


def test_dots_name_actor_epochs_and_stay_on_one_epoch_while_the_record_lives():
    async def scenario(c: SimCluster):
        a = await c.put("n1", KEY, b"v1", "ALL")
        b = await c.put("n1", KEY, b"v2", "ALL", context=a.put.context)
        dot_a, dot_b = a.put.stored[-1].dot, b.put.stored[-1].dot
        assert dot_a.node.startswith("n1@") and dot_a.node == dot_b.node
        assert (dot_a.counter, dot_b.counter) == (1, 2)
        other = await c.put("n1", b"another key", b"x", "ALL")
        assert other.put.stored[-1].dot.node != dot_a.node  # each key its own epoch

    run(scenario, seed=6, antientropy_interval=0)
