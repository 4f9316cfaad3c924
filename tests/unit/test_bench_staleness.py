"""The staleness detector, driven by explicit times (no clock, no cluster)."""

from __future__ import annotations

from kvstore.bench.staleness import (
    BUCKET_EDGES_MS,
    StalenessDetector,
    bucket_index,
    decode_write_id,
    encode_value,
)


def test_values_carry_their_write_id() -> None:
    v = encode_value(123456789, 100)
    assert len(v) == 100 and decode_write_id(v) == 123456789
    assert len(encode_value(5, 8)) == 8
    assert decode_write_id(b"short") is None


def test_injected_stale_read_is_flagged_and_fresh_one_is_not() -> None:
    d = StalenessDetector()
    d.write_acked("k", 1, at=10.000)
    d.write_acked("k", 2, at=10.100)
    # began 3 ms after write 2 was acknowledged but returned write 1: stale
    assert d.read("k", started=10.103, returned_ids=[1]) is True
    # returned the latest acknowledged write: fresh
    assert d.read("k", started=10.103, returned_ids=[2]) is False
    # returned a newer write (in flight, or acknowledged later): fresh
    assert d.read("k", started=10.103, returned_ids=[3]) is False
    # siblings: fresh if any of them is the latest or newer
    assert d.read("k", started=10.103, returned_ids=[1, 2]) is False
    # nothing returned at all, though a write was acknowledged: stale
    assert d.read("k", started=10.103, returned_ids=[]) is True
    # a value the harness did not write does not count as fresh
    assert d.read("k", started=10.103, returned_ids=[None]) is True
    s = d.stats
    assert (s.checked, s.stale) == (6, 3)
    assert abs(s.probability - 0.5) < 1e-12


def test_only_writes_acknowledged_before_the_read_began_count() -> None:
    d = StalenessDetector()
    d.write_acked("k", 1, at=1.0)
    d.write_acked("k", 2, at=2.0)
    # the read began between the two acks: returning write 1 is not stale
    assert d.read("k", started=1.5, returned_ids=[1]) is False
    # a read that began before any ack is not judged
    assert d.read("k", started=0.5, returned_ids=[]) is None
    assert d.read("other", started=5.0, returned_ids=[]) is None
    assert d.stats.unjudged == 2 and d.stats.checked == 1


def test_acks_out_of_id_order_use_the_largest_acknowledged_id() -> None:
    d = StalenessDetector()
    d.write_acked("k", 7, at=1.0)  # issued later, acknowledged first
    d.write_acked("k", 6, at=1.2)
    assert d.latest_before("k", 2.0) == (7, 1.0)
    assert d.read("k", started=2.0, returned_ids=[6]) is True
    assert d.read("k", started=2.0, returned_ids=[6, 7]) is False


def test_curve_buckets_by_time_since_the_latest_acknowledged_write() -> None:
    d = StalenessDetector()
    d.write_acked("k", 1, at=0.0)
    d.read("k", started=0.0003, returned_ids=[]) # 0.3 ms: stale
    d.read("k", started=0.0004, returned_ids=[1])  # 0.4 ms: fresh
    d.read("k", started=0.007, returned_ids=[])  # 7 ms: stale
    d.read("k", started=3.0, returned_ids=[1])  # 3 s: fresh
    curve = d.stats.to_json()["curve"]
    assert len(curve) == len(BUCKET_EDGES_MS) + 1
    first, five_to_ten, last = curve[0], curve[bucket_index(7.0)], curve[-1]
    assert (first["reads"], first["stale"], first["p_stale"]) == (2, 1, 0.5)
    assert (five_to_ten["lo_ms"], five_to_ten["hi_ms"], five_to_ten["p_stale"]) == (5, 10, 1.0)
    assert (last["hi_ms"], last["reads"], last["p_stale"]) == (None, 1, 0.0)
    assert sum(b["reads"] for b in curve) == d.stats.checked == 4
    assert curve[1]["p_stale"] is None  # no reads in that bucket


def test_history_is_bounded_but_keeps_the_latest() -> None:
    d = StalenessDetector(history=4)
    for i in range(1, 101):
        d.write_acked("k", i, at=float(i))
    assert len(d._acks["k"]) <= 8
    assert d.latest_before("k", 1000.0) == (100, 100.0)


def test_reset_stats_keeps_the_write_history() -> None:
    d = StalenessDetector()
    d.write_acked("k", 1, at=0.0)
    d.read("k", 1.0, [])
    d.reset_stats()
    assert d.stats.checked == 0
    assert d.read("k", 1.0, []) is True
