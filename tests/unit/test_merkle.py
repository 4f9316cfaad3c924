"""Merkle tree: leaf geometry, digests, incremental updates, diff, and measured costs."""

from __future__ import annotations

import itertools
import random
import timeit

import pytest

from kvstore.core.merkle import (
    DEFAULT_DEPTH,
    MerkleTree,
    in_range,
    merge_leaves,
    range_span,
    version_digest,
)
from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, TOKEN_SPACE, Ring, token_of
from kvstore.core.versions import Sibling

RANGES = [
    (TOKEN_MIN, TOKEN_MIN),  # whole ring
    (0, 0),  # whole ring, starting mid-way
    (-100, 1000),
    (TOKEN_MAX - 5, TOKEN_MIN + 7),  # wraps
    (2**62, -(2**62)),  # wraps, half the ring
    (10, 13),  # 3 tokens: depth is clipped
    (TOKEN_MAX, TOKEN_MIN),  # exactly one token
]


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_leaves_partition_the_range_exactly(start, end):
    tree = MerkleTree(start, end, depth=6)
    assert tree.leaves <= range_span(start, end)
    bounds = [tree.leaf_range(i) for i in range(tree.leaves)]
    assert bounds[0][0] == start and bounds[-1][1] == end
    for (_, hi), (lo, _) in itertools.pairwise(bounds):
        assert hi == lo  # contiguous: each leaf starts where the previous ended
    total = sum(range_span(lo, hi) for lo, hi in bounds)
    assert total == range_span(start, end)
    for i, (lo, hi) in enumerate(bounds):
        # the first and last token of each leaf map back to that leaf, and nothing else
        first = (lo + 1 - TOKEN_MIN) % TOKEN_SPACE + TOKEN_MIN
        assert tree.leaf_of(first) == i and tree.leaf_of(hi) == i
        assert tree.leaves_range(i, i) == (lo, hi)
    assert tree.leaves_range(0, tree.leaves - 1) == (start, end)


def test_tokens_outside_the_range_are_rejected():
    tree = MerkleTree(-100, 1000)
    for token in (-100, 1001, TOKEN_MIN, TOKEN_MAX):
        assert not in_range(token, -100, 1000)
        with pytest.raises(ValueError, match="outside"):
            tree.leaf_of(token)
    assert tree.leaf_of(-99) == 0 and tree.leaf_of(1000) == tree.leaves - 1


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        MerkleTree(0, 1, depth=21)
    with pytest.raises(ValueError):
        MerkleTree(TOKEN_MAX + 1, 0)
    with pytest.raises(ValueError, match="shape"):
        MerkleTree(0, 100).diff(MerkleTree(0, 101))
    with pytest.raises(ValueError):
        MerkleTree(0, 0, depth=3).node_hash(4, 0)


def test_ring_ranges_tile_the_ring_and_every_key_lands_in_one_tree():
    ring = Ring.of_nodes(["a", "b", "c"], vnodes=4)
    trees = [MerkleTree(lo, hi) for lo, hi, _ in ring.ranges()]
    for i in range(300):
        token = token_of(f"k{i}".encode())
        assert sum(in_range(token, t.start, t.end) for t in trees) == 1


def test_version_digest_is_order_independent_and_ignores_values():
    a = Sibling("n1", 3, {"n2": 1}, b"x", written_at_ms=5)
    b = Sibling("n2", 2, {}, b"y")
    assert version_digest([a, b]) == version_digest([b, a])
    # value, past and time are determined by the dot, so they are not hashed
    assert version_digest([a]) == version_digest([Sibling("n1", 3, {}, b"other")])
    assert version_digest([a]) != version_digest([Sibling("n1", 4, {"n2": 1}, b"x")])
    assert version_digest([a]) != version_digest([Sibling("n1", 3, {"n2": 1}, tombstone=True)])
    assert version_digest([a]) != version_digest([a, b])
    assert len(version_digest([])) == 16


