"""Dotted version vectors: merge laws, and siblings == truly concurrent writes."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import versions
from kvstore.core.versions import Order, Sibling

REPLICAS = ["r1", "r2", "r3"]


def random_history(seed: int, writes: int, clients: int, drop: float):
    """Many clients write one key through different coordinators, with lossy replication.

    Returns (final merged siblings, ground-truth set of writes no later write has seen).
    Ground truth: a write has seen exactly what the read its client made before it
    returned (and, transitively, what those versions had seen).
    """
    rng = random.Random(seed)
    state: dict[str, list[Sibling]] = {r: [] for r in REPLICAS}
    seen: dict[bytes, set[bytes]] = {}
    in_flight: list[tuple[str, list[Sibling]]] = []
    for i in range(writes):
        # deliver some replication messages (maybe late, maybe never)
        rng.shuffle(in_flight)
        keep = []
        for target, payload in in_flight:
            if rng.random() < 0.5:
                state[target] = versions.sync(state[target], payload)
            elif rng.random() > drop:
                keep.append((target, payload))
        in_flight = keep
        # a client reads from one replica (or writes blind), then writes via a coordinator
        context: dict[str, int] = {}
        saw: set[bytes] = set()
        if rng.random() < 0.8:
            read_from = rng.choice(REPLICAS)
            siblings = state[read_from]
            context = versions.context_of(siblings)
            for s in siblings:
                saw |= {s.value} | seen[s.value]
        coordinator = rng.choice(REPLICAS)
        value = f"w{i}-c{rng.randrange(clients)}".encode()
        seen[value] = saw
        state[coordinator] = versions.update(state[coordinator], context, coordinator, value,
                                             now_ms=i)
        for other in REPLICAS:
            if other != coordinator:
                in_flight.append((other, list(state[coordinator])))
    merged: list[Sibling] = []
    for siblings in state.values():
        merged = versions.sync(merged, siblings)
    everything = set(seen)
    superseded = set().union(*seen.values()) if seen else set()
    return merged, everything - superseded


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.integers(1, 8), st.floats(0, 1))
def test_siblings_are_exactly_the_truly_concurrent_writes(seed, writes, clients, drop):
    merged, concurrent = random_history(seed, writes, clients, drop)
    values = {s.value for s in merged}
    assert values == concurrent, (
        f"lost: {sorted(concurrent - values)}, extra siblings: {sorted(values - concurrent)}")
    assert len(merged) <= len(concurrent)


def history_with_put_contexts(seed: int, writes: int, clients: int, drop: float):
    """As `random_history`, but a client may also write with the context its previous put
    returned (as `kv bench` and any client chaining writes do), or write blind.

    Ground truth: a write has seen what its client had seen when it was made: the
    versions its last read returned, or its own previous write and what that had seen,
    never the siblings that write found beside itself.
    """
    rng = random.Random(seed)
    state: dict[str, list[Sibling]] = {r: [] for r in REPLICAS}
    seen: dict[bytes, set[bytes]] = {}
    last_put: dict[int, tuple[versions.Context, set[bytes]]] = {}
    in_flight: list[tuple[str, list[Sibling]]] = []
    for i in range(writes):
        rng.shuffle(in_flight)
        keep = []
        for target, payload in in_flight:
            if rng.random() < 0.5:
                state[target] = versions.sync(state[target], payload)
            elif rng.random() > drop:
                keep.append((target, payload))
        in_flight = keep
        client = rng.randrange(clients)
        choice = rng.random()
        context, saw = versions.Context(), set()
        if choice < 0.4 and client in last_put:
            context, saw = last_put[client]
        elif choice < 0.85:
            siblings = state[rng.choice(REPLICAS)]
            context = versions.read_context(siblings)
            for s in siblings:
                saw |= {s.value} | seen[s.value]
        coordinator = rng.choice(REPLICAS)
        value = f"w{i}-c{client}".encode()
        seen[value] = set(saw)
        state[coordinator] = versions.update(state[coordinator], context, coordinator, value,
                                             now_ms=i)
        new = state[coordinator][-1]
        assert new.value == value
        after = versions.context_after_write(context, state[coordinator], new)
        # round trip through the wire form, as a client would hold it
        after = versions.parse_context(versions.encode_context(after))
        last_put[client] = (after, saw | {value})
        for other in REPLICAS:
            if other != coordinator:
                in_flight.append((other, list(state[coordinator])))
    merged: list[Sibling] = []
    for siblings in state.values():
        merged = versions.sync(merged, siblings)
    superseded = set().union(*seen.values()) if seen else set()
    return merged, set(seen) - superseded


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.integers(1, 6), st.floats(0, 1))
def test_put_contexts_supersede_exactly_what_the_writer_had_seen(seed, writes, clients, drop):
    merged, concurrent = history_with_put_contexts(seed, writes, clients, drop)
    values = {s.value for s in merged}
    assert values == concurrent, (
        f"lost: {sorted(concurrent - values)}, extra siblings: {sorted(values - concurrent)}")


def test_a_put_context_holds_its_own_dot_apart_when_an_unseen_sibling_is_below_it():
    first = versions.update([], {}, "r1", b"a")                  # (r1, 1)
    both = versions.update(first, {}, "r1", b"b")                # (r1, 2), blind: a sibling
    mine = versions.context_after_write(versions.Context(), both, both[-1])
    assert mine == versions.Context({}, frozenset({("r1", 2)}))  # not {r1: 2}: that covers a
    again = versions.update(both, mine, "r1", b"c")              # supersedes b only
    assert [s.value for s in again] == [b"a", b"c"]
    assert again[-1].seen == frozenset({("r1", 2)})
    # another replica that still holds b drops it on merge, and keeps a
    assert [s.value for s in versions.sync(both, again)] == [b"a", b"c"]
    # without an unseen sibling below, the own dot joins the version vector
    alone = versions.context_after_write(versions.Context(), first, first[-1])
    assert alone == versions.Context({"r1": 1}, frozenset())


def realistic_states(seed: int) -> list[list[Sibling]]:
    merged, _ = random_history(seed, 12, 4, 0.3)
    rng = random.Random(seed)
    return [[s for s in merged if rng.random() < 0.6] for _ in range(3)]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32))
def test_sync_is_commutative_associative_idempotent(seed):
    a, b, c = realistic_states(seed)

    def dots(x):
        return sorted(s.dot for s in x)

    assert dots(versions.sync(a, b)) == dots(versions.sync(b, a))
    left = versions.sync(versions.sync(a, b), c)
    assert dots(left) == dots(versions.sync(a, versions.sync(b, c)))
    assert dots(versions.sync(a, a)) == dots(versions.sync(a, []))


@given(st.dictionaries(st.sampled_from(REPLICAS), st.integers(0, 9)),
       st.dictionaries(st.sampled_from(REPLICAS), st.integers(0, 9)))
def test_compare_is_consistent_with_join(a, b):
    j = versions.join(a, b)
    assert versions.descends(j, a) and versions.descends(j, b)
    order = versions.compare(a, b)
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}.get(order, order)
    assert versions.compare(b, a) == flipped


def test_write_with_context_supersedes_what_it_saw():
    s1 = versions.update([], {}, "r1", b"a")
    s2 = versions.update(s1, {}, "r1", b"b")           # blind: a sibling
    assert [s.value for s in s2] == [b"a", b"b"]
    ctx = versions.context_of(s2)
    s3 = versions.update(s2, ctx, "r2", b"c")          # minted elsewhere, saw both
    assert [s.value for s in versions.sync(s2, s3)] == [b"c"]


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 100), max_size=200))
def test_prune_bounds_the_clock_and_keeps_the_largest_counters(clock):
    pruned = versions.prune(clock, 16)
    assert len(pruned) <= 16
    assert all(clock[n] == c for n, c in pruned.items())
    if len(clock) > 16:
        dropped = set(clock) - set(pruned)
        assert max(clock[n] for n in dropped) <= min(pruned.values())


def test_context_codec_round_trip_and_rejects_garbage():
    clock = {"n1": 3, "n2": 7}
    assert versions.decode_context(versions.encode_context(clock)) == clock
    full = versions.Context(clock, frozenset({("n1", 5), ("n3", 2)}))
    assert versions.parse_context(versions.encode_context(full)) == full
    assert versions.decode_context(versions.encode_context(full)) == clock
    text = versions.context_to_text(versions.encode_context(clock))
    assert versions.decode_context(versions.context_from_text(text)) == clock
    for bad in (b"\xff\xff", b"\x0a\x02\x0a\x00"):
        try:
            versions.decode_context(bad)
        except versions.InvalidContext:
            continue
        raise AssertionError(f"{bad!r} accepted")
