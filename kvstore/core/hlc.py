"""Hybrid logical clocks (Kulkarni et al., 2014), pure: the physical clock is injected.

A timestamp is (wall milliseconds, logical counter), packed into one integer
(`wall << 16 | logical`) for the wire. `now()` stamps a local or send event, `update(r)`
a receive: the result is above both the local clock's last value and `r`, and within
`max_offset_ms` of the physical clock whenever every clock is. So if event a happened
before b (through any chain of messages that carry timestamps), ts(a) < ts(b), while the
timestamps stay close to real time. Transactions use them to order commits
(docs/transactions.md): a transaction that saw another's version commits at a higher
timestamp.

A remote timestamp more than `max_offset_ms` ahead of our physical clock is a sign of a
broken clock somewhere: it is not followed (the clock would run away with it) and is
counted in `ignored_ahead`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HLC", "LOGICAL_BITS", "Timestamp"]

LOGICAL_BITS = 16
_MASK = (1 << LOGICAL_BITS) - 1


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    wall_ms: int
    logical: int = 0

    def pack(self) -> int:
        assert 0 <= self.logical <= _MASK, "the logical counter fits its bits"
        return (self.wall_ms << LOGICAL_BITS) | self.logical

    @classmethod
    def unpack(cls, value: int) -> Timestamp:
        return cls(value >> LOGICAL_BITS, value & _MASK)

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.logical}"


class HLC:
    def __init__(self, clock_ms: Callable[[], int], max_offset_ms: int = 500) -> None:
        self.clock_ms = clock_ms
        self.max_offset_ms = max_offset_ms
        self.last = Timestamp(0, 0)
        self.ignored_ahead = 0

    def _advance(self, wall: int, logical: int) -> Timestamp:
        if logical > _MASK:  # the counter overflows: move to the next millisecond
            wall, logical = wall + 1, 0
        ts = Timestamp(wall, logical)
        assert ts > self.last, "an HLC never goes back or repeats"
        self.last = ts
        return ts

    def now(self) -> Timestamp:
        """A timestamp for a local or send event."""
        physical = self.clock_ms()
        if physical > self.last.wall_ms:
            return self._advance(physical, 0)
        return self._advance(self.last.wall_ms, self.last.logical + 1)

    def update(self, remote: Timestamp | int) -> Timestamp:
        """A timestamp for receiving a message stamped `remote` (0: unstamped)."""
        if isinstance(remote, int):
            remote = Timestamp.unpack(remote)
        physical = self.clock_ms()
        if remote.wall_ms > physical + self.max_offset_ms:
            self.ignored_ahead += 1
            return self.now()
        wall = max(physical, self.last.wall_ms, remote.wall_ms)
        if wall == self.last.wall_ms == remote.wall_ms:
            logical = max(self.last.logical, remote.logical) + 1
        elif wall == self.last.wall_ms:
            logical = self.last.logical + 1
        elif wall == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        return self._advance(wall, logical)
