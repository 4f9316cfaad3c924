"""A fixed-bucket latency histogram with no I/O and no dependencies.

The storage layer and the anti-entropy service time their work with it (they must not
import prometheus-client: layers); the node's collector exports it as a Prometheus
histogram (`buckets()` gives the cumulative counts the exposition format wants).
Bounded: one counter per bucket, whatever the number of observations.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import pairwise

# Seconds: from 100 us (a commit with sync=off) to 10 s (an fsync on a stalled disk).
STORAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 10.0)


class LatencyHistogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = STORAGE_BUCKETS) -> None:
        assert bounds and all(a < b for a, b in pairwise(bounds)), \
            "bucket bounds must be increasing"
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above the highest bound
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (upper bound, count) pairs ending with ("+Inf", total). Safe to call
        while another thread observes: the total is summed from the buckets read, so the
        pairs never decrease (the `count` attribute may run one ahead)."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (0 when empty; the highest
        bound when it lies above them all)."""
        if not self.count:
            return 0.0
        rank, running = q * self.count, 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return self.bounds[-1]
