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


# --- fencing -----------------------------------------------------------------------------

LOCKS = ["L", "M"]


def fenced_history(seed: int, writes: int, clients: int, drop: float):
    """As `history_with_put_contexts`, with lock holders: clients hold tokens of two locks
    (re-acquired now and then, so some hold stale ones) and write guarded, or not at all.

    Returns (every replica's final state, what each write had seen, each write's fence,
    the refused writes). `seen` is ground truth from the history, never from versions.
    """
    rng = random.Random(seed)
    state: dict[str, list[Sibling]] = {r: [] for r in REPLICAS}
    seen: dict[bytes, set[bytes]] = {}
    fence: dict[bytes, tuple[str, int] | None] = {}
    grant = {lock: 1 for lock in LOCKS}                 # the lock service's latest token
    held: dict[tuple[int, str], int] = {}               # (client, lock) -> its token
    last_put: dict[int, tuple[versions.Context, set[bytes]]] = {}
    in_flight: list[tuple[str, list[Sibling]]] = []
    refused: list[bytes] = []
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
        lock = rng.choice(LOCKS)
        if rng.random() < 0.3 or (client, lock) not in held:  # acquire: a new, higher token
            grant[lock] += rng.randrange(1, 4)
            held[client, lock] = grant[lock]
        own = (lock, held[client, lock]) if rng.random() < 0.75 else None
        choice = rng.random()
        context, saw = versions.Context(), set()
        if choice < 0.35 and client in last_put:
            context, saw = last_put[client]
        elif choice < 0.85:
            siblings = state[rng.choice(REPLICAS)]
            context = versions.read_context(siblings)
            for s in siblings:
                saw |= {s.value} | seen[s.value]
        coordinator = rng.choice(REPLICAS)
        value = f"w{i}-c{client}".encode()
        tomb = rng.random() < 0.1
        try:
            updated = versions.update(state[coordinator], context, coordinator, value,
                                      tombstone=tomb, now_ms=i, fence=own)
        except versions.StaleFence:
            refused.append(value)
            continue
        state[coordinator] = updated
        seen[value], fence[value] = set(saw), own
        new = updated[-1]
        after = versions.context_after_write(context, updated, new)
        last_put[client] = (versions.parse_context(versions.encode_context(after)),
                            saw | {value})
        for other in REPLICAS:
            if other != coordinator:
                in_flight.append((other, list(updated)))
    return state, seen, fence, refused


def knows(value: bytes, lock: str, seen, fence) -> int:
    """Ground truth: the highest token of `lock` a write or anything it had seen carried."""
    tokens = [fence[v][1] for v in (value, *seen[value]) if fence[v] and fence[v][0] == lock]
    return max(tokens, default=0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.integers(1, 6), st.floats(0, 1))
def test_fences_hide_exactly_the_stale_guarded_writes(seed, writes, clients, drop):
    state, seen, fence, _ = fenced_history(seed, writes, clients, drop)
    merged: list[Sibling] = []
    for siblings in state.values():
        merged = versions.sync(merged, siblings)
    stored = {s.value for s in merged}
    # fences never change what is stored: exactly the writes no later write had seen
    superseded = set().union(*seen.values()) if seen else set()
    assert stored == set(seen) - superseded
    # shown: those not fenced out by a stored write that knew a higher token of their lock
    tombs = {s.value for s in merged if s.tombstone}
    expected = {v for v in stored - tombs
                if not (fence[v] and any(knows(u, fence[v][0], seen, fence) > fence[v][1]
                                         for u in stored))}
    assert {s.value for s in versions.live(merged)} == expected
    # no accepted guarded write had seen a higher token of its lock
    for v, f in fence.items():
        if f is not None:
            assert knows(v, f[0], seen, fence) == f[1], (v, f)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 30))
def test_sync_laws_hold_with_fenced_versions_and_every_order_shows_the_same(seed, writes):
    state, _, _, _ = fenced_history(seed, writes, 4, 0.3)
    rng = random.Random(seed)
    everything = versions.sync(versions.sync(state["r1"], state["r2"]), state["r3"])
    a, b, c = ([s for s in everything if rng.random() < 0.6] for _ in range(3))

    def dots(x):
        return sorted(s.dot for s in x)

    assert dots(versions.sync(a, b)) == dots(versions.sync(b, a))
    left = versions.sync(versions.sync(a, b), c)
    right = versions.sync(a, versions.sync(b, c))
    assert dots(left) == dots(right)
    assert dots(versions.sync(a, a)) == dots(versions.sync(a, []))
    assert dots(versions.live(left)) == dots(versions.live(right))
    # the replicas' own states, merged in every order, show the same values
    orders = [versions.sync(versions.sync(x, y), z) for x, y, z in
              ((state["r1"], state["r2"], state["r3"]), (state["r3"], state["r1"], state["r2"]),
               (state["r2"], state["r3"], state["r1"]))]
    assert len({tuple(dots(versions.live(o))) for o in orders}) == 1


