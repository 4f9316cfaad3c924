"""Recorder accounting, level and duration parsing, workload mixes, fault analysis."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvstore.bench.levels import Level, parse_duration, parse_levels, replicas
from kvstore.bench.runner import analyze_fault, error_kind
from kvstore.bench.stats import Recorder, to_us
from kvstore.bench.workloads import WORKLOADS, get_workload
from kvstore.client import Timeout, Unavailable


def test_recorder_counts_match_issued_and_histograms() -> None:
    rng = random.Random(3)
    rec = Recorder(interval_s=0.5)
    expected_errors: Counter[str] = Counter()
    for i in range(5000):
        rec.issue()
        op = "read" if i % 2 else "update"
        at = i / 1000  # 5 s of operations
        if rng.random() < 0.05:
            kind = rng.choice(["Timeout", "Unavailable"])
            rec.failure(op, kind, at, "boom")
            expected_errors[kind] += 1
        else:
            rec.success(op, rng.uniform(0.0005, 0.050), at)
    out = rec.to_json(elapsed_s=5.0)
    assert rec.issued == 5000 == rec.completed
    assert out["ops"] + out["errors_total"] == out["issued"] == 5000
    assert out["errors"] == dict(sorted(expected_errors.items()))
    assert rec.hist.get_total_count() == out["ops"]
    assert sum(h["count"] for h in out["by_op"].values()) == out["ops"]
    tl = out["timeline"]
    assert len(tl) == 10
    assert sum(iv["ops_per_s"] * 0.5 for iv in tl) == pytest.approx(out["ops"])
    assert sum(iv["errors"] for iv in tl) == out["errors_total"]
    assert 0.5 <= out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"] <= out["p999_ms"] <= 50.1
    assert out["ops_per_s"] == pytest.approx(out["ops"] / 5.0)


def test_percentiles_are_accurate_to_three_digits() -> None:
    rec = Recorder()
    for ms in range(1, 1001):  # 1..1000 ms, once each
        rec.issue()
        rec.success("read", ms / 1000, 0.0)
    out = rec.to_json(1.0)
    assert out["p50_ms"] == pytest.approx(500, rel=0.002)
    assert out["p99_ms"] == pytest.approx(990, rel=0.002)
    assert out["p999_ms"] == pytest.approx(999, rel=0.002)
    assert to_us(0) == 1 and to_us(1e9) == 60_000_000


def test_levels_and_their_overlap() -> None:
    assert [lv.name for lv in parse_levels("one, QUORUM,all,ONE/ALL")] == [
        "ONE", "QUORUM", "ALL", "ONE/ALL"]
    assert Level.parse("ONE").counts(3) == (1, 1)
    assert not Level.parse("ONE").overlapping(3)
    assert Level.parse("QUORUM").overlapping(3)
    assert Level.parse("ONE/ALL").overlapping(3)
    assert not Level.parse("ONE/TWO").overlapping(3)
    assert replicas("QUORUM", 5) == 3 and replicas("THREE", 2) == 2
    with pytest.raises(ValueError):
        Level.parse("MOST")
    with pytest.raises(ValueError):
        parse_levels(" , ")


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("2m") == 120
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5") == 1.5
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_workload_mixes() -> None:
    for name, wl in WORKLOADS.items():
        assert abs(sum(share for _, share in wl.mix) - 1.0) < 1e-9, name
    choose = get_workload("b").chooser(random.Random(9))
    counts = Counter(choose() for _ in range(20_000))
    assert 0.94 < counts["read"] / 20_000 < 0.96
    assert set(Counter(get_workload("w").chooser(random.Random(1))() for _ in range(10))) == {
        "update"}
    with pytest.raises(ValueError):
        get_workload("e")


def test_error_kinds() -> None:
    assert error_kind(Timeout("x")) == "Timeout"
    assert error_kind(Unavailable("x")) == "Unavailable"
    assert error_kind(TimeoutError()) == "Timeout"
    assert error_kind(ValueError()) == "other:ValueError"


def _timeline(rows: list[tuple[float, int]]) -> list[dict]:
    return [{"t_s": float(i), "ops_per_s": ops, "errors": errors, "p99_ms": 5.0 + errors}
            for i, (ops, errors) in enumerate(rows)]


def test_fault_analysis_finds_spike_and_recovery() -> None:
    # 9 s: steady 1000/s, node killed at 3.0 s -> errors and a dip, fine again from 6 s
    tl = _timeline([(1000, 0)] * 3 + [(300, 40), (500, 10), (700, 0)] + [(1000, 0)] * 3)
    out = analyze_fault(tl, 1.0, 9.0, {"node": "n3", "kill_s": 3.0, "restart_s": 6.0})
    assert out["baseline_ops_per_s"] == 1000
    assert out["errors_after_kill"] == 50
    assert out["spike_p99_ms"] == 45.0
    assert out["min_ops_per_s_after_kill"] == 300
    # from 5 s on: no errors, and the mean of (700, 1000, 1000, 1000) is >= 80% of 1000
    assert out["recovered_at_s"] == 5.0 and out["recovery_s"] == 2.0
    assert out["errors_stopped_s"] == 2.0


def test_fault_analysis_without_recovery() -> None:
    tl = _timeline([(1000, 0)] * 3 + [(100, 5)] * 3)
    out = analyze_fault(tl, 1.0, 6.0, {"kill_s": 3.0})
    assert out["recovery_s"] is None and out["errors_after_kill"] == 15
    assert out["errors_stopped_s"] == 3.0


def test_fault_analysis_noisy_dip_without_errors_is_not_a_failure() -> None:
    tl = _timeline([(1000, 0)] * 3 + [(1000, 0), (400, 0), (1000, 0), (1000, 0)])
    out = analyze_fault(tl, 1.0, 7.0, {"kill_s": 3.0})
    assert out["recovery_s"] == 0.0 and out["errors_stopped_s"] == 0.0
