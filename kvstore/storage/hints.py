"""The durable hint store: writes held for a replica that was down (hinted handoff).

A fallback node that accepted a write on behalf of `target` keeps it here until the owner
acknowledges it, or until it is dropped because it is too old or the owner left the
cluster. One SQLite file in the data directory (WAL mode), or an in-memory database for
tests (`HintStore(None)`): the same code either way.

Layout: `hints(id, target, key, record, created_ms, crc)`, indexed by (target, id), so
`pending(target)` is one index range scan in arrival order. `crc` is CRC32 over every
column (lengths included); a hint whose checksum fails is deleted and reported with the
reason "corrupt", never returned for delivery.

Bounds: at most `max_per_target` hints per target and `max_total` in all. `add` raises
`HintStoreFull` (the coordinator then counts the write as not hinted); `add_many` refuses
item by item (None in its result) and stores the rest in ONE transaction (one fsync).

Sync policy (`sync=`), as the main store: "full" fsyncs every commit (survives power
loss); "normal" survives a killed process, not power loss; "off" never fsyncs.

Thread-safe: one connection behind a lock (calls are short; run them off the event loop
with asyncio.to_thread).
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from kvstore.storage.engine import StorageError

__all__ = [
    "DEFAULT_MAX_AGE_MS",
    "DroppedHint",
    "Hint",
    "HintStore",
    "HintStoreFull",
]

DEFAULT_MAX_AGE_MS: Final = 3 * 3600 * 1000
DEFAULT_MAX_PER_TARGET: Final = 100_000
DEFAULT_MAX_TOTAL: Final = 1_000_000
FORMAT_VERSION: Final = 1
APPLICATION_ID: Final = 0x6B764831  # "kvH1": this file is a kvstore hint store
SYNC_MODES: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
T = TypeVar("T")

REASON_EXPIRED: Final = "expired"
REASON_NOT_MEMBER: Final = "not_member"
REASON_CORRUPT: Final = "corrupt"

_SCHEMA: Final = (
    "CREATE TABLE hints (id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL,"
    " key BLOB NOT NULL, record BLOB NOT NULL, created_ms INTEGER NOT NULL,"
    " crc INTEGER NOT NULL)",
    "CREATE INDEX hints_by_target ON hints (target, id)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_COLS: Final = "id, target, key, record, created_ms, crc"


class HintStoreFull(StorageError):
    """The hint store is at a bound; the hint was not stored."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"hint for {target} refused: {reason}")
        self.target = target
        self.reason = reason


@dataclass(frozen=True)
class Hint:
    """A write held for `target`: `record` is what the owner should merge for `key`."""

    id: int
    target: str
    key: bytes
    record: bytes
    created_ms: int


@dataclass(frozen=True)
class DroppedHint:
    """A hint removed without delivery; `reason` is "expired", "not_member" or "corrupt"."""

    id: int
    target: str
    key: bytes
    created_ms: int
    reason: str


def hint_crc(target: str, key: bytes, record: bytes, created_ms: int) -> int:
    """CRC32 over all columns, with lengths, so no field can shift into another unseen."""
    t = target.encode()
    head = struct.pack(">IIIq", len(t), len(key), len(record), created_ms)
    return zlib.crc32(record, zlib.crc32(key, zlib.crc32(t, zlib.crc32(head))))


def _check(target: object, key: object, record: object, created_ms: object) -> None:
    if type(target) is not str or not target:
        raise ValueError("hint target must be a non-empty node id")
    if type(key) is not bytes or type(record) is not bytes:
        raise ValueError("hint key and record must be bytes")
    if type(created_ms) is not int or not 0 <= created_ms < 2**63:
        raise ValueError(f"created_ms must be a non-negative int, not {created_ms!r}")


