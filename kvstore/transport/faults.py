"""Chaos filters for a node's outbound internode traffic: partition, delay, drop.

`kv chaos` installs them on each node through the chaos admin API; the gRPC transport asks
`FaultFilter.decide(peer, now)` before every batch it sends. A symmetric partition
`n1,n2 / n3` is one rule on each side (n1 and n2 cut n3, n3 cuts n1 and n2); a one-way
partition only on the sending side, so n3 still reaches n1 and gets its answers.

No I/O: the caller passes `now` (seconds, any monotonic origin) and the random source.
Every fault carries an expiry, so a forgotten fault heals itself (`MAX_DURATION` bounds
it), and the filter keeps a bounded log of events (installed, healed, expired) for the
dashboard and `kv chaos status`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_DURATION", "MAX_DURATION", "Fault", "FaultFilter", "Verdict"]

DEFAULT_DURATION: Final = 300.0   # seconds a fault lasts unless told otherwise
MAX_DURATION: Final = 3600.0
MAX_FAULTS: Final = 64
MAX_EVENTS: Final = 200
KINDS: Final = ("partition", "delay", "drop")


@dataclass
class Fault:
    """One rule. `peers` empty means every peer."""

    id: int
    kind: str                      # partition | delay | drop
    peers: frozenset[str]
    expires_at: float
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate: float = 0.0
    note: str = ""

    def applies(self, peer: str) -> bool:
        return not self.peers or peer in self.peers

    def describe(self) -> str:
        who = ",".join(sorted(self.peers)) or "every peer"
        if self.kind == "partition":
            return f"cut from {who}" + (f" ({self.note})" if self.note else "")
        if self.kind == "delay":
            return f"delay {self.delay_ms:g}±{self.jitter_ms:g} ms to {who}"
        return f"drop {self.rate:.0%} to {who}"


@dataclass
class Verdict:
    blocked: str = ""              # why the message is not sent ("" = send it)
    delay_s: float = 0.0           # wait this long before sending


@dataclass
class FaultFilter:
    rng: random.Random = field(default_factory=random.Random)
    faults: dict[int, Fault] = field(default_factory=dict)
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    _next_id: int = 1
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})

    def add(self, kind: str, peers: list[str] | frozenset[str], now: float, *,
            duration: float = DEFAULT_DURATION, delay_ms: float = 0.0,
            jitter_ms: float = 0.0, rate: float = 0.0, note: str = "",
            wall: float = 0.0) -> Fault:
        """Install a fault; raise ValueError saying what is wrong with the arguments."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(KINDS)}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"a fault lasts more than 0 and at most {MAX_DURATION:g} s, "
                             f"not {duration:g}")
        if kind == "delay" and not (0 <= delay_ms <= 60_000 and 0 <= jitter_ms <= 60_000
                                    and delay_ms + jitter_ms > 0):
            raise ValueError("delay needs 0 <= ms <= 60000, jitter >= 0, and ms + jitter > 0")
        if kind == "drop" and not 0 < rate <= 1:
            raise ValueError(f"drop rate must be in (0, 1], not {rate:g}")
        self.expire(now, wall)
        if len(self.faults) >= MAX_FAULTS:
            raise ValueError(f"{MAX_FAULTS} faults are active already; heal some first")
        fault = Fault(self._next_id, kind, frozenset(peers), now + duration, delay_ms,
                      jitter_ms, rate, note)
        self._next_id += 1
        self.faults[fault.id] = fault
        self._event(wall, f"{fault.describe()} for {duration:g} s")
        return fault

    def heal(self, now: float, wall: float = 0.0) -> int:
        """Remove every fault; returns how many were active."""
        self.expire(now, wall)
        n = len(self.faults)
        self.faults.clear()
        if n:
            self._event(wall, f"healed {n} fault{'s' if n != 1 else ''}")
        return n

    def expire(self, now: float, wall: float = 0.0) -> None:
        for fid in [f.id for f in self.faults.values() if f.expires_at <= now]:
            fault = self.faults.pop(fid)
            self._event(wall, f"expired: {fault.describe()}")

    def active(self, now: float) -> list[Fault]:
        return [f for f in self.faults.values() if f.expires_at > now]

    def decide(self, peer: str, now: float, wall: float = 0.0) -> Verdict:
        """What to do with a batch to `peer` at `now` (`wall`: for the events of faults
        that expired meanwhile, which are removed here)."""
        if not self.faults:
            return Verdict()
        if any(f.expires_at <= now for f in self.faults.values()):
            self.expire(now, wall)
        verdict = Verdict()
        for fault in self.faults.values():
            if not fault.applies(peer):
                continue
            if fault.kind == "partition":
                self.counts["partition"] += 1
                return Verdict(blocked="partitioned by chaos")
            if fault.kind == "drop" and self.rng.random() < fault.rate:
                self.counts["drop"] += 1
                return Verdict(blocked=f"dropped by chaos (rate {fault.rate:g})")
            if fault.kind == "delay":
                jitter = fault.jitter_ms * (2 * self.rng.random() - 1)
                verdict.delay_s += max(0.0, fault.delay_ms + jitter) / 1000
        if verdict.delay_s:
            self.counts["delay"] += 1
        return verdict

    def _event(self, wall: float, text: str) -> None:
        self.events.append((wall, text))
