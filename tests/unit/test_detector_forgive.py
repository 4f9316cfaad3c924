"""PhiAccrualDetector.forgive: a node's own stall is not held against its peers."""

from __future__ import annotations

from kvstore.core.failure_detector import PhiAccrualDetector


def beating(interval: float = 0.15, beats: int = 20) -> PhiAccrualDetector:
    fd = PhiAccrualDetector(5.0, initial_interval=interval)
    for i in range(beats):
        fd.heartbeat("a", i * interval)
        fd.heartbeat("b", i * interval)
    return fd


def test_a_stall_of_our_own_is_forgiven():
    fd = beating()
    last = 19 * 0.15
    now = last + 4.0  # we were paused for ~4 s: both peers look long dead
    assert not fd.is_up("a", now) and not fd.is_up("b", now)
    fd.forgive(3.9, now)
    assert fd.is_up("a", now) and fd.is_up("b", now)
    # forgiveness only shifts the past: silence after it still counts
    assert not fd.is_up("a", now + 2.5)


def test_forgiveness_never_moves_an_arrival_past_now():
    fd = beating()
    now = 19 * 0.15 + 0.1
    fd.forgive(100.0, now)
    assert fd.phi("a", now) == 0.0
    fd.heartbeat("a", now + 0.15)
    assert fd.mean_interval("a") > 0  # no zero or negative interval was recorded


def test_nothing_to_forgive():
    fd = beating()
    now = 19 * 0.15 + 0.5
    before = fd.phi("a", now)
    fd.forgive(0.0, now)
    fd.forgive(-1.0, now)
    assert fd.phi("a", now) == before
