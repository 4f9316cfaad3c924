"""bench/background_p99.py's pure parts: reading the work counters from /metrics text,
the work done between two snapshots, the phase order, and the per-kind summary (the p99
ratio to the same round's baseline that docs/benchmarks.md reports)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bg():
    spec = importlib.util.spec_from_file_location(
        "background_p99", REPO / "bench" / "background_p99.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["background_p99"] = module
    spec.loader.exec_module(module)
    return module


METRICS = """\
# HELP kv_hints_total Hint events (stored, delivered, dropped_*)
# TYPE kv_hints_total counter
kv_hints_total{event="delivered"} 120.0
kv_hints_total{event="stored"} 130.0
# HELP kv_repair_total Anti-entropy events
# TYPE kv_repair_total counter
kv_repair_total{event="keys_fetched"} 7.0
kv_repair_total{event="keys_pushed"} 5.0
kv_repair_total{event="sessions"} 2.0
# HELP kv_coordinator_total Quorum acks and read repairs
# TYPE kv_coordinator_total counter
kv_coordinator_total{event="read_repair_ok"} 9.0
kv_coordinator_total{event="read_repair_failed"} 4.0
"""


def test_parse_work_sums_the_events_of_each_kind(bg):
    assert bg.parse_work(METRICS) == {"hints_delivered": 120.0, "ae_keys_moved": 12.0,
                                      "ae_sessions": 2.0, "read_repairs": 9.0}


def test_parse_work_of_a_node_that_did_nothing_is_zero(bg):
    assert bg.parse_work("") == dict.fromkeys(bg.WORK, 0.0)


def test_work_delta_sums_nodes_and_restarts_from_zero(bg):
    zero = dict.fromkeys(bg.WORK, 0.0)
    before = {"n1": {**zero, "hints_delivered": 100.0, "read_repairs": 3.0},
              "n3": {**zero, "read_repairs": 50.0}}
    after = {"n1": {**zero, "hints_delivered": 160.0, "read_repairs": 5.0},
             "n3": {**zero, "read_repairs": 4.0},  # restarted: counters began again
             "n2": {**zero, "ae_keys_moved": 7.0}}  # not in the first snapshot
    delta = bg.work_delta(before, after)
    assert delta == {**zero, "hints_delivered": 60.0, "read_repairs": 6.0,
                     "ae_keys_moved": 7.0}


def test_order_rotates_so_every_kind_leads_once(bg):
    orders = [bg.order(r) for r in range(len(bg.KINDS))]
    assert {o[0] for o in orders} == set(bg.KINDS)
    assert all(sorted(o) == sorted(bg.KINDS) for o in orders)


def row(kind, rnd, p99, ops=1000):
    return {"kind": kind, "round": rnd, "ops_per_s": ops, "p50_ms": p99 / 4, "p99_ms": p99,
            "p999_ms": p99 * 1.5, "hints_delivered": 0, "ae_keys_moved": 0,
            "ae_sessions": 0, "read_repairs": 0}


def test_summary_takes_ratios_within_a_round_then_the_median(bg):
    phases = [row("baseline", 0, 100), row("hints", 0, 110),
              row("baseline", 1, 200), row("hints", 1, 300),
              row("baseline", 2, 50), row("hints", 2, 55)]
    s = bg.summarize(phases)
    # ratios per round: 1.1, 1.5, 1.1 (not median(hints) / median(baseline) = 110/100)
    assert s["hints"]["p99_ratios"] == [1.1, 1.5, 1.1]
    assert s["hints"]["p99_ratio"] == 1.1
    assert s["hints"]["meets_target"] is True
    assert s["baseline"]["p99_ratio"] == 1.0
    assert "meets_target" not in s["baseline"]
    assert s["hints"]["p99_ms"] == 110
    assert s["hints"]["rounds"] == 3


def test_summary_says_when_the_target_is_missed(bg):
    s = bg.summarize([row("baseline", 0, 100), row("read repair", 0, 121)])
    assert s["read repair"]["p99_ratio"] == 1.21
    assert s["read repair"]["meets_target"] is False
    assert "hints" not in s


def test_summary_without_a_baseline_gives_no_ratio(bg):
    s = bg.summarize([row("anti-entropy", 0, 100)])
    assert s["anti-entropy"]["p99_ratio"] is None
    assert "meets_target" not in s["anti-entropy"]
