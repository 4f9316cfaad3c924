"""Merkle properties: exact leaf diffs, incremental == rebuild, sessions find exactly the
keys that differ (and repairing them makes the trees equal)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.antientropy import Initiator, Responder, run_local
from kvstore.core.merkle import MerkleTree, in_range
from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of

tokens = st.integers(TOKEN_MIN, TOKEN_MAX)
keys = st.binary(min_size=0, max_size=12)
digests = st.binary(min_size=16, max_size=16)
replica = st.dictionaries(keys, digests, max_size=60)


@st.composite
def ranges(draw):
    """A whole ring, or a random (possibly wrapping) range."""
    if draw(st.booleans()):
        start = draw(tokens)
        return start, start
    return draw(tokens), draw(tokens)


@st.composite
def pair(draw):
    """Two replicas: a common base, then random divergences on either side."""
    base = draw(replica)
    a, b = dict(base), dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=10)) if base else []:
        op = draw(st.sampled_from(["drop_a", "drop_b", "change_a", "change_b"]))
        side = a if op.endswith("a") else b
        if op.startswith("drop"):
            side.pop(key, None)
        else:
            side[key] = draw(digests)
    a.update(draw(st.dictionaries(keys, digests, max_size=5)))  # one-sided keys
    b.update(draw(st.dictionaries(keys, digests, max_size=5)))
    return a, b


def _restrict(data: dict[bytes, bytes], start: int, end: int) -> dict[bytes, bytes]:
    return {k: d for k, d in data.items() if in_range(token_of(k), start, end)}


def _tree(data: dict[bytes, bytes], start: int, end: int, depth: int) -> MerkleTree:
    return MerkleTree.build(start, end, ((token_of(k), k, d) for k, d in data.items()), depth)


def _scan(data: dict[bytes, bytes]):
    def scan(token_ranges):
        return [(token_of(k), k, d) for k, d in data.items()
                if any(in_range(token_of(k), lo, hi) for lo, hi in token_ranges)]
    return scan


def _contents_by_leaf(tree: MerkleTree, data: dict[bytes, bytes]) -> dict[int, set]:
    out: dict[int, set] = {}
    for k, d in data.items():
        out.setdefault(tree.leaf_of(token_of(k)), set()).add((k, d))
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(pair(), ranges(), st.integers(0, 8))
def test_diff_is_exactly_the_leaves_whose_contents_differ(ab, rng, depth):
    start, end = rng
    a, b = (_restrict(x, start, end) for x in ab)
    ta, tb = _tree(a, start, end, depth), _tree(b, start, end, depth)
    ca, cb = _contents_by_leaf(ta, a), _contents_by_leaf(tb, b)
    expected = sorted(i for i in set(ca) | set(cb) if ca.get(i, set()) != cb.get(i, set()))
    assert sorted(ta.diff(tb)) == expected
    assert sorted(tb.diff(ta)) == expected
    assert (ta.root == tb.root) == (not expected)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 15), st.one_of(st.none(), digests)), max_size=80),
       ranges(), st.integers(0, 10))
def test_incremental_updates_equal_a_full_rebuild(ops, rng, depth):
    start, end = rng
    pool = [k for k in (f"k{i}".encode() for i in range(400))
            if in_range(token_of(k), start, end)][:16]
    if not pool:
        return
    tree = MerkleTree(start, end, depth)
    state: dict[bytes, bytes] = {}
    for i, new in ops:
        key = pool[i % len(pool)]
        tree.update(token_of(key), key, state.get(key), new)
        if new is None:
            state.pop(key, None)
        else:
            state[key] = new
    rebuilt = _tree(state, start, end, depth)
    assert tree.leaf_hashes() == rebuilt.leaf_hashes()
    assert [tree.node_hash(lv, i) for lv in range(tree.depth + 1) for i in range(1 << lv)] == \
        [rebuilt.node_hash(lv, i) for lv in range(tree.depth + 1) for i in range(1 << lv)]
    assert tree.keys == len(state)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(pair(), ranges(), st.integers(0, 8), st.integers(1, 7), st.integers(1, 9),
       st.integers(1, 4), st.integers(0, 9))
def test_session_between_replicas_finds_exactly_the_differing_keys(
    ab, rng, depth, max_nodes, max_keys, leaf_batch, start_level
):
    start, end = rng
    a, b = (_restrict(x, start, end) for x in ab)
    ta, tb = _tree(a, start, end, depth), _tree(b, start, end, depth)
    ini = Initiator(ta, max_nodes=max_nodes, max_keys=max_keys, leaf_batch=leaf_batch,
                    start_level=start_level)
    resp = Responder(tb)
    result = run_local(ini, resp, _scan(a), _scan(b))
    push = {k for k in a if b.get(k) != a[k]}
    fetch = {k for k in b if a.get(k) != b[k]}
    assert sorted(result.push) == sorted(push)
    assert sorted(result.fetch) == sorted(fetch)
    assert result.differing_leaves == sorted(ta.diff(tb))
    s = result.stats
    assert (s.keys_sent, s.keys_received) == (len(push), len(fetch))
    assert (resp.stats.keys_sent, resp.stats.keys_received) == (len(fetch), len(push))
    assert s.bytes_transferred == resp.stats.bytes_transferred
    assert s.messages == resp.stats.messages and s.messages % 2 == 0
    # matched keys are exactly the keys of differing leaves that agree on both sides
    assert {k for k, _ in result.matched} == {
        k for k in a if b.get(k) == a[k] and ta.leaf_of(token_of(k)) in result.differing_leaves
    }
    # repair what the session asked for: both sides converge (digest stands for merge)
    for k in push:
        b[k] = a[k] if k not in b else min(a[k], b[k])
    for k in fetch:
        a[k] = b[k]
    assert a == b
    assert _tree(a, start, end, depth).root == _tree(b, start, end, depth).root


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 11), st.booleans(), st.booleans()),
                max_size=60))
def test_three_diverged_replicas_converge_after_pairwise_sessions(ops):
    """Writes at ONE (some blind, i.e. concurrent; some deletes), then anti-entropy only."""
    from kvstore.core import versions as v
    from kvstore.core.merkle import version_digest

    names = ["a", "b", "c"]
    reps: list[dict[bytes, list[v.Sibling]]] = [{}, {}, {}]
    for now, (r, k, blind, delete) in enumerate(ops):
        key = f"key{k}".encode()
        local = reps[r].get(key, [])
        ctx = {} if blind else v.context_of(local)
        reps[r][key] = v.update(local, ctx, names[r], b"" if delete else f"v{now}".encode(),
                                tombstone=delete, now_ms=now)

    def digests(rep):
        return {key: version_digest(s) for key, s in rep.items()}

    before = [digests(rep) for rep in reps]
    moved: set[bytes] = set()
    for x, y in ((0, 1), (1, 2), (0, 2)):
        dx, dy = digests(reps[x]), digests(reps[y])
        res = run_local(Initiator(_tree(dx, 0, 0, 6)), Responder(_tree(dy, 0, 0, 6)),
                        _scan(dx), _scan(dy))
        pushed = {key: reps[x][key] for key in res.push}
        fetched = {key: reps[y][key] for key in res.fetch}
        for key, sibs in pushed.items():
            reps[y][key] = v.sync(reps[y].get(key, []), sibs)
        for key, sibs in fetched.items():
            reps[x][key] = v.sync(reps[x].get(key, []), sibs)
        moved |= set(res.push) | set(res.fetch)
    same = [{k: sorted(s, key=lambda x: x.dot) for k, s in rep.items()} for rep in reps]
    assert same[0] == same[1] == same[2]
    differed = {key for key in set().union(*before)
                if len({d.get(key) for d in before}) > 1}
    assert moved == differed  # only keys that differed were ever exchanged
