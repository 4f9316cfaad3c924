"""AsyncStore: read-modify-write under concurrency, group commit, threads, inline mode."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of
from kvstore.storage import (
    AsyncStore,
    CorruptRecordError,
    MemoryEngine,
    Mutation,
    SqliteEngine,
    StorageError,
)


def increment(current: bytes | None) -> bytes:
    return str(int(current or b"0") + 1).encode()


class Recording:
    """Wraps a real engine and records every apply call (its size and thread)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.apply_sizes: list[int] = []
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_next: Exception | None = None
        self.get_many_sizes: list[int] = []
        self.read_gate: threading.Event | None = None

    def get(self, key: bytes) -> bytes | None:
        self.threads.add("get:" + threading.current_thread().name)
        if self.read_gate is not None:
            self.read_gate.wait(10)
        return self.inner.get(key)

    def apply(self, mutations: list[tuple[bytes, Mutation]]):
        self.threads.add("apply:" + threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.apply_sizes.append(len(mutations))
        return self.inner.apply(mutations)

    def get_many(self, keys: list[bytes]):
        self.threads.add("get_many:" + threading.current_thread().name)
        if self.read_gate is not None:
            self.read_gate.wait(10)
        self.get_many_sizes.append(len(keys))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return self.inner.get_many(keys)

    def scan(self, start_token: int, end_token: int, *, after_key=None):
        return self.inner.scan(start_token, end_token, after_key=after_key)

    def count(self) -> int:
        return self.inner.count()

    def close(self) -> None:
        self.inner.close()


ENGINES: dict[str, Callable[[Path], object]] = {
    "memory": lambda _p: MemoryEngine(),
    "sqlite-full": lambda p: SqliteEngine(p / "data.db"),
    "sqlite-normal": lambda p: SqliteEngine(p / "data.db", sync="normal"),
}


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_200_concurrent_increments_all_land(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = Recording(ENGINES[kind](tmp_path))
        store = AsyncStore(engine)
        results = await asyncio.gather(*[store.update(b"counter", increment) for _ in range(200)])
        assert sorted(int(r) for r in results) == list(range(1, 201))
        assert await store.get(b"counter") == b"200"
        print(f"\n{kind}: 200 updates in {len(engine.apply_sizes)} apply calls")
        assert len(engine.apply_sizes) <= 20  # batched: far fewer commits than updates
        await store.close()

    asyncio.run(main())


def test_inline_increments_and_no_threads() -> None:
    async def main() -> None:
        before = threading.active_count()
        engine = Recording(MemoryEngine())
        store = AsyncStore(engine, inline=True)
        results = await asyncio.gather(*[store.update(b"counter", increment) for _ in range(200)])
        assert [int(r) for r in results] == list(range(1, 201))  # in order: synchronous
        assert await store.get(b"counter") == b"200"
        assert await store.count() == 1
        assert threading.active_count() == before
        assert engine.threads == {"apply:MainThread", "get:MainThread"}
        await store.close()

    asyncio.run(main())


def test_group_commit_takes_everything_pending(tmp_path: Path) -> None:
    """While one batch commits, 100 updates queue up; the next apply carries all 100."""

    async def main() -> None:
        engine = Recording(SqliteEngine(tmp_path / "data.db"))
        engine.gate = threading.Event()
        store = AsyncStore(engine)
        first = asyncio.ensure_future(store.update(b"k0", increment))
        await asyncio.to_thread(engine.entered.wait, 10)  # the writer is inside apply #1
        keys = [b"k%d" % (i % 7) for i in range(100)]
        rest = [asyncio.ensure_future(store.update(k, increment)) for k in keys]
        while store._queue.qsize() < 100:
            await asyncio.sleep(0)
        engine.gate.set()
        await asyncio.gather(first, *rest)
        assert engine.apply_sizes == [1, 100]
        assert store.batches == 2 and store.steps == 101
        assert {t.split(":")[1] for t in engine.threads if t.startswith("apply")} == {
            "kvstore-writer"
        }
        await store.close()

    asyncio.run(main())


def test_same_key_updates_apply_in_arrival_order(tmp_path: Path) -> None:
    async def main() -> None:
        store = AsyncStore(SqliteEngine(tmp_path / "data.db", sync="off"))
        letters = [bytes([97 + i % 26]) for i in range(300)]

        def appender(letter: bytes) -> Mutation:
            return lambda cur: (cur or b"") + letter

        await asyncio.gather(*[store.update(b"log", appender(x)) for x in letters])
        assert await store.get(b"log") == b"".join(letters)
        await store.close()

    asyncio.run(main())


def test_errors_reach_the_right_callers() -> None:
    async def main() -> None:
        engine = Recording(MemoryEngine())
        store = AsyncStore(engine)

        def refuse(_cur: bytes | None) -> bytes:
            raise ValueError("stale context")

        ok, bad = await asyncio.gather(
            store.update(b"a", lambda c: b"1"),
            store.update(b"b", refuse),
            return_exceptions=True,
        )
        assert ok == b"1" and isinstance(bad, ValueError)
        many = await store.update_many([(b"a", increment), (b"c", refuse), (b"a", increment)])
        assert many[0] == b"2" and isinstance(many[1], ValueError) and many[2] == b"3"
        assert await store.update_many([]) == []
        # The engine itself fails: every caller of that batch sees it; the store carries on.
        engine.fail_next = StorageError("disk full")
        with pytest.raises(StorageError, match="disk full"):
            await store.update(b"a", increment)
        assert await store.update(b"a", increment) == b"4"
        await store.close()

    asyncio.run(main())


def test_reads_run_off_the_loop_thread(tmp_path: Path) -> None:
    async def main() -> None:
        engine = Recording(SqliteEngine(tmp_path / "data.db"))
        store = AsyncStore(engine, read_threads=2)
        await store.update(b"k", lambda c: b"v")
        assert await asyncio.gather(*[store.get(b"k") for _ in range(20)]) == [b"v"] * 20
        readers = {t.split(":")[1] for t in engine.threads if t.startswith(("get:", "get_many:"))}
        assert readers and all(t.startswith("kvstore-read") for t in readers)
        assert await store.count() == 1
        await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("inline", [False, True])
def test_scan_chunk_and_scan(inline: bool) -> None:
    async def main() -> None:
        store = AsyncStore(MemoryEngine(), inline=inline)
        keys = [b"k%03d" % i for i in range(100)]
        await store.update_many([(k, lambda c, k=k: k.upper()) for k in keys])
        expected = sorted((token_of(k), k) for k in keys)
        seen: list[tuple[int, bytes]] = []
        after = None
        while True:
            chunk = await store.scan_chunk(TOKEN_MIN, TOKEN_MAX, after, 16)
            seen += [(t, k) for t, k, v in chunk if v == k.upper()]
            if len(chunk) < 16:
                break
            after = (chunk[-1][0], chunk[-1][1])
        assert seen == expected
        assert [(t, k) for t, k, _ in store.scan(TOKEN_MIN, TOKEN_MAX)] == expected
        assert await store.count() == 100
        await store.close()

    asyncio.run(main())


def test_scan_chunk_on_an_engine_without_scan_page() -> None:
    async def main() -> None:
        store = AsyncStore(Recording(MemoryEngine()))
        await store.update_many([(b"k%d" % i, lambda c: b"v") for i in range(10)])
        chunk = await store.scan_chunk(TOKEN_MIN, TOKEN_MAX, None, 4)
        assert len(chunk) == 4
        await store.close()

    asyncio.run(main())


def test_corrupt_record_through_the_store() -> None:
    async def main() -> None:
        engine = MemoryEngine()
        store = AsyncStore(engine)
        await store.update_many([(b"a", lambda c: b"1"), (b"b", lambda c: b"2")])
        engine.corrupt_for_test(b"a")
        with pytest.raises(CorruptRecordError):
            await store.get(b"a")
        with pytest.raises(CorruptRecordError):
            await store.update(b"a", increment)
        assert await store.get(b"b") == b"2"
        await store.close()

    asyncio.run(main())


def test_close_finishes_queued_updates_then_refuses(tmp_path: Path) -> None:
    async def main() -> None:
        engine = SqliteEngine(tmp_path / "data.db")
        store = AsyncStore(engine)
        pending = [asyncio.ensure_future(store.update(b"c", increment)) for _ in range(50)]
        await asyncio.sleep(0)  # every task has queued its update
        await store.close()
        assert sorted([int(await p) for p in pending]) == list(range(1, 51))
        with pytest.raises(StorageError, match="closed"):
            await store.update(b"c", increment)
        with pytest.raises(StorageError, match="closed"):
            await store.get(b"c")
        await store.close()  # idempotent
        reopened = SqliteEngine(tmp_path / "data.db")  # the file lock was released
        assert reopened.get(b"c") == b"50"
        reopened.close()

    asyncio.run(main())


def test_cancelled_caller_still_gets_its_write_applied() -> None:
    async def main() -> None:
        engine = Recording(MemoryEngine())
        engine.gate = threading.Event()
        store = AsyncStore(engine)
        blocked = asyncio.ensure_future(store.update(b"x", increment))
        await asyncio.to_thread(engine.entered.wait, 10)
        victim = asyncio.ensure_future(store.update(b"y", increment))
        await asyncio.sleep(0)
        victim.cancel()
        engine.gate.set()
        await blocked
        assert await store.update(b"y", increment) == b"2"
        await store.close()

    asyncio.run(main())


def test_a_dead_writer_fails_callers_instead_of_hanging() -> None:
    class Fatal(BaseException):
        pass

    async def main() -> None:
        store = AsyncStore(MemoryEngine())

        def fatal(_cur: bytes | None) -> bytes:
            raise Fatal()

        with pytest.raises(StorageError, match="writer thread died"):
            await store.update(b"k", fatal)
        with pytest.raises(StorageError, match="closed"):
            await store.update(b"k", increment)
        await store.close()
        with pytest.raises(StorageError, match="closed"):
            store.engine.get(b"k")  # close() still closed the engine

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "sqlite-full"])
def test_concurrent_gets_are_served_together(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = Recording(ENGINES[kind](tmp_path))
        store = AsyncStore(engine)
        keys = [b"k%03d" % i for i in range(200)]
        await store.update_many([(k, lambda c, k=k: k * 2) for k in keys])
        got = await asyncio.gather(*[store.get(k) for k in keys], store.get(b"absent"))
        assert got == [k * 2 for k in keys] + [None]
        print(f"\n{kind}: 201 concurrent gets in {len(engine.get_many_sizes)} get_many calls")
        assert sum(engine.get_many_sizes) >= 190 and len(engine.get_many_sizes) <= 20
        assert all(t.startswith("get_many:kvstore-read") for t in engine.threads
                   if t.startswith("get_many"))
        # A batch read that fails falls back to one get per key, so errors land on their key.
        if isinstance(engine.inner, MemoryEngine):
            engine.inner.corrupt_for_test(keys[3])
        engine.fail_next = StorageError("batch read failed")
        results = await asyncio.gather(*[store.get(k) for k in keys[:10]], return_exceptions=True)
        if isinstance(engine.inner, MemoryEngine):
            assert isinstance(results[3], CorruptRecordError) and results[3].key == keys[3]
            results[3] = keys[3] * 2
        assert results == [k * 2 for k in keys[:10]]
        await store.close()

    asyncio.run(main())


def test_a_stuck_read_blocks_neither_the_loop_nor_writes(tmp_path: Path) -> None:
    async def main() -> None:
        engine = Recording(SqliteEngine(tmp_path / "data.db"))
        store = AsyncStore(engine, read_threads=1)
        await store.update_many([(b"a", lambda c: b"1"), (b"b", lambda c: b"2")])
        engine.read_gate = threading.Event()
        stuck = asyncio.ensure_future(asyncio.gather(store.get(b"a"), store.get(b"b")))
        for _ in range(10):
            await asyncio.sleep(0)  # the loop keeps running
        assert await store.update(b"a", increment) == b"2"  # so does the writer
        assert not stuck.done()
        engine.read_gate.set()
        assert await stuck in ([b"1", b"2"], [b"2", b"2"])
        await store.close()

    asyncio.run(main())