class HintStore:
    """Durable, bounded hints. See the module docstring."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        sync: str = "full",
        max_per_target: int = DEFAULT_MAX_PER_TARGET,
        max_total: int = DEFAULT_MAX_TOTAL,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {sorted(SYNC_MODES)}, not {sync!r}")
        if max_per_target < 1 or max_total < 1:
            raise ValueError("hint bounds must be >= 1")
        self.path = None if path is None else Path(path)
        self.sync = sync
        self.max_per_target = max_per_target
        self.max_total = max_total
        self._lock = threading.Lock()
        self._closed = False
        self._dropped: list[DroppedHint] = []
        if self.path is not None and self.path.is_dir():
            raise StorageError(f"{self.path} is a directory; give the hint database's file path")
        try:
            self._conn = sqlite3.connect(
                ":memory:" if self.path is None else self.path,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open hint store {self.path}: {exc}") from exc
        try:
            self._open()
            rows = self._conn.execute("SELECT target, count(*) FROM hints GROUP BY target")
            self._counts: dict[str, int] = dict(rows.fetchall())
        except sqlite3.Error as exc:
            self._conn.close()
            raise StorageError(f"hint store {self.path}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise
        self._total = sum(self._counts.values())

    def _open(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")
        conn.execute("PRAGMA busy_timeout = 10000")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        fresh = app_id == 0 and not tables
        if not fresh and (app_id != APPLICATION_ID or not {"hints", "meta"} <= tables):
            raise StorageError(  # checked before anything (even the journal mode) is changed
                f"{self.path} is not a kvstore hint store (application_id {app_id:#x}); move"
                " it away or point the node at its own data directory"
            )
        if self.path is not None:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
        if fresh:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('format_version', ?)",
                (str(FORMAT_VERSION),),
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
            return
        row = conn.execute("SELECT value FROM meta WHERE name = 'format_version'").fetchone()
        if row is None or row[0] != str(FORMAT_VERSION):
            raise StorageError(
                f"{self.path}: hint store format {row and row[0]}, expected {FORMAT_VERSION}"
            )

    def _run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        committed: Callable[[T], None] | None = None,
    ) -> T:
        """Run `fn(conn)` in one write transaction under the lock; translate errors. Then,
        still under the lock, `committed(result)` updates the in-memory counts."""
        with self._lock:
            if self._closed:
                raise StorageError(f"hint store {self.path}: closed")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = fn(conn)
                conn.execute("COMMIT")
                if committed is not None:
                    committed(out)
                return out
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"hint store {self.path}: SQLite error: {exc}") from exc
                raise

    # -- writing --------------------------------------------------------------------------

    def add(self, target: str, key: bytes, record: bytes, created_ms: int) -> int:
        """Store one hint durably; its id. Raises HintStoreFull at a bound."""
        result = self.add_many([(target, key, record, created_ms)])[0]
        if result is None:
            raise HintStoreFull(target, self._full_reason(target))
        return result

    def _full_reason(self, target: str) -> str:
        if self._total >= self.max_total:
            return f"the store holds {self._total} hints (limit {self.max_total})"
        return f"{self._counts.get(target, 0)} hints held for it (limit {self.max_per_target})"

    def add_many(self, hints: Iterable[tuple[str, bytes, bytes, int]]) -> list[int | None]:
        """Store hints (target, key, record, created_ms) in one transaction (one fsync).

        Per item, the new id, or None if a bound refused it (the others are stored).
        """
        items = list(hints)
        for item in items:
            if not isinstance(item, tuple) or len(item) != 4:
                raise ValueError("each hint is a (target, key, record, created_ms) tuple")
            _check(*item)

        def write(conn: sqlite3.Connection) -> tuple[list[int | None], dict[str, int]]:
            out: list[int | None] = []
            added: dict[str, int] = {}
            total = self._total
            for target, key, record, created in items:
                held = self._counts.get(target, 0) + added.get(target, 0)
                if total >= self.max_total or held >= self.max_per_target:
                    out.append(None)
                    continue
                cur = conn.execute(
                    "INSERT INTO hints (target, key, record, created_ms, crc) VALUES (?,?,?,?,?)",
                    (target, key, record, created, hint_crc(target, key, record, created)),
                )
                out.append(cur.lastrowid)
                added[target] = added.get(target, 0) + 1
                total += 1
            return out, added

        if not items:
            return []
        def count(result: tuple[list[int | None], dict[str, int]]) -> None:
            for target, n in result[1].items():  # only after the commit succeeded
                self._counts[target] = self._counts.get(target, 0) + n
                self._total += n

        return self._run(write, count)[0]

    def delete(self, ids: Iterable[int]) -> int:
        """Remove delivered hints (after the owner acknowledged them); how many were removed."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        return len(self._run(lambda conn: self._delete(conn, id_list), self._forget))

    @staticmethod
    def _delete(conn: sqlite3.Connection, ids: list[int]) -> list[str]:
        removed: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"DELETE FROM hints WHERE id IN ({marks}) RETURNING target", chunk)
            removed.extend(r[0] for r in rows.fetchall())
        return removed

    def _forget(self, targets: list[str]) -> None:
        """Count removed hints out (called under the lock, after the commit)."""
        for target in targets:
            left = self._counts.get(target, 0) - 1
            if left > 0:
                self._counts[target] = left
            else:
                self._counts.pop(target, None)
            self._total -= 1

    # -- reading --------------------------------------------------------------------------

    def pending(self, target: str, limit: int = 100, *, after_id: int = 0) -> list[Hint]:
        """Up to `limit` hints for `target`, oldest first (ids > after_id), all verified.

        A hint failing its checksum is deleted and kept for `take_dropped()` (reason
        "corrupt"): it is never delivered.
        """
        if limit <= 0:
            return []
        with self._lock:
            if self._closed:
                raise StorageError(f"hint store {self.path}: closed")
            try:
                rows = self._conn.execute(
                    f"SELECT {_COLS} FROM hints WHERE target = ? AND id > ? ORDER BY id LIMIT ?",
                    (target, after_id, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"hint store {self.path}: SQLite error: {exc}") from exc
        good: list[Hint] = []
        bad: list[DroppedHint] = []
        for row in rows:
            hint, dropped = self._verify(row)
            if hint is not None:
                good.append(hint)
            else:
                bad.append(dropped)
        if bad:
            def keep(removed: list[str]) -> None:
                self._forget(removed)
                self._dropped.extend(bad)

            self._run(lambda conn: self._delete(conn, [d.id for d in bad]), keep)
        return good

    @staticmethod
    def _verify(row: tuple) -> tuple[Hint | None, DroppedHint | None]:
        hid, target, key, record, created, crc = row
        ok = (
            type(target) is str
            and type(key) is bytes
            and type(record) is bytes
            and type(created) is int
            and hint_crc(target, key, record, created) == crc
        )
        if ok:
            return Hint(hid, target, key, record, created), None
        return None, DroppedHint(
            hid,
            str(target),
            key if type(key) is bytes else b"",
            created if type(created) is int else 0,
            REASON_CORRUPT,
        )

    def take_dropped(self) -> list[DroppedHint]:
        """Corrupt hints found (and deleted) by `pending` since the last call, to log/count."""
        with self._lock:
            out, self._dropped = self._dropped, []
        return out

    def count_by_target(self) -> dict[str, int]:
        """Hints held per target (kept in memory: O(targets))."""
        with self._lock:
            return dict(self._counts)

    def count(self) -> int:
        return self._total

    # -- expiry ---------------------------------------------------------------------------

    def expire(
        self,
        now_ms: int,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        live_members: Collection[str] | None = None,
    ) -> list[DroppedHint]:
        """Drop hints older than `max_age_ms`, and, if `live_members` is given, hints for
        nodes not in it (they left the cluster). Returns them, to log and count; they are
        never retried."""
        cutoff = now_ms - max_age_ms
        members = None if live_members is None else set(live_members)

        def drop(conn: sqlite3.Connection) -> list[DroppedHint]:
            out: list[DroppedHint] = []
            gone = [] if members is None else [t for t in self._counts if t not in members]
            for target in gone:
                rows = conn.execute(
                    "DELETE FROM hints WHERE target = ? RETURNING id, target, key, created_ms",
                    (target,),
                ).fetchall()
                out.extend(DroppedHint(i, t, k, c, REASON_NOT_MEMBER) for i, t, k, c in rows)
            rows = conn.execute(
                "DELETE FROM hints WHERE created_ms < ? RETURNING id, target, key, created_ms",
                (cutoff,),
            ).fetchall()
            out.extend(DroppedHint(i, t, k, c, REASON_EXPIRED) for i, t, k, c in rows)
            return out

        dropped = self._run(drop, lambda out: self._forget([d.target for d in out]))
        dropped.sort(key=lambda d: d.id)
        return dropped

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
