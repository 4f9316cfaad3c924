"""SqliteEngine specifics: durability across reopen, damaged files, one transaction per
apply, sync policy, locking, threads."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of
from kvstore.storage import (
    CorruptDatabaseError,
    CorruptRecordError,
    SqliteEngine,
    StorageError,
    open_engine,
)
from kvstore.storage.sqlite import FORMAT_VERSION

KEYS = [f"key-{i:05d}".encode() for i in range(3000)]


def value_of(key: bytes) -> bytes:
    return b"VAL<" + key + b">" + bytes(range(64)) * 2


def put(value: bytes):
    return lambda _current: value


def make_db(path: Path, keys: list[bytes] = KEYS) -> None:
    eng = SqliteEngine(path)
    for i in range(0, len(keys), 500):
        eng.apply([(k, put(value_of(k))) for k in keys[i : i + 500]])
    eng.close()  # the last connection checkpoints the WAL into the main file


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path, KEYS[:500])
    eng = SqliteEngine(path)
    assert eng.count() == 500
    assert all(eng.get(k) == value_of(k) for k in KEYS[:500])
    eng.apply([(KEYS[0], put(b"changed")), (b"new", put(b"n"))])
    eng.close()
    eng = SqliteEngine(path, sync="normal")
    assert eng.get(KEYS[0]) == b"changed" and eng.get(b"new") == b"n"
    assert eng.count() == 501
    eng.close()


def test_open_engine(tmp_path: Path) -> None:
    mem = open_engine(None)
    assert type(mem).__name__ == "MemoryEngine"
    eng = open_engine(tmp_path / "node1" / "data", sync="normal")
    assert isinstance(eng, SqliteEngine)
    assert eng.path == tmp_path / "node1" / "data" / "data.db"
    eng.close()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="cannot create data directory"):
        open_engine(tmp_path / "afile" / "sub")
    SqliteEngine(str(tmp_path / "str-path.db")).close()  # str paths work too


def test_schema_pragmas_and_sync_policy(tmp_path: Path) -> None:
    for sync, level in [("full", 2), ("normal", 1), ("off", 0)]:
        eng = SqliteEngine(tmp_path / f"{sync}.db", sync=sync)
        conn = eng._conn()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='records'").fetchone()[0]
        assert "WITHOUT ROWID" in sql and "PRIMARY KEY (token, key)" in sql
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        assert meta["format_version"] == str(FORMAT_VERSION)
        eng.close()
    with pytest.raises(ValueError, match="sync must be one of"):
        SqliteEngine(tmp_path / "x.db", sync="sometimes")


def test_apply_is_one_transaction(tmp_path: Path) -> None:
    eng = SqliteEngine(tmp_path / "data.db")
    statements: list[str] = []
    eng._conn().set_trace_callback(statements.append)
    eng.apply([(k, put(value_of(k))) for k in KEYS[:200]] + [(KEYS[0], lambda c: c + b"!")])
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert eng.get(KEYS[0]) == value_of(KEYS[0]) + b"!"
    # Steps that leave records unchanged write nothing (a replica re-receiving a write).
    statements.clear()
    assert eng.apply([(k, lambda c: None) for k in KEYS[:50]])[:2] == [
        value_of(KEYS[0]) + b"!",
        value_of(KEYS[1]),
    ]
    assert not [s for s in statements if s.startswith(("INSERT", "DELETE"))]
    eng.close()


def test_engine_failure_fails_the_whole_batch_and_loses_nothing(tmp_path: Path) -> None:
    eng = SqliteEngine(tmp_path / "data.db")
    eng.apply([(k, put(value_of(k))) for k in KEYS[:100]])
    conn = eng._conn()  # this thread is the writer: cap the file to simulate a full disk
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [(k, put(b"x" * 4000)) for k in KEYS[100:200]] + [(KEYS[0], put(b"changed"))]
    with pytest.raises(StorageError, match="disk full"):
        eng.apply(big)
    assert eng.count() == 100
    assert eng.get(KEYS[0]) == value_of(KEYS[0]) and eng.get(KEYS[150]) is None
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert eng.apply(big)[-1] == b"changed"
    assert eng.count() == 200
    eng.close()


def test_raw_update_without_crc_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path, KEYS[:50])
    raw = sqlite3.connect(path)
    raw.execute(
        "UPDATE records SET value = ? WHERE token = ? AND key = ?",
        (b"tampered", token_of(KEYS[7]), KEYS[7]),
    )
    # a row filed under the wrong token (e.g. a damaged token column) is caught by scans
    raw.execute("UPDATE records SET token = token + 1 WHERE key = ?", (KEYS[9],))
    raw.commit()
    raw.close()
    eng = SqliteEngine(path)
    with pytest.raises(CorruptRecordError, match="checksum mismatch") as info:
        eng.get(KEYS[7])
    assert info.value.key == KEYS[7] and str(path) in str(info.value)
    assert eng.get(KEYS[8]) == value_of(KEYS[8])
    with pytest.raises(CorruptRecordError) as info:
        eng.scan_page(TOKEN_MIN, TOKEN_MAX, None, 1000)
    assert info.value.key in (KEYS[7], KEYS[9])
    eng.close()


def test_garbage_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    path.write_bytes(random.Random(1).randbytes(64 * 1024))
    with pytest.raises(StorageError, match="is not a kvstore database") as info:
        SqliteEngine(path)
    assert str(path) in str(info.value)
    # the lock was released: a second attempt gives the same clear error, not "already open"
    with pytest.raises(StorageError, match="is not a kvstore database"):
        SqliteEngine(path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StorageError, match="not a kvstore one"):
        SqliteEngine(path)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path, KEYS[:5])
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = '99' WHERE name = 'format_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StorageError, match="format version 99"):
        SqliteEngine(path)


def test_overwritten_header_page(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path, KEYS[:100])
    with path.open("r+b") as f:
        f.write(b"\x00" * 100)  # the 100-byte SQLite header
    with pytest.raises(StorageError, match="not a kvstore database"):
        SqliteEngine(path)


def test_overwritten_value_bytes_in_a_page(tmp_path: Path) -> None:
    """Bit rot inside a record's bytes on disk: the structure is intact, the CRC is not."""
    path = tmp_path / "data.db"
    make_db(path, KEYS[:200])
    data = bytearray(path.read_bytes())
    victim = KEYS[123]
    at = data.index(b"VAL<" + victim)
    data[at + 1] ^= 0x20
    path.write_bytes(bytes(data))
    eng = SqliteEngine(path)
    with pytest.raises(CorruptRecordError) as info:
        eng.get(victim)
    assert info.value.key == victim
    assert eng.get(KEYS[122]) == value_of(KEYS[122])
    eng.close()


