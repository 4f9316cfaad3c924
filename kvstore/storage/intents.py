"""The durable intent table of a replica (transactions, issue 12; docs/transactions.md).

At most one intent per key: the transaction id, whether it writes (and the provisional
value) or only checks the key, its deadline and coordinator. Kept in memory (every lookup
is a dict read: plain writes consult it on each mint) and, with a path, in one SQLite file
in the data directory (`intents.db`, WAL, synchronous=FULL): an intent a replica
acknowledged survives its crash, because the commit may already count on it.

Bound: `max_intents` (10,000); a prepare beyond it is refused (the transaction aborts).
Thread-safe: the in-memory table is read from the storage writer thread (the mint check)
and written from the event loop; dict operations are atomic, SQLite sits behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from kvstore._proto import txn_pb2 as tpb

__all__ = ["MAX_INTENTS", "IntentStore", "IntentStoreFull"]

MAX_INTENTS = 10_000


class IntentStoreFull(Exception):
    pass


class IntentStore:
    def __init__(self, path: Path | None, *, max_intents: int = MAX_INTENTS) -> None:
        self.path = path
        self.max_intents = max_intents
        self.table: dict[bytes, tpb.TxnIntent] = {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if path is not None:
            self._conn = sqlite3.connect(str(path), check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS intents (key BLOB PRIMARY KEY, "
                               "intent BLOB NOT NULL)")
            for key, blob in self._conn.execute("SELECT key, intent FROM intents"):
                self.table[bytes(key)] = tpb.TxnIntent.FromString(blob)

    def get(self, key: bytes) -> tpb.TxnIntent | None:
        return self.table.get(key)

    def txn_of(self, key: bytes) -> str | None:
        intent = self.table.get(key)
        return None if intent is None else intent.txn_id

    def record_txn_of(self, key: bytes) -> str | None:
        """The transaction of the key's intent if a Raft record decides it (not 3PC): what a
        replica reports in a plain read's reply, so the read's coordinator resolves it."""
        intent = self.table.get(key)
        return None if intent is None or intent.protocol == "3pc" else intent.txn_id

    def place(self, key: bytes, intent: tpb.TxnIntent) -> None:
        """In memory (call inside the key's storage mutation); `persist` makes it durable."""
        if key not in self.table and len(self.table) >= self.max_intents:
            raise IntentStoreFull(f"this replica holds {self.max_intents} intents already")
        self.table[key] = intent

    def persist(self, key: bytes) -> None:
        if self._conn is None:
            return
        intent = self.table.get(key)
        with self._lock:
            if intent is None:
                self._conn.execute("DELETE FROM intents WHERE key = ?", (key,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO intents VALUES (?, ?)",
                                   (key, intent.SerializeToString()))

    def remove(self, key: bytes, txn_id: str) -> bool:
        """Drop the intent of `txn_id` on `key` (in memory; then `persist`)."""
        intent = self.table.get(key)
        if intent is None or intent.txn_id != txn_id:
            return False
        del self.table[key]
        return True

    def items(self) -> list[tuple[bytes, tpb.TxnIntent]]:
        return sorted(self.table.items())

    def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None
