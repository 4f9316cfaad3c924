"""The chaos fault filter (kvstore/transport/faults.py): rules, expiry, bounds, errors."""

from __future__ import annotations

import random

import pytest

from kvstore.transport.faults import MAX_DURATION, MAX_FAULTS, FaultFilter


def test_partition_cuts_only_the_named_peers_until_it_expires():
    f = FaultFilter(random.Random(1))
    f.add("partition", ["n3"], now=100.0, duration=5.0, wall=1.0)
    assert f.decide("n3", 100.1).blocked == "partitioned by chaos"
    assert not f.decide("n2", 100.1).blocked
    assert f.decide("n3", 104.9).blocked
    assert not f.decide("n3", 105.0, wall=2.0).blocked  # expired exactly at its deadline
    assert f.faults == {}  # and removed by the first decision after it
    assert [text for _, text in f.events][-1].startswith("expired: cut from n3")


def test_no_peers_means_every_peer():
    f = FaultFilter(random.Random(1))
    f.add("partition", [], now=0.0, duration=1.0)
    assert f.decide("anyone", 0.5).blocked


def test_drop_rate_is_respected_statistically():
    f = FaultFilter(random.Random(7))
    f.add("drop", ["n2"], now=0.0, duration=10.0, rate=0.25)
    dropped = sum(bool(f.decide("n2", 1.0).blocked) for _ in range(4000))
    assert 850 < dropped < 1150, dropped
    assert f.counts["drop"] == dropped
    assert not any(f.decide("n3", 1.0).blocked for _ in range(100))


def test_delay_with_jitter_stays_within_bounds_and_varies():
    f = FaultFilter(random.Random(3))
    f.add("delay", ["n2"], now=0.0, duration=10.0, delay_ms=200, jitter_ms=50)
    delays = [f.decide("n2", 1.0).delay_s for _ in range(500)]
    assert all(0.150 <= d <= 0.250 for d in delays)
    assert max(delays) - min(delays) > 0.08  # jitter really varies
    assert f.decide("n1", 1.0).delay_s == 0.0


def test_heal_removes_everything_and_says_how_many():
    f = FaultFilter(random.Random(1))
    f.add("partition", ["n3"], now=0.0, duration=60)
    f.add("delay", ["n2"], now=0.0, duration=60, delay_ms=5)
    assert f.heal(1.0) == 2
    assert f.faults == {} and not f.decide("n3", 1.0).blocked
    assert f.heal(1.0) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "flood"}, "unknown fault"),
    ({"kind": "partition", "duration": 0}, "lasts more than 0"),
    ({"kind": "partition", "duration": MAX_DURATION + 1}, "at most"),
    ({"kind": "drop", "rate": 0.0}, "drop rate"),
    ({"kind": "drop", "rate": 1.5}, "drop rate"),
    ({"kind": "delay", "delay_ms": 0, "jitter_ms": 0}, "delay needs"),
    ({"kind": "delay", "delay_ms": -5}, "delay needs"),
])
def test_bad_faults_are_refused_with_a_reason(kwargs, message):
    f = FaultFilter(random.Random(1))
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=message):
        f.add(kind, ["n1"], 0.0, **kwargs)
    assert f.faults == {}


def test_the_number_of_faults_is_bounded():
    f = FaultFilter(random.Random(1))
    for _ in range(MAX_FAULTS):
        f.add("delay", ["n2"], 0.0, duration=10, delay_ms=1)
    with pytest.raises(ValueError, match="active already"):
        f.add("delay", ["n2"], 0.0, duration=10, delay_ms=1)
    # expired faults make room again
    f.add("delay", ["n2"], 11.0, duration=10, delay_ms=1)
    assert len(f.faults) == 1
