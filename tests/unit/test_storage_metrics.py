"""Storage observability (issue 14): the latency histogram core, the durable engine's commit
histogram, the store's write histogram, and the storage census (records, tombstones,
purge markers, bytes on disk) over a real SQLite store."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kvstore.core import versions
from kvstore.core.histogram import LatencyHistogram
from kvstore.node.observe import CENSUS_INTERVAL, StorageCensus, disk_bytes
from kvstore.storage import AsyncStore, SqliteEngine


def test_histogram_buckets_are_cumulative_and_quantiles_are_bucket_bounds():
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 0.05, 3.0):
        h.observe(seconds)
    assert h.buckets() == [("0.001", 2), ("0.01", 3), ("0.1", 5), ("+Inf", 6)]
    assert h.count == 6 and h.sum == pytest.approx(3.1065)
    assert h.quantile(0.3) == 0.001 and h.quantile(0.5) == 0.01
    assert h.quantile(0.8) == 0.1 and h.quantile(1.0) == 0.1  # above all: the highest
    assert LatencyHistogram().quantile(0.99) == 0.0


def test_histogram_refuses_unordered_bounds():
    with pytest.raises(AssertionError):
        LatencyHistogram((0.1, 0.01))


def _record(*siblings: versions.Sibling, purged: dict | None = None) -> bytes:
    rec = versions.Record(list(siblings))
    if purged:
        rec.purged, rec.purged_at_ms = purged, 1
    return versions.encode_record(rec)


def test_writes_commits_and_the_census_over_a_real_store(tmp_path):
    async def main():
        store = AsyncStore(SqliteEngine(tmp_path / "data.db", "full"))
        try:
            live = versions.Sibling("n1", 1, value=b"v", written_at_ms=1)
            dead = versions.Sibling("n1", 2, tombstone=True, written_at_ms=1)
            rows = {b"live": _record(live), b"dead": _record(dead),
                    b"both": _record(live, dead), b"gone": _record(purged={"n1": 3})}
            for key, record in rows.items():
                await store.update(key, lambda _old, r=record: r)
            assert store.write_latency.count == 4
            assert store.engine.commit_latency.count == store.batches >= 1
            assert 0 < store.write_latency.quantile(0.99) <= 10
            node = SimpleNamespace(store=store, config=SimpleNamespace(data_dir=tmp_path))
            census = StorageCensus(node)
            assert census.age() == -1.0 and census.tombstones == -1
            await census.refresh()
            assert (census.records, census.tombstones, census.markers) == (4, 1, 1)
            assert census.disk["data.db"] > 0 and 0 <= census.age() < 5
            before = census.finished_at
            await census.refresh()  # fresh: no new census within CENSUS_INTERVAL
            assert census.finished_at == before
            assert census.interval() == CENSUS_INTERVAL  # 4 records: quick
            census.took = 3.0  # a census of 3 s runs at most every 60 s (5 % of the time)
            assert census.interval() == 60.0
            await census.stop()
        finally:
            await store.close()

    asyncio.run(main())


def test_disk_bytes_sums_directories_and_tolerates_a_missing_one(tmp_path):
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "log").write_bytes(b"x" * 100)
    (tmp_path / "raft" / "sub").mkdir()
    (tmp_path / "raft" / "sub" / "snap").write_bytes(b"x" * 20)
    (tmp_path / "data.db").write_bytes(b"y" * 7)
    assert disk_bytes(tmp_path) == {"raft": 120, "data.db": 7}
    assert disk_bytes(tmp_path / "nope") == {}
