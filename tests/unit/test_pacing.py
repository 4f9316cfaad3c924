"""core/pacing: the arithmetic that keeps background work behind its rate."""

from __future__ import annotations

import pytest

from kvstore.core.pacing import Pacer, drain_rate


def test_pacer_owes_the_time_it_ran_ahead_and_nothing_when_behind():
    pacer = Pacer(100.0)
    assert pacer.owed(50, 0.1) == pytest.approx(0.4)  # 50 items are worth 0.5 s
    assert pacer.owed(50, 0.5) == 0.0
    assert pacer.owed(50, 2.0) == 0.0  # behind: never a negative wait


def test_an_unpaced_pacer_never_waits():
    assert Pacer(0).owed(10**9, 0.0) == 0.0


def test_a_negative_rate_is_refused():
    with pytest.raises(ValueError):
        Pacer(-1)


def test_drain_rate_raises_the_rate_so_a_backlog_drains_within_half_the_max_age():
    hour_ms = 3600 * 1000
    assert drain_rate(500, 1000, hour_ms) == 500  # 2 s of work: the configured rate
    # 10 hints a second for a 60 s max age: 1,000 pending need 1,000 / 30 s
    assert drain_rate(10, 1000, 60_000) == pytest.approx(1000 / 30)
    assert drain_rate(0, 10**6, 60_000) == 0  # unpaced stays unpaced
