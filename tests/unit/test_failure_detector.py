"""Phi-accrual detector: hand-computed values of the exponential model.

phi(t) = t / (mean * ln 10), so with mean 1 s: phi(1) = 0.4342944819, phi(10) = 4.342944819,
and the threshold 8 is crossed at t = 8 ln 10 = 18.420680744 s.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.failure_detector import PHI_FACTOR, PhiAccrualDetector

LN10 = math.log(10)


def test_unknown_peer_is_down_with_infinite_phi() -> None:
    fd = PhiAccrualDetector()
    assert fd.phi("x", 5.0) == math.inf
    assert not fd.is_up("x", 5.0)
    assert fd.down_after("x") is None


def test_bootstrap_uses_initial_interval() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0)
    fd.heartbeat("a", 100.0)
    assert fd.phi("a", 100.0) == 0.0
    assert fd.phi("a", 101.0) == pytest.approx(0.4342944819)
    assert fd.phi("a", 110.0) == pytest.approx(4.342944819)
    assert fd.down_after("a") == pytest.approx(18.420680744)
    assert fd.is_up("a", 100.0 + 18.42)
    assert not fd.is_up("a", 100.0 + 18.43)


def test_mean_of_window_drives_phi() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0)
    for t in (0.0, 2.0, 4.0):
        fd.heartbeat("a", t)
    # intervals: 1 (bootstrap), 2, 2 -> mean 5/3
    assert fd.mean_interval("a") == pytest.approx(5 / 3)
    assert fd.phi("a", 14.0) == pytest.approx(10 / (5 / 3) / LN10)  # 2.6057668913
    assert fd.phi("a", 14.0) == pytest.approx(2.6057668913)


def test_threshold_is_configurable() -> None:
    fd = PhiAccrualDetector(threshold=1.0, initial_interval=2.0)
    fd.heartbeat("a", 0.0)
    # down once t / (2 ln 10) >= 1, i.e. t >= 4.605170186
    assert fd.is_up("a", 4.6)
    assert not fd.is_up("a", 4.61)


def test_window_is_bounded() -> None:
    fd = PhiAccrualDetector(window=3, initial_interval=1.0)
    for t in (0.0, 10.0, 20.0, 30.0):
        fd.heartbeat("a", t)
    assert fd.samples("a") == 3
    assert fd.mean_interval("a") == pytest.approx(10.0)  # the bootstrap 1.0 slid out
    assert fd.phi("a", 40.0) == pytest.approx(PHI_FACTOR)


def test_running_sum_stays_exact_over_many_samples() -> None:
    fd = PhiAccrualDetector(window=7, initial_interval=0.3)
    t = 0.0
    for i in range(10_000):
        t += 0.1 + (i % 5) * 0.01
        fd.heartbeat("a", t)
    expected = sum(0.1 + (i % 5) * 0.01 for i in range(10_000 - 7, 10_000)) / 7
    assert fd.mean_interval("a") == pytest.approx(expected, rel=1e-9)


def test_same_instant_counts_once_and_backwards_time_is_ignored() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0)
    fd.heartbeat("a", 5.0)
    fd.heartbeat("a", 5.0)
    fd.heartbeat("a", 4.0)
    assert fd.samples("a") == 1
    assert fd.phi("a", 4.0) == 0.0  # never negative


def test_restart_resets_history_and_stale_generation_is_ignored() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0)
    for t in range(0, 50, 5):
        fd.heartbeat("a", float(t), generation=7)
    assert fd.mean_interval("a") == pytest.approx((1 + 9 * 5) / 10)
    assert fd.heartbeat("a", 100.0, generation=6) is False  # a previous life: ignored
    assert fd.generation("a") == 7
    assert fd.heartbeat("a", 100.0, generation=8) is True
    assert fd.generation("a") == 8
    assert fd.samples("a") == 1
    assert fd.mean_interval("a") == 1.0
    assert fd.phi("a", 101.0) == pytest.approx(0.4342944819)


def test_max_interval_keeps_outages_out_of_the_window() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0, max_interval=3.0)
    fd.heartbeat("a", 0.0)
    fd.heartbeat("a", 1.0)
    fd.heartbeat("a", 61.0)  # a 60 s gap: arrival noted, interval not kept
    assert fd.mean_interval("a") == 1.0
    assert fd.phi("a", 62.0) == pytest.approx(0.4342944819)


def test_transitions_report_changes_only() -> None:
    fd = PhiAccrualDetector(initial_interval=1.0)
    fd.heartbeat("a", 0.0)
    fd.heartbeat("b", 0.0)
    assert sorted(fd.transitions(1.0)) == [("a", True), ("b", True)]
    assert fd.transitions(2.0) == []
    fd.heartbeat("b", 15.0)
    assert fd.transitions(19.0) == [("a", False)]
    fd.heartbeat("a", 20.0, generation=1)
    assert fd.transitions(20.0) == [("a", True)]
    fd.remove("a")
    assert fd.peers() == ["b"]


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"window": 0}, {"initial_interval": 0}, {"max_interval": 0.5}],
)
def test_bad_configuration_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PhiAccrualDetector(**kwargs)


# -- against a naive reference model -----------------------------------------------------


def reference_phi(arrivals: list[float], initial: float, window: int, now: float) -> float:
    """phi straight from the definition: keep every interval, average the last `window`."""
    intervals = [initial]
    last = arrivals[0]
    for t in arrivals[1:]:
        if t > last:
            intervals.append(t - last)
            last = t
    recent = intervals[-window:]
    mean = sum(recent) / len(recent)
    return max(0.0, now - last) / (mean * LN10)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    # gaps of 0 (same instant) or >= 1 ms: sub-ulp gaps at t ~ 1000 s are float noise
    st.lists(st.one_of(st.just(0.0), st.floats(0.001, 10.0)), min_size=1, max_size=60),
    st.integers(1, 20),
    st.floats(0.01, 5.0),
    st.floats(0.0, 100.0),
)
def test_phi_matches_the_definition(
    gaps: list[float], window: int, initial: float, extra: float
) -> None:
    arrivals = []
    t = 1000.0
    for g in gaps:
        t += g
        arrivals.append(t)
    fd = PhiAccrualDetector(window=window, initial_interval=initial)
    for a in arrivals:
        fd.heartbeat("p", a, generation=3)
    now = arrivals[-1] + extra
    expected = reference_phi(arrivals, initial, window, now)
    assert fd.phi("p", now) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Between heartbeats phi only grows, and crosses the threshold exactly at down_after.
    assert fd.phi("p", now + 1.0) >= fd.phi("p", now)
    last = max(arrivals)
    assert fd.is_up("p", last + fd.down_after("p") * (1 - 1e-6))
    assert not fd.is_up("p", last + fd.down_after("p") * (1 + 1e-6))
