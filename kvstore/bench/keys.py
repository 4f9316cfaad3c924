"""Key choosers: uniform and YCSB's (scrambled) zipfian, driven by an injected seeded Random.

The zipfian generator is the one YCSB uses (Gray et al., "Quickly generating billion-record
synthetic databases", SIGMOD 1994): constant time per draw after computing zeta(n, theta)
once. YCSB scrambles the ranks so the hot keys are spread over the key space instead of
being the first records; we do the same with a bijective multiplicative hash, so every
record is still reachable and rank r maps to exactly one key.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

ZIPFIAN_CONSTANT = 0.99  # YCSB's default skew
_SCRAMBLE_PRIME = 1_000_000_007  # prime: coprime with any record count below it


def key_name(index: int) -> str:
    """The key for record `index` (fixed width, so keys sort like their indices)."""
    return f"bench:{index:010d}"


class UniformKeys:
    """Every record equally likely."""

    def __init__(self, records: int, rng: random.Random) -> None:
        if records < 1:
            raise ValueError("records must be at least 1")
        self.records = records
        self.rng = rng

    def next_index(self) -> int:
        return self.rng.randrange(self.records)


@lru_cache(maxsize=16)
def zeta(n: int, theta: float) -> float:
    """sum_{i=1..n} 1/i^theta (cached: it is the only O(n) step)."""
    return math.fsum(1.0 / (i ** theta) for i in range(1, n + 1))


class ZipfianKeys:
    """Rank i (0 = hottest) drawn with probability proportional to 1/(i+1)^theta."""

    def __init__(self, records: int, rng: random.Random, *, theta: float = ZIPFIAN_CONSTANT,
                 scrambled: bool = True) -> None:
        if records < 1:
            raise ValueError("records must be at least 1")
        if not 0 < theta < 1:
            raise ValueError("theta must be in (0, 1)")
        self.records = records
        self.rng = rng
        self.theta = theta
        self.scrambled = scrambled and records > 1
        self.zetan = zeta(records, theta)
        self.alpha = 1.0 / (1.0 - theta)
        zeta2 = zeta(2, theta) if records >= 2 else 1.0
        self.half_pow_theta = 1.0 + 0.5 ** theta
        self.eta = ((1 - (2.0 / records) ** (1 - theta)) / (1 - zeta2 / self.zetan)
                    if records > 2 else 0.0)

    def next_rank(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < self.half_pow_theta:
            return min(1, self.records - 1)
        rank = int(self.records * (self.eta * u - self.eta + 1) ** self.alpha)
        return min(rank, self.records - 1)

    def rank_to_index(self, rank: int) -> int:
        """Bijective scramble of ranks over [0, records)."""
        if not self.scrambled:
            return rank
        return (rank * _SCRAMBLE_PRIME + 12345) % self.records

    def next_index(self) -> int:
        return self.rank_to_index(self.next_rank())


def make_keys(distribution: str, records: int, rng: random.Random) -> UniformKeys | ZipfianKeys:
    """The chooser for `distribution` ('uniform' or 'zipfian')."""
    if distribution == "uniform":
        return UniformKeys(records, rng)
    if distribution == "zipfian":
        return ZipfianKeys(records, rng)
    raise ValueError(f"unknown key distribution {distribution!r}; use uniform or zipfian")
