"""Merkle trees over a token range, kept current incrementally (pure).

A tree covers one ring range ``(start, end]`` (start exclusive, end inclusive, wrapping
when ``start >= end``; ``start == end`` is the whole ring), the same convention as
`Ring.ranges()` and `Engine.scan`. The range is cut into ``2**depth`` leaves of
contiguous, equal-width token sub-ranges (``DEFAULT_DEPTH = 10``: 1,024 leaves).

Hashes (all 64-bit unsigned integers):

* A key's *version digest* (`version_digest`) is a 16-byte BLAKE2b over its sorted set of
  ``(dot, tombstone)``. Values and pasts are not hashed: a dot names exactly one write,
  minted once at one replica with a fresh counter (see `versions`), so two replicas
  holding the same dots hold the same values and pasts. Hashing values would cost CPU
  proportional to the data on every write for no extra detection (the one case it would
  catch — a node that lost its disk and re-minted a counter — is a broken invariant that
  anti-entropy cannot fix either).
* A key's *entry hash* is 8 bytes of BLAKE2b over ``(key, digest)``.
* A leaf's hash is the **sum mod 2**64** of the entry hashes of its keys (an additive
  multiset hash), and an interior node's hash is the sum of its two children — so every
  node equals the sum of the entry hashes below it, an empty subtree hashes to 0, and
  changing one key adds the same delta to each node on its leaf-to-root path.

Costs (measured in tests/unit/test_merkle.py and docs/antientropy.md): the tree is one
``array('Q')`` of ``2**(depth+1)`` words, 16 KiB at depth 10, whatever the number of keys;
`update` is two BLAKE2b calls plus ``depth + 1`` integer additions (a few microseconds);
`build` is one BLAKE2b per key plus one pass over the array. Collisions: two different
leaf contents hash equal with probability about 2**-64 per comparison.

The depth is clipped so that no leaf is empty of tokens (a range narrower than
``2**depth`` tokens gets fewer leaves); both replicas compute the same clip.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Mapping

from kvstore.core import versions
from kvstore.core.ring import TOKEN_MIN, TOKEN_SPACE
from kvstore.core.versions import Sibling

DEFAULT_DEPTH = 10
MAX_DEPTH = 20
DIGEST_SIZE = 16
_MASK = (1 << 64) - 1


def version_digest(siblings: Iterable[Sibling], purged: Mapping[str, int] | None = None
                   ) -> bytes:
    """A stable 16-byte digest of a key's state: its sorted (dot, tombstone) pairs, and the
    clock of a purge marker when there is one (replicas compare markers too, so a purge
    spreads to the replicas that still hold what it collected)."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"kv-vdigest")
    for node, counter, tomb in sorted((s.node, s.counter, s.tombstone) for s in siblings):
        raw = node.encode()
        h.update(len(raw).to_bytes(2, "big"))
        h.update(raw)
        h.update(counter.to_bytes(8, "big"))
        h.update(b"\x01" if tomb else b"\x00")
    if purged:
        h.update(b"\xffpurged")
        for node, counter in sorted(purged.items()):
            raw = node.encode()
            h.update(len(raw).to_bytes(2, "big"))
            h.update(raw)
            h.update(counter.to_bytes(8, "big"))
    return h.digest()


def record_digest(record: bytes | None) -> bytes | None:
    """The version digest of a stored record (an encoded VersionSet); None when it holds
    no siblings and no marker, so that `MerkleTree.update(token, key, record_digest(old),
    record_digest(new))` mirrors a storage write."""
    rec = versions.decode_record(record)
    if not rec.siblings and not rec.purged:
        return None
    return version_digest(rec.siblings, rec.purged)


_ENTRY_HASHER = hashlib.blake2b(digest_size=8, person=b"kv-entry")


def entry_hash(key: bytes, digest: bytes) -> int:
    """The 64-bit hash of one (key, version digest) pair; leaves sum these."""
    h = _ENTRY_HASHER.copy()
    h.update(len(key).to_bytes(4, "big") + key + digest)
    return int.from_bytes(h.digest(), "big")


def _unsigned(token: int) -> int:
    return token - TOKEN_MIN


def _signed(u: int) -> int:
    return (u % TOKEN_SPACE) + TOKEN_MIN


def range_span(start: int, end: int) -> int:
    """Number of tokens in (start, end], wrapping; start == end is the whole ring."""
    span = (end - start) % TOKEN_SPACE
    return span or TOKEN_SPACE


def in_range(token: int, start: int, end: int) -> bool:
    """Whether token lies in (start, end] with the ring's wrap-around convention."""
    return (token - start - 1) % TOKEN_SPACE < range_span(start, end)


