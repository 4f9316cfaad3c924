"""The durable raft log: round trips, torn tails, bit flips, compaction, snapshots."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvstore.core.raft import ConfState, Entry, HardState, Snapshot
from kvstore.storage.raftlog import (
    LOG_FILE,
    SNAPSHOT_FILE,
    CorruptRaftLogError,
    OsFiles,
    RaftLog,
)


def _ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, data=f"entry-{i}".encode()) for i in range(lo, hi + 1)]


def _write_sample(path: Path) -> list[int]:
    """Three records: entries 1-5 (commit 0), entries 6-8 with commit 5, commit 8.
    Returns the byte offset at which each record ends."""
    log = RaftLog.open(path)
    log.recover()
    ends = []
    log.save(HardState(1, "a", 0), _ents(1, 5), sync=True)
    ends.append(len((path / LOG_FILE).read_bytes()))
    log.save(HardState(1, "a", 5), _ents(6, 8), sync=True)
    ends.append(len((path / LOG_FILE).read_bytes()))
    log.save(HardState(1, "a", 8), [], sync=False)
    ends.append(len((path / LOG_FILE).read_bytes()))
    log.close()
    return ends


def test_round_trip_and_truncation_of_conflicting_suffix(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path)
    log.recover()
    log.save(HardState(2, "b", 3), _ents(1, 6, term=1), sync=True)
    log.save(HardState(3, "c", 3), _ents(5, 7, term=3), sync=True)  # replaces 5, 6
    log.close()
    rec = RaftLog.open(tmp_path).recover()
    assert rec.hard_state == HardState(3, "c", 3)
    assert [(e.index, e.term) for e in rec.entries] == [(1, 1), (2, 1), (3, 1), (4, 1),
                                                       (5, 3), (6, 3), (7, 3)]
    assert rec.truncated_bytes == 0


def test_every_torn_tail_is_truncated_safely(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    full = (tmp_path / LOG_FILE).read_bytes()
    for cut in range(ends[1] + 1, ends[2]):  # tear the last (commit-only) record anywhere
        (tmp_path / LOG_FILE).write_bytes(full[:cut])
        rec = RaftLog.open(tmp_path).recover()
        assert rec.hard_state.commit == 5 and len(rec.entries) == 8
        assert rec.truncated_bytes == cut - ends[1]
        assert len((tmp_path / LOG_FILE).read_bytes()) == ends[1]  # cut back durably
    for cut in range(ends[0] + 1, ends[1]):  # tear the second record: its entries go
        (tmp_path / LOG_FILE).write_bytes(full[:cut])
        rec = RaftLog.open(tmp_path).recover()
        assert rec.hard_state.commit == 0 and len(rec.entries) == 5


def test_garbage_after_the_last_record_is_truncated(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    with open(tmp_path / LOG_FILE, "ab") as fh:
        fh.write(b"\x00\xff garbage from a torn sector")
    rec = RaftLog.open(tmp_path).recover()
    assert rec.hard_state.commit == 8 and rec.truncated_bytes > 0
    assert len((tmp_path / LOG_FILE).read_bytes()) == ends[2]


def test_bit_flip_in_a_committed_entry_stops_with_a_clear_error(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    raw = bytearray((tmp_path / LOG_FILE).read_bytes())
    raw[ends[0] // 2] ^= 0x10  # inside entries 1-5, committed by later records
    (tmp_path / LOG_FILE).write_bytes(bytes(raw))
    with pytest.raises(CorruptRaftLogError, match="damaged in the middle"):
        RaftLog.open(tmp_path).recover()
    assert (tmp_path / LOG_FILE).read_bytes() == bytes(raw)  # nothing was "repaired" away


def test_bit_flip_in_the_uncommitted_tail_is_truncated(tmp_path: Path) -> None:
    ends = _write_sample(tmp_path)
    raw = bytearray((tmp_path / LOG_FILE).read_bytes())
    raw[ends[2] - 3] ^= 0x01  # the last record
    (tmp_path / LOG_FILE).write_bytes(bytes(raw))
    rec = RaftLog.open(tmp_path).recover()
    assert rec.hard_state.commit == 5 and len(rec.entries) == 8


def test_snapshot_compaction_and_checksum(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path)
    log.recover()
    log.save(HardState(2, "a", 10), _ents(1, 12, term=2), sync=True)
    snap = Snapshot(10, 2, ConfState(frozenset({"a", "b", "c"})), b"state@10")
    log.save_snapshot(snap)
    log.compact(8)
    log.save(None, _ents(13, 14, term=2), sync=True)
    log.close()
    rec = RaftLog.open(tmp_path).recover()
    assert rec.snapshot == snap
    assert [e.index for e in rec.entries] == [11, 12, 13, 14]
    raw = bytearray((tmp_path / SNAPSHOT_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / SNAPSHOT_FILE).write_bytes(bytes(raw))
    with pytest.raises(CorruptRaftLogError, match="snapshot is damaged"):
        RaftLog.open(tmp_path).recover()


def test_installed_snapshot_replaces_a_divergent_log(tmp_path: Path) -> None:
    log = RaftLog.open(tmp_path)
    log.recover()
    log.save(HardState(2, "", 3), _ents(1, 9, term=2), sync=True)
    snap = Snapshot(20, 5, ConfState(frozenset({"a"})), b"leader state")
    log.install_snapshot(snap, HardState(5, "", 20))
    log.save(HardState(5, "", 21), [Entry(21, 5, data=b"next")], sync=True)
    log.close()
    rec = RaftLog.open(tmp_path).recover()
    assert rec.snapshot == snap and [e.index for e in rec.entries] == [21]
    assert rec.hard_state.commit == 21


def test_fsynced_append_rate(tmp_path: Path) -> None:
    """Not an assertion on speed: prints the measured rate for docs/raft.md."""
    log = RaftLog(OsFiles(tmp_path))
    log.recover()
    n = 200
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        log.save(HardState(1, "a", i - 1), [Entry(i, 1, data=b"x" * 100)], sync=True)
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n + 1, n + 1 + n * 50, 50):
        log.save(HardState(1, "a", i - 1),
                 [Entry(j, 1, data=b"x" * 100) for j in range(i, i + 50)], sync=True)
    dt50 = time.perf_counter() - t0
    log.close()
    print(f"\nraftlog: {n / dt:.0f} fsynced records/s (1 entry each); "
          f"{n * 50 / dt50:.0f} entries/s at 50 entries per fsynced record")
    assert len(RaftLog.open(tmp_path).recover().entries) == n + n * 50
