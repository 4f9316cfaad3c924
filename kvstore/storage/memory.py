"""The in-memory reference engine, and the scan-range rules both engines share.

`MemoryEngine` is what tests and deterministic simulations use: the same contract as the
durable engine (records ordered by (token, key), each kept with a CRC32 over key+record,
corruption raising `CorruptRecordError`), but nothing touches the disk. It is guarded by a
lock so `AsyncStore` may read it from threads while its writer thread applies batches.

Two extensions of the `Mutation` contract are defined here and honoured by both engines:

* a mutation may return `DELETE` to remove the key after looking at it (tombstone
  collection: "drop it if it is still the tombstone I collected");
* the mutation `DISCARD` removes the key without reading it, so a record that fails its
  checksum can be cleared and rewritten by repair (any other mutation on a corrupt record
  fails that step with `CorruptRecordError`, it is never merged against garbage).

An engine that does not know them stays safe: `DISCARD` returns None ("leave unchanged").
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from typing import Final

from sortedcontainers import SortedDict

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of
from kvstore.storage.engine import CorruptRecordError, Mutation, StorageError
from kvstore.storage.fences import FenceTable

# How many records a scan takes per lock hold / per SQL query.
SCAN_PAGE = 256


class _Deleted(bytes):
    """The type of the one `DELETE` sentinel (a bytes, so it fits Mutation's type)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final[bytes] = _Deleted()
"""Return this (compared by identity) from a mutation to remove the key."""


class _Discard:
    """The `DISCARD` mutation: engines recognise it by identity and delete unread."""

    __slots__ = ()

    def __call__(self, current: bytes | None) -> bytes | None:
        return None

    def __repr__(self) -> str:
        return "DISCARD"


DISCARD: Final[Mutation] = _Discard()
"""A mutation that removes the key without reading (or verifying) its record."""


class OverwriteCorrupt:
    """Wraps a mutation so that a record failing its checksum is treated as absent.

    For writes that carry authoritative data from elsewhere (read repair, anti-entropy,
    hinted handoff): `store.update(key, OverwriteCorrupt(merge))` replaces a damaged record
    with what the merge makes of None, where a plain mutation fails with
    CorruptRecordError. An engine that does not know the wrapper just calls it (safe: a
    damaged record then fails as usual). If the mutation returns None the damaged record
    stays and the step fails with CorruptRecordError.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Mutation) -> None:
        self.inner = inner

    def __call__(self, current: bytes | None) -> bytes | None:
        return self.inner(current)


def record_crc(key: bytes, record: bytes) -> int:
    """CRC32 over key+record (computed without concatenating)."""
    return zlib.crc32(record, zlib.crc32(key))


def check_result(result: object) -> None:
    """Reject what a mutation may not return, so a bug fails its step, not the batch."""
    if result is not None and type(result) is not bytes and result is not DELETE:
        kind = type(result).__name__
        raise TypeError(f"a mutation must return bytes, None or DELETE, not {kind}")


def check_key(key: object) -> None:
    if type(key) is not bytes:
        raise TypeError(f"keys are bytes, not {type(key).__name__}")


# Per step of `apply`: the record now stored, None, or the exception the step raised.
StepResult = bytes | Exception | None

# A lower bound of a scan segment: None = from TOKEN_MIN; (t, None) = after every key of
# token t; (t, k) = strictly after (t, k) in (token, key) order.
Lower = tuple[int, bytes | None] | None


def scan_segments(
    start_token: int, end_token: int, after_key: tuple[int, bytes] | None
) -> list[tuple[Lower, int]]:
    """The (lower bound, inclusive upper token) pieces a range scan reads, in order.

    start < end: the one range (start, end]. start >= end: the range wraps around the ring,
    (start, TOKEN_MAX] then [TOKEN_MIN, end]; start == end is the whole ring (what a
    one-token ring's `Ring.ranges()` yields). `after_key` resumes strictly after that
    (token, key); a resume point outside the range is ignored (scan from the start), except
    in a non-wrapping range where one beyond `end` leaves nothing.
    """
    if start_token < end_token:
        if end_token < TOKEN_MIN or start_token >= TOKEN_MAX:
            return []
        lower: Lower = None if start_token < TOKEN_MIN else (start_token, None)
        if after_key is not None and after_key[0] > start_token:
            if after_key[0] > min(end_token, TOKEN_MAX):
                return []
            if after_key[0] >= TOKEN_MIN:
                lower = after_key
        return [(lower, min(end_token, TOKEN_MAX))]
    segments: list[tuple[Lower, int]] = []
    if start_token < TOKEN_MAX:
        segments.append((None if start_token < TOKEN_MIN else (start_token, None), TOKEN_MAX))
    if end_token >= TOKEN_MIN:
        segments.append((None, min(end_token, TOKEN_MAX)))
    if after_key is not None and segments:
        token = after_key[0]
        if start_token < token <= TOKEN_MAX and token >= TOKEN_MIN:
            segments[0] = (after_key, TOKEN_MAX)
        elif TOKEN_MIN <= token <= end_token:
            segments = [(after_key, min(end_token, TOKEN_MAX))]
    return segments


class MemoryEngine:
    """Records in a SortedDict keyed by (token, key), each with its checksum."""

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()  # (token, key) -> (record, crc)
        self._lock = threading.Lock()
        self._closed = False
        self.fences = FenceTable()  # committed with each apply, like the records

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the memory engine is closed")

    def snapshot(self) -> MemoryEngine:
        """An independent copy of every record, as a backup of a disk would be."""
        copy = MemoryEngine()
        with self._lock:
            copy._data = self._data.copy()
            copy.fences = FenceTable(self.fences.snapshot())
        return copy

    @staticmethod
    def _verified(key: bytes, entry: tuple[bytes, int]) -> bytes:
        record, crc = entry
        if record_crc(key, record) != crc:
            raise CorruptRecordError(key, f"checksum mismatch (stored {crc:#010x})")
        return record

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._lock:
            self._check_open()
            entry = self._data.get((token_of(key), key))
        return None if entry is None else self._verified(key, entry)

    def get_many(self, keys: list[bytes]) -> list[bytes | Exception | None]:
        """Per key its record, None, or the error a `get` of it would raise (one lock hold)."""
        entries: list[object] = []
        with self._lock:
            self._check_open()
            for key in keys:
                if type(key) is not bytes:
                    entries.append(TypeError(f"keys are bytes, not {type(key).__name__}"))
                else:
                    entries.append(self._data.get((token_of(key), key)))
        out: list[bytes | Exception | None] = []
        for key, entry in zip(keys, entries, strict=True):
            if entry is None or isinstance(entry, Exception):
                out.append(entry)  # type: ignore[arg-type]
                continue
            try:
                out.append(self._verified(key, entry))  # type: ignore[arg-type]
            except CorruptRecordError as exc:
                out.append(exc)
        return out

    def apply(self, mutations: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        results: list[StepResult] = []
        data = self._data
        with self._lock:
            try:
                self._check_open()
            except StorageError:
                self.fences.abort()
                raise
            for key, mutation in mutations:
                try:
                    check_key(key)
                    pos = (token_of(key), key)
                    if mutation is DISCARD:
                        data.pop(pos, None)
                        results.append(None)
                        continue
                    entry = data.get(pos)
                    try:
                        current = None if entry is None else self._verified(key, entry)
                    except CorruptRecordError:
                        if not isinstance(mutation, OverwriteCorrupt):
                            raise
                        new = mutation(None)  # the damaged record counts as absent
                        check_result(new)
                        if new is None:
                            raise  # left unchanged: still damaged
                        current = None
                    else:
                        new = mutation(current)
                        check_result(new)
                    if new is None:
                        results.append(current)
                    elif new is DELETE:
                        data.pop(pos, None)
                        results.append(None)
                    else:
                        data[pos] = (new, record_crc(key, new))
                        results.append(new)
                except Exception as exc:
                    results.append(exc)
            self.fences.commit()
        return results

    def _page(
        self, start_token: int, end_token: int, after_key: tuple[int, bytes] | None, limit: int
    ) -> list[tuple[int, bytes, tuple[bytes, int]]]:
        """Up to `limit` unverified entries of the range after `after_key` (one lock hold)."""
        out: list[tuple[int, bytes, tuple[bytes, int]]] = []
        if limit <= 0:
            return out
        data = self._data
        with self._lock:
            self._check_open()
            for lower, upper in scan_segments(start_token, end_token, after_key):
                if lower is None:
                    minimum, inclusive = (TOKEN_MIN, b""), True
                elif lower[1] is None:
                    minimum, inclusive = (lower[0] + 1, b""), True
                else:
                    minimum, inclusive = lower, False
                for pos in data.irange(minimum, (upper + 1, b""), inclusive=(inclusive, False)):
                    out.append((pos[0], pos[1], data[pos]))
                    if len(out) >= limit:
                        return out
        return out

    def scan_page(
        self, start_token: int, end_token: int, after_key: tuple[int, bytes] | None, limit: int
    ) -> list[tuple[int, bytes, bytes]]:
        """Up to `limit` records of the range after `after_key`, all verified."""
        page = self._page(start_token, end_token, after_key, limit)
        return [(t, k, self._verified(k, entry)) for t, k, entry in page]

    def scan(
        self, start_token: int, end_token: int, *, after_key: tuple[int, bytes] | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """Page through the range (each page read under the lock), verifying as it yields."""
        while True:
            page = self._page(start_token, end_token, after_key, SCAN_PAGE)
            for token, key, entry in page:
                yield token, key, self._verified(key, entry)
            if len(page) < SCAN_PAGE:
                return
            after_key = (page[-1][0], page[-1][1])

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._data)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def reopen(self) -> MemoryEngine:
        """A new open engine over the same records: what reopening a file is to SqliteEngine
        (simulations restart a node on the "disk" its closed engine left behind)."""
        with self._lock:
            other = MemoryEngine()
            other._data = self._data
            other.fences = FenceTable(self.fences.snapshot())
            return other

    def corrupt_for_test(self, key: bytes) -> None:
        """Flip one byte of the stored record and keep the old checksum (tests only)."""
        with self._lock:
            pos = (token_of(key), key)
            record, crc = self._data[pos]
            damaged = record[:-1] + bytes([record[-1] ^ 0xFF]) if record else b"\xff"
            self._data[pos] = (damaged, crc)
