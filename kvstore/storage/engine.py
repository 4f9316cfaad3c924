"""The storage engine contract, shared by the durable engine and the in-memory engine.

An engine maps a key (bytes) to one record (bytes: an encoded VersionSet, opaque here),
ordered by (token_of(key), key) so that token ranges are range scans. Every record is
stored with a checksum; a record whose checksum does not match raises CorruptRecordError
and is never returned as data.

Engines are synchronous and single-writer; `AsyncStore` (store.py) puts them behind
asyncio without blocking the event loop, and batches writes (group commit).

Details both engines (memory.py, sqlite.py) implement, beyond the signatures below:

* A mutation may return `DELETE` (memory.py; compared by identity) to remove the key, and
  the mutation `DISCARD` removes a key without reading it. A mutation on a record that
  fails its checksum fails with CorruptRecordError, unless it is wrapped in
  `OverwriteCorrupt(...)`, which treats the damaged record as absent (repair writes).
* `scan` ranges follow `Ring.ranges()`: when start_token >= end_token the range wraps,
  (start, TOKEN_MAX] then [TOKEN_MIN, end] in that order (start == end: the whole ring).
  `after_key` is the last (token, key) already seen; the scan resumes strictly after it.
* `apply` raises StorageError (and stores nothing of the batch) when the engine itself
  fails (disk full, I/O error, damaged file); steps' own exceptions are only returned.
* `fences` (a `FenceTable`, storage/fences.py): the highest fencing token per lock.
  Mutations stage raises in it; `apply` stores the staged rows in the batch's
  transaction and commits them with it (or aborts them when the batch fails).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from kvstore.storage.fences import FenceTable

# A read-modify-write step: given the current record (or None), return the new record
# (or None to leave the key unchanged). It runs inside the engine's write transaction, so
# it must be pure and fast (it is the versions merge).
Mutation = Callable[[bytes | None], bytes | None]


class StorageError(Exception):
    """Base class for storage failures."""


class CorruptRecordError(StorageError):
    """A stored record failed its checksum (or could not be read): it is not served."""

    def __init__(self, key: bytes, detail: str) -> None:
        super().__init__(f"corrupted record for key {key!r}: {detail}")
        self.key = key
        self.detail = detail


class Engine(Protocol):
    fences: FenceTable

    def get(self, key: bytes) -> bytes | None:
        """The record for `key`, or None. Raises CorruptRecordError on a checksum mismatch."""
        ...

    def apply(self, mutations: list[tuple[bytes, Mutation]]) -> list[bytes | Exception | None]:
        """Apply read-modify-write steps in order, in one durable transaction.

        Returns, per step, the record now stored, or the exception that step raised (a
        failing step does not abort the others). Durable on return per the sync policy.
        """
        ...

    def scan(
        self, start_token: int, end_token: int, *, after_key: tuple[int, bytes] | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """(token, key, record) with start_token < token <= end_token, in (token, key) order.

        Records that fail their checksum raise CorruptRecordError when reached.
        """
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...