class MerkleTree:
    """A Merkle tree of fixed depth over one token range, updated in O(depth) per write.

    Nodes are addressed by ``(level, index)``: level 0 is the root, level `depth` holds the
    ``2**depth`` leaves, and node (l, i) has children (l+1, 2i) and (l+1, 2i+1).
    """

    __slots__ = ("_nodes", "depth", "end", "keys", "span", "start")

    def __init__(self, start: int, end: int, depth: int = DEFAULT_DEPTH) -> None:
        if not TOKEN_MIN <= start < TOKEN_MIN + TOKEN_SPACE:
            raise ValueError(f"range start {start} is not a 64-bit signed token")
        if not TOKEN_MIN <= end < TOKEN_MIN + TOKEN_SPACE:
            raise ValueError(f"range end {end} is not a 64-bit signed token")
        if not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be in 0..{MAX_DEPTH}, not {depth}")
        self.start = start
        self.end = end
        self.span = range_span(start, end)
        self.depth = min(depth, self.span.bit_length() - 1)
        self.keys = 0  # number of keys currently hashed in (for reporting)
        self._nodes = array("Q", bytes(8 * (2 << self.depth)))

    @classmethod
    def build(
        cls,
        start: int,
        end: int,
        entries: Iterable[tuple[int, bytes, bytes]],
        depth: int = DEFAULT_DEPTH,
    ) -> MerkleTree:
        """A tree from (token, key, digest) entries, e.g. a storage scan of the range.

        Order does not matter (leaves are sums); each key must appear once.
        """
        tree = cls(start, end, depth)
        nodes = tree._nodes
        first_leaf = 1 << tree.depth
        count = 0
        for token, key, digest in entries:
            leaf = first_leaf + tree.leaf_of(token)
            nodes[leaf] = (nodes[leaf] + entry_hash(key, digest)) & _MASK
            count += 1
        for n in range(first_leaf - 1, 0, -1):
            nodes[n] = (nodes[2 * n] + nodes[2 * n + 1]) & _MASK
        tree.keys = count
        return tree

    @classmethod
    def from_records(
        cls,
        start: int,
        end: int,
        records: Iterable[tuple[int, bytes, bytes]],
        depth: int = DEFAULT_DEPTH,
    ) -> MerkleTree:
        """A tree from a storage scan: (token, key, record) as `Engine.scan` yields them."""
        entries = ((t, k, record_digest(r)) for t, k, r in records)
        return cls.build(start, end, ((t, k, d) for t, k, d in entries if d is not None), depth)

    def same_shape(self, other: MerkleTree) -> bool:
        return (self.start, self.end, self.depth) == (other.start, other.end, other.depth)

    @property
    def leaves(self) -> int:
        return 1 << self.depth

    @property
    def root(self) -> int:
        return self._nodes[1]

    def copy(self) -> MerkleTree:
        """An independent snapshot (16 KiB at depth 10)."""
        other = MerkleTree(self.start, self.end, self.depth)
        other._nodes = array("Q", self._nodes)
        other.keys = self.keys
        return other

    def leaf_of(self, token: int) -> int:
        """The index of the leaf covering `token`; ValueError when outside the range."""
        offset = (token - self.start - 1) % TOKEN_SPACE
        if offset >= self.span:
            raise ValueError(
                f"token {token} is outside the tree's range ({self.start}, {self.end}]"
            )
        return (offset << self.depth) // self.span

    def leaf_range(self, leaf: int) -> tuple[int, int]:
        """(start exclusive, end inclusive) tokens of a leaf, ready for `Engine.scan`."""
        return self.leaves_range(leaf, leaf)

    def leaves_range(self, first: int, last: int) -> tuple[int, int]:
        """(start exclusive, end inclusive) tokens covering leaves first..last (contiguous)."""
        if not 0 <= first <= last < self.leaves:
            raise ValueError(f"leaves {first}..{last} are not within 0..{self.leaves - 1}")
        # Leaf i holds the offsets o with i*span <= o*2**depth < (i+1)*span.
        lo = -((-first * self.span) >> self.depth)  # ceil(first*span / 2**depth)
        hi = -((-(last + 1) * self.span) >> self.depth)
        u_start = _unsigned(self.start)
        return _signed(u_start + lo), _signed(u_start + hi)

    def node_hash(self, level: int, index: int) -> int:
        if not 0 <= level <= self.depth or not 0 <= index < (1 << level):
            raise ValueError(f"no node ({level}, {index}) in a tree of depth {self.depth}")
        return self._nodes[(1 << level) + index]

    def leaf_hashes(self) -> list[int]:
        first = 1 << self.depth
        return list(self._nodes[first : 2 * first])

    def update(
        self, token: int, key: bytes, old_digest: bytes | None, new_digest: bytes | None
    ) -> None:
        """Account for one key changing from `old_digest` to `new_digest` (None: absent).

        The caller passes the digest the tree currently holds for the key (from the record
        it is replacing); passing a wrong old digest corrupts the tree until the next build.
        """
        if old_digest == new_digest:
            return
        delta = 0
        if old_digest is not None:
            delta -= entry_hash(key, old_digest)
            self.keys -= 1
        if new_digest is not None:
            delta += entry_hash(key, new_digest)
            self.keys += 1
        n = (1 << self.depth) + self.leaf_of(token)
        nodes = self._nodes
        while n:
            nodes[n] = (nodes[n] + delta) & _MASK
            n >>= 1

    def diff(self, other: MerkleTree) -> list[int]:
        """Indices of the leaves whose hashes differ, visiting only differing subtrees."""
        if not self.same_shape(other):
            raise ValueError(
                f"trees differ in shape: ({self.start}, {self.end}] depth {self.depth} vs "
                f"({other.start}, {other.end}] depth {other.depth}"
            )
        a, b = self._nodes, other._nodes
        first_leaf = 1 << self.depth
        out: list[int] = []
        stack = [1]
        while stack:
            n = stack.pop()
            if a[n] == b[n]:
                continue
            if n >= first_leaf:
                out.append(n - first_leaf)
            else:
                stack.append(2 * n + 1)
                stack.append(2 * n)
        return out


def merge_leaves(leaves: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Group sorted-or-not leaf indices into runs of consecutive leaves (first, last)."""
    run: tuple[int, int] | None = None
    for leaf in sorted(set(leaves)):
        if run is not None and leaf == run[1] + 1:
            run = (run[0], leaf)
            continue
        if run is not None:
            yield run
        run = (leaf, leaf)
    if run is not None:
        yield run
