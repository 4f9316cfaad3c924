"""Actor epochs are never handed out twice, and replicas mint only fresh dots."""

from __future__ import annotations

import asyncio
import json

import pytest

from kvstore.core import versions
from kvstore.core.merkle import version_digest
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, MemoryEngine, StorageError
from kvstore.storage.epochs import EPOCHS_PER_MS, EpochAllocator


def test_epochs_increase_and_survive_a_restart(tmp_path):
    path = tmp_path / "epochs.json"
    first = EpochAllocator(path, lambda: 1000, lease=4)
    handed = [first.next() for _ in range(6)]
    assert handed == sorted(set(handed)) and handed[0] > 1000 * EPOCHS_PER_MS
    assert json.loads(path.read_text())["reserved"] >= handed[-1]  # reserved before use
    # a restart (the clock did not move) continues above every reservation
    second = EpochAllocator(path, lambda: 1000, lease=4)
    assert second.next() > handed[-1]


def test_a_lost_file_is_covered_by_the_clock_floor(tmp_path):
    first = EpochAllocator(tmp_path / "a.json", lambda: 5000)
    used = [first.next() for _ in range(100)]
    # the data directory is gone; one millisecond later a new life starts above it all
    second = EpochAllocator(tmp_path / "b.json", lambda: 5001)
    assert second.next() > max(used)


def test_an_epoch_seen_elsewhere_is_never_handed_out(tmp_path):
    alloc = EpochAllocator(None, lambda: 1)
    ahead = alloc.next() + 1000
    assert alloc.observe(ahead) and not alloc.observe(ahead)
    assert alloc.next() == ahead + 1


def test_invalidate_older_makes_earlier_epochs_unusable(tmp_path):
    path = tmp_path / "epochs.json"
    alloc = EpochAllocator(path, lambda: 1)
    old = alloc.next()
    alloc.invalidate_older()
    assert not alloc.usable(old) and alloc.usable(alloc.next())
    again = EpochAllocator(path, lambda: 1)  # remembered across a restart
    assert not again.usable(old)


def test_an_unreadable_epoch_file_refuses_to_start(tmp_path):
    path = tmp_path / "epochs.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match="unreadable"):
        EpochAllocator(path, lambda: 1)


def _replica() -> Replica:
    store = AsyncStore(MemoryEngine(), inline=True)
    return Replica("n1", store, lambda: 10_000, EpochAllocator(None, lambda: 10_000),
                   marker_ttl_ms=1_000)


def test_a_replica_keeps_one_epoch_per_key_until_the_record_is_gone():
    async def main():
        r = _replica()
        a = (await r.mint(b"k", {}, b"1"))[-1]
        b = (await r.mint(b"k", a.clock(), b"2"))[-1]
        assert a.node == b.node and (a.counter, b.counter) == (1, 2)
        assert versions.actor_epoch(a.node, "n1") > 0
        # the tombstone is purged: the next write takes a fresh epoch, with counter 1
        t = (await r.mint(b"k", b.clock(), b"", tombstone=True))[-1]
        assert await r.purge(b"k", version_digest([t]))
        assert await r.read(b"k") == []
        c = (await r.mint(b"k", {}, b"3"))[-1]
        assert c.node != a.node and c.counter == 1
        # the marker refuses what the purge covered, accepts the new write
        assert await r.merge(b"k", [a, t]) == [c]
        assert r.metrics["refused_purged_versions"] == 2

    asyncio.run(main())


def test_a_replica_detects_that_its_record_went_back():
    async def main():
        r = _replica()
        a = (await r.mint(b"k", {}, b"1"))[-1]
        # a client saw counter 5 of this very actor: the record has regressed
        c = (await r.mint(b"k", {a.node: 5}, b"2"))[-1]
        assert r.metrics["amnesia_detected"] == 1
        assert c.node != a.node and c.counter == 1

    asyncio.run(main())


def test_mint_unowned_uses_a_fresh_actor_each_time():
    r = _replica()
    one = r.mint_unowned({"n2@1": 3}, b"x")
    two = r.mint_unowned({}, b"y")
    assert one[0].node != two[0].node and one[0].counter == two[0].counter == 1
    assert one[0].past == {"n2@1": 3}


def test_actor_names_round_trip():
    name = versions.actor("n1.a", 123456789)
    assert versions.actor_epoch(name, "n1.a") == 123456789
    assert versions.actor_epoch(name, "n1") == 0
    assert versions.actor_epoch("n1", "n1") == 0


def test_a_purge_marker_covers_the_single_dots_a_tombstone_superseded():
    """A delete written with a put's context holds that put's dot as a single dot
    (`Version.seen`) when an unseen sibling sat below it; the marker left by purging the
    delete must refuse an old copy of that put too, though no clock covers it."""

    async def main():
        r = _replica()
        other = Replica("n2", AsyncStore(MemoryEngine(), inline=True), lambda: 10_000,
                        EpochAllocator(None, lambda: 10_000))
        a = (await other.mint(b"k", {}, b"a"))[-1]                  # n2@..:1
        both = await other.mint(b"k", {}, b"b")                     # n2@..:2, blind
        b = both[-1]
        mine = versions.context_after_write(versions.Context(), both, b)
        assert mine.dots == {b.dot}                                 # a is below, unseen
        await r.merge(b"k", both)
        t1 = (await r.mint(b"k", mine, b"", tombstone=True))[-1]    # deletes b only
        assert t1.seen == {b.dot} and not versions.covers(t1.past, *b.dot)
        t2 = (await r.mint(b"k", a.clock(), b"", tombstone=True))[-1]  # deletes a only
        assert sorted(s.dot for s in await r.read(b"k")) == sorted([t1.dot, t2.dot])
        assert await r.purge(b"k", version_digest([t1, t2]))
        # old copies of either deleted version come back: both are refused
        assert await r.merge(b"k", [a]) == []
        assert await r.merge(b"k", [b]) == []

    asyncio.run(main())
