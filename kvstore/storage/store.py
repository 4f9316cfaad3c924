"""`AsyncStore`: an engine behind asyncio, with group commit.

Writes: every `update` / `update_many` puts one item on a queue and awaits a future. ONE
writer thread takes everything pending, runs it as a single `engine.apply()` (one
transaction, one fsync), then resolves the futures with one `call_soon_threadsafe` per
event loop per batch. While a batch commits, the next one fills, so under concurrency the
fsync cost is shared by every update that arrived meanwhile; at concurrency 1 an update
costs one commit. Updates are applied in arrival order (same key included), and a future
resolves only after its batch is durable.

Reads (`get`, `scan_chunk`, `count`) run on a small dedicated thread pool, so disk reads
never block the event loop. `scan` is a plain iterator for callers that run it off-loop.

`inline=True` uses no threads at all: every call runs the engine synchronously inside the
coroutine, so a simulation on a virtual-time loop with a MemoryEngine stays deterministic.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

from kvstore.storage.engine import Engine, Mutation, StorageError
from kvstore.storage.memory import StepResult

_STOP = object()

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


class AsyncStore:
    """The storage API services use from asyncio (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        inline: bool = False,
        read_threads: int = 4,
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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        if not inline:
            self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="kvstore-read")
            self._writer = threading.Thread(
                target=self._write_loop, name="kvstore-writer", daemon=True
            )
            self._writer.start()

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
            result = self._apply([(key, mutation)])[0]
            if isinstance(result, BaseException):
                raise result
            return result
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(([(key, mutation)], fut, loop, True))
        return await fut

    async def update_many(self, items: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        """Several steps in one go (same batch); per step the record or its exception."""
        self._check_open()
        if not items:
            return []
        if self.inline:
            return self._apply(list(items))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((list(items), fut, loop, False))
        return await fut

    def _apply(self, steps: list[tuple[bytes, Mutation]]) -> list[StepResult]:
        results = self.engine.apply(steps)
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
                batch = [item]
                while len(batch) < self._max_batch:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
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
        self._check_open()
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    async def get(self, key: bytes) -> bytes | None:
        """The record for `key` or None; CorruptRecordError if it fails its checksum."""
        return await self._off_loop(self.engine.get, key)

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
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
        self.engine.close()
