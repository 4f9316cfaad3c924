"""The consistent-hash ring: mmh3 tokens, virtual nodes, preference lists.

Pure: the ring is a value built from (node id -> tokens); a key's token is mmh3's 64-bit
hash, and its preference list is the first N distinct physical nodes clockwise from it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import mmh3

DEFAULT_VNODES = 512
TOKEN_MIN = -(2**63)
TOKEN_MAX = 2**63 - 1
TOKEN_SPACE = 2**64


def token_of(key: bytes) -> int:
    """A key's position on the ring: a signed 64-bit murmur3 hash (fits SQLite's INTEGER)."""
    return mmh3.hash64(key, signed=True)[0]


def node_tokens(node_id: str, vnodes: int = DEFAULT_VNODES) -> list[int]:
    """The tokens a node owns, derived from its id so every node computes the same ring."""
    return sorted(token_of(f"{node_id}#{i}".encode()) for i in range(vnodes))


@dataclass(frozen=True)
class Ring:
    """An immutable ring. Build a new one when membership changes."""

    tokens: tuple[int, ...] = ()
    owners: tuple[str, ...] = ()
    nodes: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, node_tokens_by_id: Mapping[str, Iterable[int]]) -> Ring:
        pairs = sorted((t, n) for n, ts in node_tokens_by_id.items() for t in ts)
        return cls(
            tokens=tuple(t for t, _ in pairs),
            owners=tuple(n for _, n in pairs),
            nodes=frozenset(node_tokens_by_id),
        )

    @classmethod
    def of_nodes(cls, node_ids: Iterable[str], vnodes: int = DEFAULT_VNODES) -> Ring:
        return cls.build({n: node_tokens(n, vnodes) for n in node_ids})

    def walk(self, token: int) -> Iterable[str]:
        """Distinct physical nodes clockwise from `token` (the first owns the token)."""
        if not self.tokens:
            return
        start = bisect.bisect_left(self.tokens, token)
        seen: set[str] = set()
        count = len(self.tokens)
        for i in range(count):
            owner = self.owners[(start + i) % count]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.nodes):
                    return

    def preference_list(self, key: bytes, n: int) -> list[str]:
        """The first `n` distinct nodes clockwise from the key's token."""
        return self.preference_list_for_token(token_of(key), n)

    def preference_list_for_token(self, token: int, n: int) -> list[str]:
        out: list[str] = []
        for node in self.walk(token):
            out.append(node)
            if len(out) == n:
                break
        return out

    def ownership(self) -> dict[str, float]:
        """The share of the token space each node owns as a primary (first) replica."""
        shares = dict.fromkeys(self.nodes, 0.0)
        count = len(self.tokens)
        for i, token in enumerate(self.tokens):
            # The range (previous token, token] belongs to the owner of `token`.
            prev = self.tokens[i - 1] if i else self.tokens[-1] - TOKEN_SPACE
            shares[self.owners[i]] += (token - prev) / TOKEN_SPACE
        if count == 1:
            shares[self.owners[0]] = 1.0
        return shares

    def replica_shares(self, n: int) -> dict[str, float]:
        """The share of the token space each node holds a replica of, with `n` replicas per
        key (the shares sum to min(n, nodes)): what a node stores, not only what it leads."""
        shares = dict.fromkeys(self.nodes, 0.0)
        if len(self.tokens) == 1:
            return {self.owners[0]: 1.0}
        for i, token in enumerate(self.tokens):
            prev = self.tokens[i - 1] if i else self.tokens[-1] - TOKEN_SPACE
            for node in self.preference_list_for_token(token, n):
                shares[node] += (token - prev) / TOKEN_SPACE
        return shares

    def ranges(self) -> list[tuple[int, int, str]]:
        """Every (start exclusive, end inclusive, owner) range; the first wraps around."""
        out = []
        for i, token in enumerate(self.tokens):
            prev = self.tokens[i - 1]
            out.append((prev, token, self.owners[i]))
        return out


@dataclass(frozen=True)
class Move:
    """A token range (start, end] whose replicas change: `before` -> `after`."""

    start: int
    end: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def gained(self) -> tuple[str, ...]:
        return tuple(n for n in self.after if n not in self.before)

    @property
    def lost(self) -> tuple[str, ...]:
        return tuple(n for n in self.before if n not in self.after)

    @property
    def receivers(self) -> tuple[str, ...]:
        """Who must receive the range's data: the nodes that gain it, or, when the ring
        shrinks below N replicas and nobody gains it, the owners that keep it (the copy
        that goes away must not be lost)."""
        return self.gained or self.after


def moves(before: Ring, after: Ring, n: int) -> list[Move]:
    """The ranges whose preference lists differ between two rings, coalesced.

    The ranges are cut at the tokens of both rings, so each piece has one preference list
    in each; adjacent pieces with the same change are merged (fewer, larger streams).
    """
    tokens = sorted(set(before.tokens) | set(after.tokens))
    if not tokens or not before.tokens or not after.tokens:
        return []
    out: list[Move] = []
    for i, token in enumerate(tokens):
        prev = tokens[i - 1]  # the first piece wraps around: (last token, first token]
        old = tuple(before.preference_list_for_token(token, n))
        new = tuple(after.preference_list_for_token(token, n))
        if old == new:
            continue
        if out and out[-1].end == prev and (out[-1].before, out[-1].after) == (old, new):
            out[-1] = Move(out[-1].start, token, old, new)
        else:
            out.append(Move(prev, token, old, new))
    return out