def _damage_pages(path: Path, seed: int, count: int) -> None:
    size = path.stat().st_size
    rng = random.Random(seed)
    with path.open("r+b") as f:
        for page in rng.sample(range(2, size // 4096), count):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))


def test_garbage_pages_at_rest_refuse_to_open(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path)
    _damage_pages(path, seed=7, count=5)
    with pytest.raises(CorruptDatabaseError, match="is damaged") as info:
        SqliteEngine(path)
    assert str(path) in str(info.value) and ".recover" in str(info.value)


def test_garbage_pages_while_open(tmp_path: Path) -> None:
    """Pages damaged under a running engine: the keys on them fail clearly, the rest serve."""
    path = tmp_path / "data.db"
    make_db(path)
    eng = SqliteEngine(path)
    _damage_pages(path, seed=7, count=5)
    outcome: dict[str, object] = {}

    def read_all() -> None:  # a fresh thread: a fresh connection, nothing cached
        failed, wrong = [], []
        for k in KEYS:
            try:
                if eng.get(k) != value_of(k):
                    wrong.append(k)
            except CorruptRecordError as exc:
                assert exc.key == k and str(path) in str(exc)
                failed.append(k)
        outcome.update(failed=failed, wrong=wrong)
        try:
            list(eng.scan(TOKEN_MIN, TOKEN_MAX))
        except CorruptDatabaseError as exc:
            outcome["scan"] = exc

    t = threading.Thread(target=read_all)
    t.start()
    t.join()
    failed = outcome["failed"]
    print(f"\n{len(failed)} of {len(KEYS)} keys refused after overwriting 5 pages")
    assert outcome["wrong"] == []  # never wrong bytes
    assert 0 < len(failed) < len(KEYS) // 2
    assert isinstance(outcome.get("scan"), CorruptDatabaseError)
    eng.close()


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_db(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptDatabaseError, match="is damaged") as info:
        SqliteEngine(path)
    assert str(path) in str(info.value)


def test_second_opener_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    eng = SqliteEngine(path)
    with pytest.raises(StorageError, match="already open"):
        SqliteEngine(path)
    eng.close()
    SqliteEngine(path).close()


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory"):
        SqliteEngine(tmp_path)
    with pytest.raises(StorageError, match="is missing"):
        SqliteEngine(tmp_path / "nope" / "data.db")


def test_readers_on_other_threads_while_writing(tmp_path: Path) -> None:
    eng = SqliteEngine(tmp_path / "data.db", sync="off")
    keys = KEYS[:200]
    eng.apply([(k, put(b"0")) for k in keys])
    problems: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            k = rng.choice(keys)
            v = eng.get(k)
            if v is None or not v.isdigit():
                problems.append(f"{k!r} -> {v!r}")
            if len(list(eng.scan(TOKEN_MIN, TOKEN_MAX))) != len(keys):
                problems.append("scan lost records")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for rnd in range(1, 60):
        eng.apply([(k, put(str(rnd).encode())) for k in keys])
    stop.set()
    for t in threads:
        t.join()
    assert problems == []
    assert eng.get(keys[0]) == b"59"
    assert len(eng._conns) >= 4  # each thread had its own connection
    eng.close()
