"""Hybrid logical clocks (core/hlc.py): monotonic, causal, close to the physical clock."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from kvstore.core.hlc import HLC, Timestamp


class Clock:
    def __init__(self, t: int = 1000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_now_follows_the_physical_clock_and_never_repeats() -> None:
    clock = Clock()
    hlc = HLC(clock)
    a, b = hlc.now(), hlc.now()
    assert a == Timestamp(1000, 0) and b == Timestamp(1000, 1)
    clock.t = 900  # the physical clock steps back: the HLC does not
    assert hlc.now() == Timestamp(1000, 2)
    clock.t = 1005
    assert hlc.now() == Timestamp(1005, 0)


def test_a_receive_is_after_the_send_and_a_runaway_clock_is_not_followed() -> None:
    a, b = HLC(Clock(2000)), HLC(Clock(1000), max_offset_ms=2000)
    sent = a.now()
    got = b.update(sent.pack())
    assert got > sent and got.wall_ms == 2000
    far = HLC(Clock(10_000)).now()
    assert b.update(far) < far and b.ignored_ahead == 1


def test_pack_round_trips() -> None:
    ts = Timestamp(1_800_000_000_000, 65535)
    assert Timestamp.unpack(ts.pack()) == ts


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(-50, 50)),
                max_size=60), st.integers(0, 2**32))
def test_causality_over_random_message_exchanges(steps, seed) -> None:
    """Three nodes with skewed clocks exchange messages: every receive is stamped above
    the send, every node's stamps only grow, and each stays within the largest skew of
    real time."""
    rng = random.Random(seed)
    real = Clock(10_000)
    skews = [rng.randint(-100, 100) for _ in range(3)]
    nodes = [HLC(lambda i=i: real.t + skews[i], max_offset_ms=1000) for i in range(3)]
    last = [Timestamp(0, 0)] * 3
    for src, dst, tick in steps:
        real.t += abs(tick)
        sent = nodes[src].now()
        assert sent > last[src]
        last[src] = sent
        got = nodes[dst].update(sent.pack())
        assert got > sent and got > last[dst]
        last[dst] = got
        assert got.wall_ms <= real.t + max(skews)