def test_a_stale_guarded_write_that_arrived_first_is_hidden_once_the_newer_one_merges():
    stale = versions.update([], {}, "r1", b"stale", fence=("L", 5))      # reached r1 first
    newer = versions.update([], {}, "r2", b"newer", fence=("L", 7))      # the new holder
    merged = versions.sync(stale, newer)
    assert {s.value for s in merged} == {b"stale", b"newer"}              # both stored ...
    assert [s.value for s in versions.live(merged)] == [b"newer"]         # ... one shown
    ctx = versions.read_context(merged)                                   # covers both
    assert ctx.fences == {"L": 7}
    # the stale holder, having read, is refused; the new holder's next write supersedes
    try:
        versions.update(merged, ctx, "r1", b"again", fence=("L", 5))
    except versions.StaleFence as exc:
        assert (exc.lock, exc.token, exc.highest) == ("L", 5, 7)
    else:
        raise AssertionError("a stale guarded write over a newer token was minted")
    after = versions.update(merged, ctx, "r1", b"next", fence=("L", 7))
    assert [s.value for s in after] == [b"next"]
    # a blind stale write at a replica holding the newer token: refused as well
    try:
        versions.update(newer, {}, "r2", b"blind", fence=("L", 6))
    except versions.StaleFence:
        pass
    else:
        raise AssertionError("a replica holding token 7 minted token 6")


def test_fence_knowledge_is_inherited_by_unfenced_writes_and_tombstones():
    newer = versions.update([], {}, "r1", b"newer", fence=("L", 7))
    # an unfenced writer reads the new holder's version and overwrites it
    plain = versions.update(newer, versions.read_context(newer), "r1", b"plain")
    assert plain[-1].fence is None and plain[-1].fences == {"L": 7}
    stale = versions.update([], {}, "r2", b"stale", fence=("L", 5))    # concurrent
    merged = versions.sync(plain, stale)
    assert [s.value for s in versions.live(merged)] == [b"plain"]
    # a delete under the higher token hides a concurrent stale put: the key reads empty
    tomb = versions.update([], {}, "r3", b"", tombstone=True, fence=("L", 7))
    assert versions.live(versions.sync(tomb, stale)) == []
    # unfenced and other locks' versions are never hidden by lock L
    other = versions.update([], {}, "r3", b"other", fence=("M", 1))
    blind = versions.update([], {}, "r4", b"blind")
    shown = versions.live(versions.sync(versions.sync(newer, other), blind))
    assert sorted(s.value for s in shown) == [b"blind", b"newer", b"other"]
    # an equal token is not stale
    same = versions.update([], {}, "r2", b"same", fence=("L", 7))
    assert len(versions.live(versions.sync(newer, same))) == 2


def test_fences_round_trip_through_versions_and_contexts():
    v = versions.update([], versions.Context({}, frozenset(), {"M": 3}), "r1", b"x",
                        fence=("jobs/nightly", 42))[-1]
    assert v.fence == ("jobs/nightly", 42) and v.fences == {"M": 3}
    assert versions.sibling_from_pb(versions.sibling_to_pb(v)) == v
    ctx = versions.context_after_write(versions.Context(), [v], v)
    assert ctx.fences == {"M": 3, "jobs/nightly": 42}
    assert versions.parse_context(versions.encode_context(ctx)) == ctx
    plain = versions.update([], {}, "r1", b"y")[-1]
    assert versions.sibling_to_pb(plain).HasField("fence") is False
    assert versions.parse_fence("a:b:7") == ("a:b", 7)
    for bad in ("x", "x:", ":5", "x:0", "x:-1", "x:1e3", f"x:{2**63}", "l" * 257 + ":1"):
        try:
            versions.parse_fence(bad)
        except versions.InvalidFence:
            continue
        raise AssertionError(f"{bad!r} accepted")


def drop_sync(ours: list[Sibling], theirs: list[Sibling]) -> list[Sibling]:
    """The rule first sketched: drop versions below their lock's highest token inside the
    merge, then apply DVV coverage to the rest. Kept to show why it was not chosen."""
    candidates = {s.dot: s for s in (*ours, *theirs)}.values()
    high = versions.fences_of(candidates)
    rest = [s for s in candidates if s.fence is None or s.fence[1] >= high[s.fence[0]]]
    return versions.sync(rest, [])


def test_dropping_fenced_out_versions_inside_sync_would_not_be_associative():
    """A stale holder's write `o` superseded `s`; the new holder's `w` never saw `s`.
    Dropping `o` at merge time makes `s` come back or not depending on the merge order;
    hiding `o` (our rule) keeps `s` superseded in every order."""
    s = versions.update([], {}, "r1", b"s")
    o = versions.update(s, versions.read_context(s), "r1", b"o", fence=("L", 5))
    w = versions.update([], {}, "r2", b"w", fence=("L", 7))
    one = drop_sync(drop_sync(s, o), w)       # s superseded first, o fenced next: {w}
    two = drop_sync(s, drop_sync(o, w))       # o fenced first: s comes back: {s, w}
    assert {x.value for x in one} != {x.value for x in two}
    ours = [versions.sync(versions.sync(s, o), w), versions.sync(s, versions.sync(o, w))]
    assert all([x.value for x in versions.live(m)] == [b"w"] for m in ours)
