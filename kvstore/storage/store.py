"""`AsyncStore`: an engine behind asyncio, with group commit.

Writes: every `update` / `update_many` puts one item on a queue and awaits a future. ONE
writer thread takes everything pending, runs it as a single `engine.apply()` (one
transaction, one fsync), then resolves the futures with one `call_soon_threadsafe` per
event loop per batch. While a batch commits, the next one fills, so under concurrency the
fsync cost is shared by every update that arrived meanwhile; at concurrency 1 an update
costs one commit. Updates are applied in arrival order (same key included), and a future
resolves only after its batch is durable.

Reads (`get`, `scan_chunk`, `count`) run on a small dedicated pool of reader threads, so
disk reads never block the event loop. They are batched the same way: a reader takes every
pending read, serves all the gets with one `engine.get_many()` (one SQL query per 512 keys)
and settles them with one `call_soon_threadsafe`. `scan` is a plain iterator for callers
that run it off-loop.

`inline=True` uses no threads at all: every call runs the engine synchronously inside the
coroutine, so a simulation on a virtual-time loop with a MemoryEngine stays deterministic.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

from kvstore.core.histogram import LatencyHistogram
from kvstore.storage.engine import Engine, Mutation, StorageError
from kvstore.storage.fences import FenceTable
from kvstore.storage.memory import StepResult

_STOP = object()
_GET, _CALL = 0, 1  # kinds of queued reads

# One queued write: (steps, future, loop, single). `single` futures get the one step's
# record (or its exception raised); the others get the list of per-step results.
_Item = tuple[list[tuple[bytes, Mutation]], asyncio.Future, asyncio.AbstractEventLoop, bool]


def _resolve(entries: list[tuple[asyncio.Future, bool, Any, BaseException | None]]) -> None:
    """Runs on the event loop: settle every future of one batch."""
    for fut, single, value, error in entries:
        if fut.done():  # the caller was cancelled; the write still happened
            continue
        if error is not None:
            fut.set_exception(error)
        elif single:
            if isinstance(value[0], BaseException):
                fut.set_exception(value[0])
            else:
                fut.set_result(value[0])
        else:
            fut.set_result(value)


def _resolve_reads(entries: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Runs on the event loop: settle every read of one batch."""
    for fut, value, error in entries:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def _drain(q: queue.Queue, first: Any, limit: int) -> tuple[list, bool]:
    """`first` plus everything already queued (up to `limit`); whether _STOP was seen."""
    batch = [first]
    while len(batch) < limit:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is _STOP:
            return batch, True
        batch.append(item)
    return batch, False


