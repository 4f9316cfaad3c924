"""The durable engine: SQLite in WAL mode, one table ordered by (token, key).

Layout: `records(token, key, value, crc)` is a WITHOUT ROWID table whose primary key is
(token, key), so the rows sit in the B-tree in ring order and a token range is one index
range scan. `crc` is CRC32 over key+value; a mismatch raises `CorruptRecordError` and the
bytes are never returned. `meta` holds the format version; the file's `application_id`
marks it as a kvstore database, so a stranger's file is refused with a clear error.
`fences(lock, token)` is the replica's `FenceTable` (the highest fencing token seen per
lock), written in the same transaction as the records that taught it; a file from before
fencing gets the (empty) table when it is opened.

Sync policy (`sync=`), i.e. what a returned `apply()` has survived:

* "full" (default): `synchronous=FULL`; every commit fsyncs the WAL. An acknowledged write
  survives a crash of the process and a power loss / kernel crash.
* "normal": `synchronous=NORMAL` in WAL mode; commits are written to the WAL (the OS page
  cache) and only checkpoints fsync. Survives kill -9 of the process; a power loss may lose
  the last commits (the database stays consistent).
* "off": `synchronous=OFF`; no fsync at all. Survives kill -9, not power loss; for tests
  and benchmarks.

`apply()` runs all its steps in ONE transaction: one commit, one fsync, however many steps
(group commit; `AsyncStore` feeds it every update that arrived meanwhile).

Threads: each thread gets its own connection (WAL lets readers run beside the writer);
writes are serialised by a lock. Scans read in pages of `SCAN_PAGE` rows, each its own
short read transaction, so a slow consumer never pins the WAL. One process at a time: an
exclusive `flock` on `<path>.lock` refuses a second opener.

Pragmas were chosen by measurement (bench/storage_bench.py --pragmas; numbers in
docs/storage.md): 4 KiB pages, a 16 MiB page cache per connection, no mmap (no measurable
gain here, and an I/O error under a mapping is a SIGBUS crash instead of an error), and a
WAL checkpoint every 10,000 pages instead of 1,000 (random-token updates dirty one page
each; checkpointing less often coalesces rewrites of the same page).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from kvstore.core.histogram import LatencyHistogram
from kvstore.core.ring import token_of
from kvstore.storage.engine import CorruptRecordError, Mutation, StorageError
from kvstore.storage.fences import FenceTable
from kvstore.storage.memory import (
    DELETE,
    DISCARD,
    SCAN_PAGE,
    OverwriteCorrupt,
    StepResult,
    check_key,
    check_result,
    record_crc,
    scan_segments,
)

FORMAT_VERSION: Final = 1
APPLICATION_ID: Final = 0x6B765331  # "kvS1" in the SQLite header: this file is ours
SYNC_MODES: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

DEFAULT_PAGE_SIZE: Final = 4096
DEFAULT_CACHE_KIB: Final = 16 * 1024  # per connection (one per thread)
DEFAULT_MMAP_BYTES: Final = 0  # no measurable gain; an I/O error on a mapping is SIGBUS
DEFAULT_CHECKPOINT_PAGES: Final = 10_000  # WAL frames before the writer checkpoints (~40 MiB)

_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26
_SQLITE_IOERR: Final = 10

_FENCES_SCHEMA: Final = ("CREATE TABLE IF NOT EXISTS fences (lock TEXT PRIMARY KEY,"
                         " token INTEGER NOT NULL) WITHOUT ROWID")
_FENCE_PUT: Final = "INSERT OR REPLACE INTO fences (lock, token) VALUES (?, ?)"
_SCHEMA: Final = (
    "CREATE TABLE records (token INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
    " crc INTEGER NOT NULL, PRIMARY KEY (token, key)) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    _FENCES_SCHEMA,
)
_GET: Final = "SELECT value, crc FROM records WHERE token = ? AND key = ?"
_IN_SIZES: Final = tuple(2**i for i in range(10))  # pad to a power of two: <= 2x, 10 shapes
_GET_MANY: Final = {
    n: f"SELECT token, key, value, crc FROM records WHERE token IN ({','.join('?' * n)})"
    for n in _IN_SIZES
}
_PUT: Final = "INSERT OR REPLACE INTO records (token, key, value, crc) VALUES (?, ?, ?, ?)"
_DEL: Final = "DELETE FROM records WHERE token = ? AND key = ?"
_COLS: Final = "SELECT token, key, value, crc FROM records WHERE "


class CorruptDatabaseError(StorageError):
    """The database file itself is damaged (not one record): the node must not serve it."""


class SqliteEngine:
    """The durable engine. See the module docstring for the sync policy and layout."""

    def __init__(
        self,
        path: str | Path,
        sync: str = "full",
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        cache_kib: int = DEFAULT_CACHE_KIB,
        mmap_bytes: int = DEFAULT_MMAP_BYTES,
        checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {sorted(SYNC_MODES)}, not {sync!r}")
        self.path = Path(path)
        self.sync = sync
        self._page_size = page_size
        self._cache_kib = cache_kib
        self._mmap_bytes = mmap_bytes
        self._checkpoint_pages = checkpoint_pages
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        self._count = 0
        # The COMMIT of each batch: the WAL append and, with sync="full", its fsync (and the
        # occasional automatic checkpoint). Exported as kv_storage_fsync_seconds.
        self.commit_latency = LatencyHistogram()
        self.fences = FenceTable()
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a directory; give the path of the database file")
        if not self.path.parent.is_dir():
            raise StorageError(f"cannot open {self.path}: directory {self.path.parent} is missing")
        self._lock_fd = self._take_file_lock()
        try:
            conn = self._conn()
            self._init_schema(conn)
            self._count = self._query(conn, "SELECT count(*) FROM records", ()).fetchone()[0]
            self.fences = FenceTable(dict(
                self._query(conn, "SELECT lock, token FROM fences", ()).fetchall()))
        except BaseException:
            self._release()
            raise

    # -- opening -------------------------------------------------------------------------

    def _take_file_lock(self) -> int:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                f"{self.path} is already open (lock {lock_path} is held by another engine or"
                " process); stop the other node using this data directory first"
            ) from exc
        return fd

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (created and configured on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StorageError(f"{self.path}: the engine is closed")
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")
            conn.execute(f"PRAGMA cache_size = -{int(self._cache_kib)}")
            conn.execute(f"PRAGMA mmap_size = {int(self._mmap_bytes)}")
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(self._checkpoint_pages)}")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after spikes
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc) from exc
        with self._conns_lock:
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        app_id = self._query(conn, "PRAGMA application_id", ()).fetchone()[0]
        tables = {
            r[0] for r in self._query(conn, "SELECT name FROM sqlite_master WHERE type='table'", ())
        }
        if app_id == 0 and not tables:
            self._create(conn)
            return
        if app_id != APPLICATION_ID or not {"records", "meta"} <= tables:
            raise StorageError(
                f"{self.path} is a SQLite database but not a kvstore one (application_id"
                f" {app_id:#x}, tables {sorted(tables)}); point the node at its own data"
                " directory or move this file away"
            )
        rows = dict(self._query(conn, "SELECT name, value FROM meta", ()).fetchall())
        version = int(rows.get("format_version", "0"))
        if version != FORMAT_VERSION:
            raise StorageError(
                f"{self.path} has storage format version {version}, this kvstore reads version"
                f" {FORMAT_VERSION}; use the matching kvstore release"
            )
        mode = self._query(conn, "PRAGMA journal_mode = WAL", ()).fetchone()[0]
        if mode != "wal":
            raise StorageError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
        if "fences" not in tables:  # a file from before fencing: add the (empty) table
            self._query(conn, _FENCES_SCHEMA, ())

    def _create(self, conn: sqlite3.Connection) -> None:
        self._query(conn, f"PRAGMA page_size = {int(self._page_size)}", ())
        mode = self._query(conn, "PRAGMA journal_mode = WAL", ()).fetchone()[0]
        if mode != "wal":
            raise StorageError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("format_version", str(FORMAT_VERSION)),
                    ("order", "token=mmh3 x64 128 first half signed, then key bytes"),
                    ("crc", "zlib.crc32(key + value)"),
                ],
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._translate(exc) from exc

    # -- errors --------------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, key: bytes | None = None) -> StorageError:
        """Turn SQLite's error into one that names the file and says what to do."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        msg = str(exc)
        if code == _SQLITE_NOTADB or "not a database" in msg:
            return StorageError(
                f"{self.path} is not a kvstore database (SQLite: {msg}); point the node at its"
                " own data directory, or move this file away to start empty"
            )
        if code == _SQLITE_CORRUPT or "malformed" in msg:
            advice = (
                f"the database file {self.path} is damaged (SQLite: {msg}); stop the node, move"
                " the file aside and restart it empty so anti-entropy re-replicates its ranges"
                f" (`sqlite3 {self.path} .recover` may salvage the rest)"
            )
            return CorruptRecordError(key, advice) if key is not None else CorruptDatabaseError(
                advice
            )
        if code == _SQLITE_FULL:
            return StorageError(f"{self.path}: disk full ({msg}); free space, nothing was lost")
        if code == _SQLITE_IOERR:
            return StorageError(f"{self.path}: I/O error ({msg}); check the disk")
        return StorageError(f"{self.path}: SQLite error: {msg}")

    def _query(self, conn: sqlite3.Connection, sql: str, args: tuple) -> sqlite3.Cursor:
        try:
            return conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _verified(self, key: bytes, value: bytes, crc: int) -> bytes:
        if record_crc(key, value) != crc:
            raise CorruptRecordError(
                key, f"checksum mismatch in {self.path} (stored {crc:#010x}); clear it with"
                " DISCARD and let repair rewrite it",
            )
        return value

    # -- the Engine contract -------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        conn = self._conn()
        try:
            row = conn.execute(_GET, (token_of(key), key)).fetchone()
        except sqlite3.Error as exc:
            raise self._translate(exc, key) from exc
        return None if row is None else self._verified(key, row[0], row[1])

    def get_many(self, keys: list[bytes]) -> list[bytes | Exception | None]:
        """Per key its record, None, or the error a `get` of it would raise, read with one
        `token IN (...)` query per 512 keys (one snapshot per query). A SQLite failure
        raises (callers fall back to `get` per key to pin it on a key)."""
        found: dict[bytes, tuple[bytes, int]] = {}
        tokens = list({token_of(k) for k in keys if type(k) is bytes})
        conn = self._conn()
        try:
            for i in range(0, len(tokens), _IN_SIZES[-1]):
                chunk = tokens[i : i + _IN_SIZES[-1]]
                size = next(n for n in _IN_SIZES if n >= len(chunk))
                chunk += [chunk[0]] * (size - len(chunk))
                for token, key, value, crc in conn.execute(_GET_MANY[size], chunk):
                    if token_of(key) == token:
                        found[key] = (value, crc)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        out: list[bytes | Exception | None] = []
        for key in keys:
            if type(key) is not bytes:
                out.append(TypeError(f"keys are bytes, not {type(key).__name__}"))
                continue
            row = found.get(key)
            if row is None:
                out.append(None)
                continue
            try:
                out.append(self._verified(key, row[0], row[1]))
            except CorruptRecordError as exc:
                out.append(exc)
        return out

    def apply(self, mutations: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        """All steps in one transaction. A SQLite failure (disk full, I/O) raises and
        nothing of the batch is stored; a failing step only fails itself.

        The current records of every key in the batch are read up front with a few
        `token IN (...)` queries (about 3x cheaper per key than one SELECT each), the steps
        run in memory, and only the keys that changed are written (executemany)."""
        results: list[StepResult] = []
        with self._write_lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                state = self._load(conn, mutations)
                for key, mutation in mutations:
                    try:
                        st = state.get(key)
                        if st is None:
                            check_key(key)  # raises: only bytes keys were loaded
                            continue
                        if mutation is DISCARD:
                            st[2] = st[3] = None
                            st[4] = True
                            results.append(None)
                            continue
                        if st[3] is not None:
                            if not isinstance(mutation, OverwriteCorrupt):
                                raise CorruptRecordError(key, st[3].detail)
                            new = mutation(None)  # the damaged record counts as absent
                            check_result(new)
                            if new is None:  # left unchanged: still damaged
                                raise CorruptRecordError(key, st[3].detail)
                            st[3] = None
                        else:
                            new = mutation(st[2])
                            check_result(new)
                        if new is None:
                            results.append(st[2])
                            continue
                        st[2] = None if new is DELETE else new
                        st[4] = True
                        results.append(st[2])
                    except Exception as exc:
                        results.append(exc)
                puts = []
                dels = []
                delta = 0
                for key, (token, existed, record, _corrupt, changed) in state.items():
                    if not changed:
                        continue
                    if record is None:
                        if existed:
                            dels.append((token, key))
                            delta -= 1
                    else:
                        puts.append((token, key, record, record_crc(key, record)))
                        delta += 0 if existed else 1
                if puts:
                    conn.executemany(_PUT, puts)
                if dels:
                    conn.executemany(_DEL, dels)
                staged = self.fences.staged()
                if staged:
                    conn.executemany(_FENCE_PUT, list(staged.items()))
                committing = time.perf_counter()
                conn.execute("COMMIT")
                self.commit_latency.observe(time.perf_counter() - committing)
            except sqlite3.Error as exc:
                self._rollback(conn)
                self.fences.abort()
                raise self._translate(exc) from exc
            except BaseException:
                self._rollback(conn)
                self.fences.abort()
                raise
            self.fences.commit()
            self._count += delta
        return results

    def _load(self, conn: sqlite3.Connection, mutations: list[tuple[bytes, Mutation]]) -> dict:
        """key -> [token, existed, record | None, CorruptRecordError | None, changed]."""
        state: dict[bytes, list] = {}
        for key, _ in mutations:
            if type(key) is bytes and key not in state:
                state[key] = [token_of(key), False, None, None, False]
        tokens = list({st[0] for st in state.values()})
        for i in range(0, len(tokens), _IN_SIZES[-1]):
            chunk = tokens[i : i + _IN_SIZES[-1]]
            size = next(n for n in _IN_SIZES if n >= len(chunk))
            chunk += [chunk[0]] * (size - len(chunk))  # a few fixed shapes: cached statements
            for token, key, value, crc in conn.execute(_GET_MANY[size], chunk):
                st = state.get(key)
                if st is None or st[0] != token:
                    continue  # a token collision with a key outside this batch
                st[1] = True
                try:
                    st[2] = self._verified(key, value, crc)
                except CorruptRecordError as exc:
                    st[3] = exc
        return state

    def scan_page(
        self, start_token: int, end_token: int, after_key: tuple[int, bytes] | None, limit: int
    ) -> list[tuple[int, bytes, bytes]]:
        """Up to `limit` records of the range after `after_key`, all verified."""
        return [
            (t, k, self._verified(k, v, c))
            for t, k, v, c in self._page(start_token, end_token, after_key, limit)
        ]

    def _page(
        self, start_token: int, end_token: int, after_key: tuple[int, bytes] | None, limit: int
    ) -> list[tuple[int, bytes, bytes, int]]:
        out: list[tuple[int, bytes, bytes, int]] = []
        conn = self._conn()
        for lower, upper in scan_segments(start_token, end_token, after_key):
            if len(out) >= limit:
                break
            if lower is None:
                sql, args = "token <= ?", (upper,)
            elif lower[1] is None:
                if lower[0] >= upper:
                    continue
                sql, args = "token > ? AND token <= ?", (lower[0], upper)
            else:
                sql, args = "(token, key) > (?, ?) AND token <= ?", (lower[0], lower[1], upper)
            query = f"{_COLS}{sql} ORDER BY token, key LIMIT ?"
            try:
                out.extend(conn.execute(query, (*args, limit - len(out))).fetchall())
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
        for token, key, _, _ in out:
            if token_of(key) != token:
                raise CorruptRecordError(key, f"stored under token {token} in {self.path}")
        return out

    def scan(
        self, start_token: int, end_token: int, *, after_key: tuple[int, bytes] | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """Pages of SCAN_PAGE rows, each its own short read (no long-lived snapshot)."""
        while True:
            page = self._page(start_token, end_token, after_key, SCAN_PAGE)
            for token, key, value, crc in page:
                yield token, key, self._verified(key, value, crc)
            if len(page) < SCAN_PAGE:
                return
            after_key = (page[-1][0], page[-1][1])

    def count(self) -> int:
        """Kept in memory (counted once at open, then tracked by apply): O(1)."""
        if self._closed:
            raise StorageError(f"{self.path}: the engine is closed")
        return self._count

    def close(self) -> None:
        """Close every thread's connection (the last one checkpoints the WAL) and unlock."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _release(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (tests, backups)."""
        with self._write_lock:
            self._query(self._conn(), "PRAGMA wal_checkpoint(TRUNCATE)", ()).fetchall()
