"""Pacing for background work (hinted handoff, anti-entropy): pure arithmetic, the
caller sleeps.

Background work shares the node's two resources with the foreground: the event loop and
the replica it writes to. Issue 13's target is that it raises the foreground's p99 by at
most 20%, so background loops never run ahead of a configured rate, and bound how much
they do between two yields to the event loop.
"""

from __future__ import annotations


class Pacer:
    """Paces one pass to `rate` items (or bytes) per second.

    `owed(done, elapsed)` is how long to wait once `done` items took `elapsed` seconds so
    the pass never runs ahead of the rate; 0 when it is behind, or unpaced (rate 0)."""

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise ValueError(f"a pacing rate must be >= 0 (0: unpaced), not {rate}")
        self.rate = rate

    def owed(self, done: float, elapsed: float) -> float:
        if not self.rate:
            return 0.0
        return max(0.0, done / self.rate - elapsed)


def drain_rate(rate: float, pending: int, max_age_ms: int) -> float:
    """The rate to deliver `pending` hints at: the configured `rate`, raised so the backlog
    drains within half the hints' max age whatever it is set to (a hint that expires is
    dropped, not delivered, so pacing must never be what makes one expire). 0 stays 0
    (unpaced)."""
    assert rate >= 0 and pending >= 0 and max_age_ms > 0, (rate, pending, max_age_ms)
    if not rate:
        return 0.0
    return max(rate, pending / (max_age_ms / 2000))