class AsyncStore:
    """The storage API services use from asyncio (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        inline: bool = False,
        read_threads: int = 2,
        max_batch: int = 8192,
    ) -> None:
        self.engine = engine
        self.inline = inline
        self._max_batch = max_batch
        self._closed = False  # refuse new calls
        self._shut_down = False  # close() ran
        # Counters for benchmarks and tests: engine.apply calls and the steps they carried.
        self.batches = 0
        self.steps = 0
        self.apply_seconds = 0.0  # time inside engine.apply (the commit, with its fsync)
        # An update as its caller waits for it: queueing, its batch, the commit (/metrics).
        self.write_latency = LatencyHistogram()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._rqueue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers: list[threading.Thread] = []
        self._get_many = getattr(engine, "get_many", None)
        if not inline:
            self._writer = threading.Thread(
                target=self._write_loop, name="kvstore-writer", daemon=True
            )
            self._writer.start()
            self._readers = [
                threading.Thread(target=self._read_loop, name=f"kvstore-read-{i}", daemon=True)
                for i in range(max(1, read_threads))
            ]
            for reader in self._readers:
                reader.start()

    @property
    def fences(self) -> FenceTable:
        """The engine's fence table (an engine without one gets a private in-memory one).
        Mutations may use it: they run inside the engine's transaction."""
        table = getattr(self.engine, "fences", None)
        if table is None:
            table = self.engine.fences = FenceTable()
        return table

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    # -- writes --------------------------------------------------------------------------

    async def update(self, key: bytes, mutation: Mutation) -> bytes | None:
        """Read-modify-write `key`; the record now stored. Raises the mutation's error."""
        self._check_open()
        if self.inline:
            started = time.perf_counter()
            result = self._apply([(key, mutation)])[0]
            self.write_latency.observe(time.perf_counter() - started)
            if isinstance(result, BaseException):
                raise result
            return result
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        started = time.perf_counter()
        self._queue.put(([(key, mutation)], fut, loop, True))
        try:
            return await fut
        finally:
            self.write_latency.observe(time.perf_counter() - started)

    async def update_many(self, items: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        """Several steps in one go (same batch); per step the record or its exception."""
        self._check_open()
        if not items:
            return []
        if self.inline:
            started = time.perf_counter()
            results = self._apply(list(items))
            self.write_latency.observe(time.perf_counter() - started)
            return results
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        started = time.perf_counter()
        self._queue.put((list(items), fut, loop, False))
        try:
            return await fut
        finally:
            self.write_latency.observe(time.perf_counter() - started)

    def _apply(self, steps: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        started = time.perf_counter()
        results = self.engine.apply(steps)
        self.apply_seconds += time.perf_counter() - started
        self.batches += 1
        self.steps += len(steps)
        if len(results) != len(steps):
            raise StorageError(f"engine returned {len(results)} results for {len(steps)} steps")
        return results

    def _write_loop(self) -> None:
        q = self._queue
        stop = False
        batch: list[_Item] = []
        try:
            while not stop:
                item = q.get()
                if item is _STOP:
                    break
                batch, stop = _drain(q, item, self._max_batch)
                self._commit(batch)
                batch = []
        except BaseException as exc:  # never leave callers waiting on a dead writer
            self._closed = True
            self._settle(batch, None, StorageError(f"the storage writer thread died: {exc!r}"))
        finally:
            # Anything queued after close() (or after a crash): refuse it, don't hang it.
            leftovers: list[_Item] = []
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    leftovers.append(item)
            if leftovers:
                self._settle(leftovers, None, StorageError("the store is closed"))

    def _commit(self, batch: list[_Item]) -> None:
        steps: list[tuple[bytes, Mutation]] = []
        for item in batch:
            steps.extend(item[0])
        try:
            results: list[StepResult] | None = self._apply(steps)
            error: BaseException | None = None
        except Exception as exc:  # the whole batch failed (disk full, I/O error, closed)
            results, error = None, exc
        self._settle(batch, results, error)

    @staticmethod
    def _settle(
        batch: list[_Item], results: list[StepResult] | None, error: BaseException | None
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        i = 0
        for steps, fut, loop, single in batch:
            n = len(steps)
            value = None if results is None else results[i : i + n]
            i += n
            by_loop.setdefault(loop, []).append((fut, single, value, error))
        for loop, entries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, entries)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    # -- reads ---------------------------------------------------------------------------

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on a reader thread (inline: right here)."""
        self._check_open()
        if self.inline:
            return fn(*args)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._rqueue.put((_CALL, (fn, args), fut, loop))
        return await fut

    def _read_loop(self) -> None:
        """Take every pending read; all the gets among them become one engine call."""
        q = self._rqueue
        stop = False
        while not stop:
            item = q.get()
            if item is _STOP:
                break
            batch, stop = _drain(q, item, self._max_batch)
            try:
                self._serve_reads(batch)
            except BaseException as exc:  # never leave a reader waiting
                err = StorageError(f"a storage reader thread failed: {exc!r}")
                self._settle_reads([(fut, loop, None, err) for _, _, fut, loop in batch])

    def _serve_reads(self, batch: list[tuple[int, Any, asyncio.Future, Any]]) -> None:
        out: list[tuple[asyncio.Future, Any, Any, BaseException | None]] = []
        gets = [item for item in batch if item[0] == _GET]
        if gets:
            values = self._read_keys([item[1] for item in gets])
            for (_, _, fut, loop), value in zip(gets, values, strict=True):
                if isinstance(value, BaseException):
                    out.append((fut, loop, None, value))
                else:
                    out.append((fut, loop, value, None))
        for kind, payload, fut, loop in batch:
            if kind != _CALL:
                continue
            fn, args = payload
            try:
                out.append((fut, loop, fn(*args), None))
            except Exception as exc:
                out.append((fut, loop, None, exc))
        self._settle_reads(out)

    def _read_keys(self, keys: list[bytes]) -> list[bytes | Exception | None]:
        if self._get_many is not None and len(keys) > 1:
            try:
                return self._get_many(keys)
            except Exception:
                pass  # read them one by one so each error lands on its own key
        values: list[bytes | Exception | None] = []
        for key in keys:
            try:
                values.append(self.engine.get(key))
            except Exception as exc:
                values.append(exc)
        return values

    @staticmethod
    def _settle_reads(out: list[tuple[asyncio.Future, Any, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for fut, loop, value, error in out:
            by_loop.setdefault(loop, []).append((fut, value, error))
        for loop, entries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_reads, entries)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    async def get(self, key: bytes) -> bytes | None:
        """The record for `key` or None; CorruptRecordError if it fails its checksum.

        Concurrent gets are served together: a reader thread takes every pending get and
        reads them with one `engine.get_many` call, then settles them with one callback."""
        self._check_open()
        if self.inline:
            return self.engine.get(key)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._rqueue.put((_GET, key, fut, loop))
        return await fut

    def scan(
        self, start_token: int, end_token: int, *, after_key: tuple[int, bytes] | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """The engine's scan iterator (blocking: run it off the event loop)."""
        self._check_open()
        return self.engine.scan(start_token, end_token, after_key=after_key)

    async def scan_chunk(
        self,
        start_token: int,
        end_token: int,
        after_key: tuple[int, bytes] | None,
        limit: int,
    ) -> list[tuple[int, bytes, bytes]]:
        """Up to `limit` records of the range after `after_key`, read off the loop.

        Resume with the last returned (token, key); fewer than `limit` means the end.
        """
        return await self._off_loop(self._scan_page, start_token, end_token, after_key, limit)

    def _scan_page(
        self, start_token: int, end_token: int, after_key: tuple[int, bytes] | None, limit: int
    ) -> list[tuple[int, bytes, bytes]]:
        page = getattr(self.engine, "scan_page", None)
        if page is not None:
            return page(start_token, end_token, after_key, limit)
        return list(islice(self.engine.scan(start_token, end_token, after_key=after_key), limit))

    async def count(self) -> int:
        return await self._off_loop(self.engine.count)

    async def close(self) -> None:
        """Finish every queued update, stop the threads, close the engine. Idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        for _ in self._readers:
            self._rqueue.put(_STOP)
        for reader in self._readers:
            await asyncio.to_thread(reader.join)
        self.engine.close()
