"""Phi-accrual failure detection (Hayashibara et al., 2004), pure.

For each peer we keep a bounded window of heartbeat inter-arrival times. `phi(now)` is the
suspicion level: -log10 of the probability that a heartbeat arrives even later than `now -
last arrival`, given the window. A peer is down while phi >= threshold (default 8: under
the model, a mistake once in 10^8 checks).

Distribution: exponential, as Cassandra does. With mean inter-arrival m and elapsed t,
P(later) = exp(-t/m), so phi = t / (m ln 10) ~= 0.434 t/m, and a peer is declared down
after t = threshold * ln(10) * m (18.4 mean intervals at threshold 8). Why not the normal
approximation of the paper: heartbeats reach us through gossip, several hops and rounds
apart, so arrivals are bursty and long-tailed; a normal fit on a window with small
variance turns one slow round into an enormous phi (a false "down"), while the
exponential only depends on the mean and degrades gracefully. See docs/gossip.md.

Pure: time is the caller's `now` (seconds, any monotonic origin). Arrivals at the same
instant count once. A heartbeat with a higher generation (the peer restarted) resets the
peer's history; one with a lower generation is stale and ignored.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "PHI_FACTOR", "PhiAccrualDetector"]

DEFAULT_THRESHOLD: Final = 8.0
DEFAULT_WINDOW: Final = 1000
PHI_FACTOR: Final = 1.0 / math.log(10.0)


@dataclass
class _Arrivals:
    generation: int
    last: float
    intervals: deque[float]
    total: float = 0.0
    appended: int = 0

    def add(self, interval: float) -> None:
        if len(self.intervals) == self.intervals.maxlen:
            self.total -= self.intervals[0]
        self.intervals.append(interval)
        self.total += interval
        self.appended += 1
        if self.appended % (self.intervals.maxlen or 1) == 0:
            self.total = math.fsum(self.intervals)  # no drift from the running sum

    @property
    def mean(self) -> float:
        return self.total / len(self.intervals)


class PhiAccrualDetector:
    """Up/down verdicts for peers from their heartbeat arrival times.

    `initial_interval` (the gossip interval) seeds a new or restarted peer's window, so it
    is not declared down before its second heartbeat. `max_interval`, if set, keeps gaps
    longer than it (a partition that healed, a paused process) out of the window, so one
    outage does not make detection slower for the next thousand heartbeats.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        window: int = DEFAULT_WINDOW,
        initial_interval: float = 1.0,
        max_interval: float | None = None,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, not {threshold}")
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        if not initial_interval > 0:
            raise ValueError(f"initial_interval must be > 0, not {initial_interval}")
        if max_interval is not None and not max_interval >= initial_interval:
            raise ValueError("max_interval must be >= initial_interval")
        self.threshold = float(threshold)
        self.window = window
        self.initial_interval = float(initial_interval)
        self.max_interval = max_interval
        self._peers: dict[str, _Arrivals] = {}
        self._verdicts: dict[str, bool] = {}

    def _fresh(self, generation: int, now: float) -> _Arrivals:
        arrivals = _Arrivals(generation, now, deque(maxlen=self.window))
        arrivals.add(self.initial_interval)
        return arrivals

    def heartbeat(self, node_id: str, now: float, generation: int = 0) -> bool:
        """Record that newer heartbeat information about `node_id` arrived at `now`.

        Returns True when this heartbeat shows the peer restarted (a higher generation than
        before); its history was reset.
        """
        cur = self._peers.get(node_id)
        if cur is None:
            self._peers[node_id] = self._fresh(generation, now)
            return False
        if generation > cur.generation:
            self._peers[node_id] = self._fresh(generation, now)
            return True
        if generation < cur.generation:
            return False
        interval = now - cur.last
        if interval <= 0:
            return False  # the same instant (or a clock that went back): one arrival
        cur.last = now
        if self.max_interval is None or interval <= self.max_interval:
            cur.add(interval)
        return False

    def phi(self, node_id: str, now: float) -> float:
        """Suspicion of `node_id` at `now`; math.inf for a peer never heard from."""
        cur = self._peers.get(node_id)
        if cur is None:
            return math.inf
        elapsed = max(0.0, now - cur.last)
        return PHI_FACTOR * elapsed / cur.mean

    def is_up(self, node_id: str, now: float) -> bool:
        return self.phi(node_id, now) < self.threshold

    def transitions(self, now: float) -> list[tuple[str, bool]]:
        """(peer, up) for every peer whose verdict changed since the last call (a peer's
        first verdict counts as a change): what the node logs and acts on."""
        out = []
        for node_id in self._peers:
            up = self.is_up(node_id, now)
            if self._verdicts.get(node_id) != up:
                self._verdicts[node_id] = up
                out.append((node_id, up))
        return out

    def forgive(self, seconds: float, now: float) -> None:
        """This process itself was stalled for `seconds` (SIGSTOPped, starved of CPU): the
        silence it could not observe is not evidence against its peers (Lifeguard's "local
        health"). Every peer's last arrival moves forward by that much (never past `now`),
        so a node that resumes does not declare everyone down before it has read their
        news; a peer really dead is detected that much later."""
        if seconds <= 0:
            return
        for cur in self._peers.values():
            cur.last = min(now, cur.last + seconds)

    def down_after(self, node_id: str) -> float | None:
        """Seconds of silence after the last arrival at which the peer will be declared
        down (threshold * ln 10 * mean), or None if unknown."""
        cur = self._peers.get(node_id)
        return None if cur is None else self.threshold * cur.mean / PHI_FACTOR

    def mean_interval(self, node_id: str) -> float | None:
        cur = self._peers.get(node_id)
        return None if cur is None else cur.mean

    def generation(self, node_id: str) -> int | None:
        cur = self._peers.get(node_id)
        return None if cur is None else cur.generation

    def samples(self, node_id: str) -> int:
        cur = self._peers.get(node_id)
        return 0 if cur is None else len(cur.intervals)

    def remove(self, node_id: str) -> None:
        """Forget a peer (it left the cluster)."""
        self._peers.pop(node_id, None)
        self._verdicts.pop(node_id, None)

    def peers(self) -> list[str]:
        return list(self._peers)
