"""Replica.merge_many (an inbound peer batch's replica writes in one storage call) does
what one `merge` per write does, item by item, errors included, in one group commit."""

from __future__ import annotations

import asyncio

from kvstore.core import versions
from kvstore.core.errors import Corruption, Fenced
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, MemoryEngine
from kvstore.storage.epochs import EpochAllocator


def replica() -> Replica:
    return Replica("n1", AsyncStore(MemoryEngine(), inline=True), lambda: 10_000,
                   EpochAllocator(None, lambda: 10_000))


def seeded() -> Replica:
    """The same starting state in every replica these tests compare."""
    r = replica()

    async def setup() -> None:
        await r.merge(b"guarded", versions.update([], {}, "n3@1", b"holder", fence=("L", 7)))
        await r.merge(b"old", versions.update([], {}, "n2@1", b"v1"))
        await r.merge(b"damaged", versions.update([], {}, "n2@1", b"was here"))

    asyncio.run(setup())
    r.store.engine.corrupt_for_test(b"damaged")
    return r


def batch() -> list:
    old = versions.update([], {}, "n2@1", b"v1")
    return [
        (b"new", versions.update([], {}, "n2@1", b"fresh"), None, 0, None),
        (b"old", versions.update(old, versions.Context({"n2@1": 1}), "n2@1", b"v2"),
         None, 0, None),
        (b"guarded", versions.update([], {}, "n2@1", b"stale", fence=("L", 5)),
         None, 0, ("L", 5)),                                 # below L:7: refused
        (b"damaged", versions.update([], {}, "n3@1", b"good copy"), None, 0, None),
        (b"new", versions.update([], {}, "n3@1", b"concurrent"), None, 0, None),
    ]


def one_by_one(r: Replica, items: list) -> list:
    async def go() -> list:
        out = []
        for key, incoming, marker, at, fence in items:
            try:
                out.append(await r.merge(key, incoming, marker=marker, marker_at_ms=at,
                                         fence=fence))
            except (Fenced, Corruption) as exc:
                out.append(exc)
        return out

    return asyncio.run(go())


def test_a_batch_merges_like_one_merge_per_write_in_one_storage_call():
    single, batched = seeded(), seeded()
    expected = one_by_one(single, batch())
    before = batched.store.batches
    got = asyncio.run(batched.merge_many(batch()))
    assert batched.store.batches == before + 1              # one group commit for all five
    assert len(got) == len(expected) == 5
    for want, have in zip(expected, got, strict=True):
        if isinstance(want, Exception):
            assert type(have) is type(want)
        else:
            assert [s.dot for s in have] == [s.dot for s in want]
            assert [s.value for s in have] == [s.value for s in want]
    assert isinstance(got[2], Fenced) and got[2].highest == 7
    assert [s.value for s in got[3]] == [b"good copy"]     # the damaged record is replaced
    assert sorted(s.value for s in got[4]) == [b"concurrent", b"fresh"]  # same key twice
    for key in (b"new", b"old", b"guarded", b"damaged"):    # and the stores agree
        assert single.store.engine.get(key) == batched.store.engine.get(key)


def test_a_failed_item_fails_alone():
    r = seeded()
    got = asyncio.run(r.merge_many(batch()[2:4]))
    assert isinstance(got[0], Fenced)
    assert [s.value for s in got[1]] == [b"good copy"]
    assert asyncio.run(r.merge_many([])) == []
