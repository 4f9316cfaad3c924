"""A replica answers reads with its stored VersionSet as it is (issue 13): the reply must be
exactly what decoding the record and encoding its versions again gave."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.core import versions
from kvstore.core.errors import Corruption
from kvstore.core.merkle import version_digest
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, MemoryEngine
from kvstore.storage.epochs import EpochAllocator


class Clock:
    def __init__(self) -> None:
        self.ms = 10_000

    def __call__(self) -> int:
        return self.ms


def replica(clock: Clock) -> tuple[Replica, MemoryEngine]:
    engine = MemoryEngine()
    return Replica("n1", AsyncStore(engine, inline=True), clock, EpochAllocator(None, clock),
                   marker_ttl_ms=5_000), engine


async def decoded_then_encoded(r: Replica, key: bytes):
    """The reply as it was built before: decode the record, encode its versions."""
    rec = await r.read_record(key)
    state = versions.to_pb(rec.siblings)
    purged, purged_at = r.live_marker(rec)
    if purged:
        versions.marker_to_pb(state, purged, purged_at)
    return state


def test_the_reply_is_the_same_for_absent_keys_siblings_and_markers() -> None:
    clock = Clock()
    r, _ = replica(clock)

    async def main():
        assert await r.read_state(b"none") == await decoded_then_encoded(r, b"none")
        # concurrent siblings from two writers that saw nothing, then one that saw both
        await r.mint(b"k", {}, b"a" * 100)
        await r.mint(b"k", {}, b"b" * 100)
        other = versions.update([], {}, "n9.1", b"c", now_ms=5)
        await r.merge(b"k", other)
        state = await r.read_state(b"k")
        assert len(state.versions) == 3 and not state.actor_epoch and not state.actor_counter
        assert state == await decoded_then_encoded(r, b"k")
        # a tombstone over everything, collected: a purge marker is left
        seen = versions.read_context(await r.read(b"k"))
        await r.mint(b"k", seen, b"", tombstone=True)
        siblings = await r.read(b"k")
        assert await r.purge(b"k", version_digest(siblings, {}))
        live = await r.read_state(b"k")
        assert live.purged and live.purged_at_ms == clock.ms and not live.versions
        assert live == await decoded_then_encoded(r, b"k")
        clock.ms += 6_000  # past marker_ttl_ms: the marker is not sent any more
        expired = await r.read_state(b"k")
        assert not expired.purged and not expired.purged_at_ms
        assert expired == await decoded_then_encoded(r, b"k")

    asyncio.run(main())


def test_a_damaged_record_is_corruption_as_before() -> None:
    r, engine = replica(Clock())

    async def main():
        await r.mint(b"k", {}, b"v")
        engine.corrupt_for_test(b"k")
        with pytest.raises(Corruption) as new:
            await r.read_state(b"k")
        with pytest.raises(Corruption) as old:
            await r.read_record(b"k")
        assert str(new.value) == str(old.value)

    asyncio.run(main())