def _entries(n: int, seed: int) -> dict[bytes, bytes]:
    rnd = random.Random(seed)
    return {f"key-{i}".encode(): rnd.randbytes(16) for i in range(n)}


def test_incremental_updates_equal_a_rebuild_and_undo_to_zero():
    data = _entries(500, 1)
    built = MerkleTree.build(0, 0, ((token_of(k), k, d) for k, d in data.items()))
    inc = MerkleTree(0, 0)
    for k, d in data.items():
        inc.update(token_of(k), k, None, d)
    assert inc.leaf_hashes() == built.leaf_hashes() and inc.root == built.root
    assert inc.keys == built.keys == 500
    inc.update(token_of(b"key-1"), b"key-1", data[b"key-1"], data[b"key-1"])  # no change
    assert inc.root == built.root
    for k, d in data.items():
        inc.update(token_of(k), k, d, None)
    assert inc.root == 0 and set(inc.leaf_hashes()) == {0} and inc.keys == 0


def test_diff_finds_the_changed_leaf_and_copy_is_independent():
    data = _entries(200, 2)
    a = MerkleTree.build(0, 0, ((token_of(k), k, d) for k, d in data.items()))
    b = a.copy()
    assert a.diff(b) == []
    b.update(token_of(b"key-7"), b"key-7", data[b"key-7"], b"\x00" * 16)
    assert a.diff(b) == [a.leaf_of(token_of(b"key-7"))]
    assert a.root != b.root


def test_merge_leaves_groups_runs():
    assert list(merge_leaves([5, 1, 2, 3, 9, 8, 2])) == [(1, 3), (5, 5), (8, 9)]
    assert list(merge_leaves([])) == []


def test_measured_costs():
    """Memory per tree and CPU per update, printed for docs/antientropy.md (not asserted)."""
    tree = MerkleTree(0, 0, DEFAULT_DEPTH)
    memory = tree._nodes.itemsize * len(tree._nodes)
    assert memory == 8 * 2 * 1024
    data = _entries(10_000, 3)
    items = [(token_of(k), k, d) for k, d in data.items()]
    build_s = min(timeit.repeat(lambda: MerkleTree.build(0, 0, items), number=1, repeat=3))
    new = b"\x01" * 16
    token, key, old = items[0]

    def flip():
        tree.update(token, key, old, new)
        tree.update(token, key, new, old)

    per_update = min(timeit.repeat(flip, number=2000, repeat=3)) / 4000
    print(f"\nmerkle depth {DEFAULT_DEPTH}: {memory} bytes per tree; build of 10,000 keys "
          f"{build_s * 1000:.1f} ms; update {per_update * 1e6:.2f} us")


def test_tree_mirrors_a_storage_engine_through_record_digests():
    """Wiring check: incremental updates from record digests equal a rebuild from a scan."""
    from kvstore.core import versions as v
    from kvstore.core.merkle import record_digest
    from kvstore.storage.memory import MemoryEngine

    engine = MemoryEngine()
    lo, hi = -(2**62), 2**62
    tree = MerkleTree(lo, hi, depth=8)
    rnd = random.Random(4)
    for step in range(300):
        key = f"k{rnd.randrange(60)}".encode()
        old = engine.get(key)
        siblings = v.decode(old)
        new = v.encode(v.update(siblings, v.context_of(siblings), "n1", b"x",
                                tombstone=step % 7 == 0, now_ms=step))
        engine.apply([(key, lambda _cur, new=new: new)])
        if in_range(token_of(key), lo, hi):
            tree.update(token_of(key), key, record_digest(old), record_digest(new))
    rebuilt = MerkleTree.from_records(lo, hi, engine.scan(lo, hi), depth=8)
    assert rebuilt.root == tree.root and rebuilt.keys == tree.keys > 0
    assert record_digest(None) is None and record_digest(v.encode([])) is None
