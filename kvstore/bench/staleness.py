"""Staleness detector: did a read miss the latest write acknowledged before it began?

Every value the harness writes starts with a write id (8 bytes, big-endian) taken from
one counter at issue time, so a write that descends causally from another (it was issued
after the harness saw the other's context) always has a larger id. For each key the
detector remembers recent acknowledged writes as (write id, ack time). A read that began
at time t is judged against L, the largest write id acknowledged before t:

* fresh when some returned sibling has id >= L (L itself, or a write issued after it);
* stale otherwise (an older value, or nothing at all).

A read with R + W > N must always be fresh; a stale one there is a bug. Below that, the
probability of staleness as a function of (t - ack time of L) is the PBS t-visibility curve
(Bailis et al., "Probabilistically Bounded Staleness", VLDB 2012), collected in buckets.

No clock is read here: callers pass times (seconds, any monotonic origin), so tests drive
it with a fake sequence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

ID_BYTES = 8
_ID = struct.Struct(">Q")
# Upper edges (ms) of the time-since-write buckets; the last bucket is open-ended.
BUCKET_EDGES_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
HISTORY_PER_KEY = 16


def encode_value(write_id: int, size: int) -> bytes:
    """A value of `size` bytes (at least 8) that carries `write_id`."""
    filler = max(0, size - ID_BYTES)
    return _ID.pack(write_id) + (b"x" * filler)


def decode_write_id(value: bytes) -> int | None:
    """The write id in a harness-written value, or None for foreign values."""
    if len(value) < ID_BYTES:
        return None
    return _ID.unpack_from(value)[0]


def bucket_index(age_ms: float, edges: tuple[float, ...] = BUCKET_EDGES_MS) -> int:
    for i, edge in enumerate(edges):
        if age_ms < edge:
            return i
    return len(edges)


@dataclass
class StalenessStats:
    checked: int = 0
    stale: int = 0
    unjudged: int = 0  # reads of keys with no acknowledged write yet
    bucket_reads: list[int] = field(default_factory=lambda: [0] * (len(BUCKET_EDGES_MS) + 1))
    bucket_stale: list[int] = field(default_factory=lambda: [0] * (len(BUCKET_EDGES_MS) + 1))

    @property
    def probability(self) -> float:
        return self.stale / self.checked if self.checked else 0.0

    def to_json(self) -> dict[str, Any]:
        curve = []
        lo = 0.0
        for i, hi in enumerate((*BUCKET_EDGES_MS, None)):
            reads, stale = self.bucket_reads[i], self.bucket_stale[i]
            curve.append({"lo_ms": lo, "hi_ms": hi, "reads": reads, "stale": stale,
                          "p_stale": stale / reads if reads else None})
            lo = hi if hi is not None else lo
        return {"reads_checked": self.checked, "stale_reads": self.stale,
                "probability": self.probability, "unjudged_reads": self.unjudged,
                "curve": curve}


class StalenessDetector:
    """Tracks acknowledged writes per key and judges reads against them."""

    def __init__(self, history: int = HISTORY_PER_KEY) -> None:
        self.history = history
        self._acks: dict[str, list[tuple[int, float]]] = {}
        self.stats = StalenessStats()

    def reset_stats(self) -> None:
        """Start a new measurement (the write history is kept: it is still true)."""
        self.stats = StalenessStats()

    def write_acked(self, key: str, write_id: int, at: float) -> None:
        """Record that the write `write_id` of `key` was acknowledged at time `at`."""
        acks = self._acks.get(key)
        if acks is None:
            self._acks[key] = [(write_id, at)]  # a list is far smaller than a deque per key
            return
        acks.append((write_id, at))
        if len(acks) > 2 * self.history:
            del acks[: len(acks) - self.history]

    def latest_before(self, key: str, at: float) -> tuple[int, float] | None:
        """(id, ack time) of the largest write id acknowledged before `at`, if any."""
        best: tuple[int, float] | None = None
        for write_id, acked in self._acks.get(key, ()):
            if acked < at and (best is None or write_id > best[0]):
                best = (write_id, acked)
        return best

    def read(self, key: str, started: float, returned_ids: list[int | None]) -> bool | None:
        """Judge a read that began at `started`; True = stale, None = nothing to judge."""
        latest = self.latest_before(key, started)
        if latest is None:
            self.stats.unjudged += 1
            return None
        write_id, acked = latest
        stale = not any(i is not None and i >= write_id for i in returned_ids)
        bucket = bucket_index((started - acked) * 1000.0)
        self.stats.checked += 1
        self.stats.bucket_reads[bucket] += 1
        if stale:
            self.stats.stale += 1
            self.stats.bucket_stale[bucket] += 1
        return stale
