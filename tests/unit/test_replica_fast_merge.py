"""The replica's fast merge (incoming versions that replace every stored one, written from
the received VersionSet's bytes) does exactly what the general merge does: the same merged
siblings, the same stored bytes, the same fresh-dot bookkeeping (epochs observed, amnesia
detected), the same fences learnt. Random stored records and incoming sets, hand-made
siblings included (arbitrary pasts and single dots, so supersession may run both ways, as
pruned clocks allow), each merged once with the received state and once without."""

from __future__ import annotations

import asyncio
import random

from kvstore.core import versions
from kvstore.core.versions import Record, Sibling
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, MemoryEngine
from kvstore.storage.epochs import EpochAllocator

ACTORS = ("n1@1", "n1@2", "n1@5", "n2@1", "n3@1", "n3@2")


def _replica() -> Replica:
    return Replica("n1", AsyncStore(MemoryEngine(), inline=True), lambda: 50_000,
                   EpochAllocator(None, lambda: 50_000), marker_ttl_ms=1_000)


def _sibling(rng: random.Random) -> Sibling:
    node, counter = rng.choice(ACTORS), rng.randint(1, 6)
    past = {a: rng.randint(0, 6) for a in rng.sample(ACTORS, rng.randint(0, 3))}
    seen = frozenset((rng.choice(ACTORS), rng.randint(1, 7))
                     for _ in range(rng.choice((0, 0, 1, 2))))
    fences = {"L": rng.randint(1, 9)} if rng.random() < 0.2 else {}
    fence = ("M", rng.randint(1, 9)) if rng.random() < 0.1 else None
    return Sibling(node, counter, past, rng.randbytes(rng.randint(0, 12)), rng.random() < 0.1,
                   rng.randint(0, 99), seen, fence, fences)


def _chain(rng: random.Random, stored: list[Sibling]) -> list[Sibling]:
    """A write whose context covers the stored versions (a replicated put, mostly)."""
    ctx = versions.context_of(stored) if rng.random() < 0.8 else {}
    return versions.update(stored, ctx, rng.choice(ACTORS[3:]), rng.randbytes(8), now_ms=7,
                           floor=rng.randint(0, 8))


def _case(rng: random.Random) -> tuple[Record, list[Sibling]]:
    stored = [_sibling(rng) for _ in range(rng.choice((0, 1, 1, 2, 3)))]
    if rng.random() < 0.5:
        stored = versions.sync([], stored)
    rec = Record(stored, rng.choice((0, 0, 1, 2, 5)), rng.randint(0, 7))
    if rng.random() < 0.1:
        rec.purged, rec.purged_at_ms = {"n2@1": rng.randint(1, 5)}, rng.choice((0, 49_500, 10))
    roll = rng.random()
    if roll < 0.5:
        incoming = versions.sync([], _chain(rng, stored))
    elif roll < 0.8:
        incoming = versions.sync([], [_sibling(rng) for _ in range(rng.randint(1, 3))])
    else:  # not necessarily sorted, deduplicated or an antichain
        incoming = [_sibling(rng) for _ in range(rng.randint(0, 3))]
    return rec, incoming


def _run(r: Replica, key: bytes, incoming: list[Sibling], state) -> object:
    try:
        return asyncio.run(r.merge(key, incoming, state=state))
    except Exception as exc:  # the same error either way
        return type(exc).__name__


def test_the_fast_merge_matches_the_general_one():
    rng = random.Random(13)
    fast_hits = 0
    for i in range(3000):
        rec, incoming = _case(rng)
        key = f"k{i}".encode()
        record = versions.encode_record(rec) if rec.siblings or rec.purged or rec.epoch else None
        fast, general = _replica(), _replica()
        for r in (fast, general):
            if record is not None:
                r.store.engine.apply([(key, lambda _old, b=record: b)])
        state = versions.to_pb(incoming)
        got = _run(fast, key, incoming, state)
        want = _run(general, key, incoming, None)
        assert got == want, (rec, incoming)
        assert fast.store.engine.get(key) == general.store.engine.get(key), (rec, incoming)
        assert fast.fences.snapshot() == general.fences.snapshot()
        assert (fast.epochs._next, fast.epochs.observed_ahead) == \
            (general.epochs._next, general.epochs.observed_ahead)
        hits = fast.metrics.pop("merges_fast", 0)
        fast_hits += hits
        assert fast.metrics == general.metrics
    assert fast_hits > 600  # the fast path ran in a good share of the cases


def test_a_state_with_bookkeeping_or_a_marker_takes_the_general_path():
    r = _replica()
    incoming = versions.update([], {}, "n2@1", b"v")
    state = versions.to_pb(incoming)
    state.actor_epoch = 9  # never sent to peers; if it were, it must not land in the record
    asyncio.run(r.merge(b"k", incoming, state=state))
    assert r.metrics["merges_fast"] == 0
    assert versions.decode_record(r.store.engine.get(b"k")).epoch == 0
    asyncio.run(r.merge(b"k2", incoming, state=versions.to_pb(incoming)))
    assert r.metrics["merges_fast"] == 1
