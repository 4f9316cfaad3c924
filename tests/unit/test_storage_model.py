"""Property test: both engines behave like a plain dict (plus the ring-order scan rules)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of
from kvstore.storage import DELETE, DISCARD, AsyncStore, MemoryEngine, Mutation, SqliteEngine

KEYS = [b"", b"a", b"b", b"apple", b"\x00", b"\xff\xfe", b"key-7", b"zz"]
TOKENS = sorted({token_of(k) for k in KEYS})
BOUNDS = sorted(
    {TOKEN_MIN, TOKEN_MAX, 0, *TOKENS, *(t + 1 for t in TOKENS[:-1]), *(t - 1 for t in TOKENS)}
)

ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.binary(max_size=12)),
    st.tuples(st.just("append"), st.sampled_from(KEYS), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("fail"), st.sampled_from(KEYS), st.just(b"")),
    st.tuples(st.just("keep"), st.sampled_from(KEYS), st.just(b"")),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(b"")),
    st.tuples(st.just("discard"), st.sampled_from(KEYS), st.just(b"")),
)
scans = st.tuples(
    st.sampled_from(BOUNDS),
    st.sampled_from(BOUNDS),
    st.one_of(st.none(), st.tuples(st.sampled_from(BOUNDS), st.sampled_from(KEYS))),
)
steps = st.lists(
    st.tuples(st.lists(ops, max_size=8), st.lists(scans, max_size=3), st.booleans()),
    min_size=1,
    max_size=8,
)


def mutation(op: str, arg: bytes) -> Mutation:
    if op == "set":
        return lambda cur: arg
    if op == "append":
        return lambda cur: (cur or b"") + arg
    if op == "keep":
        return lambda cur: None
    if op == "delete":
        return lambda cur: DELETE
    if op == "discard":
        return DISCARD

    def fail(cur: bytes | None) -> bytes:
        raise KeyError("refused")

    return fail


def model_apply(model: dict[bytes, bytes], batch: list[tuple[str, bytes, bytes]]) -> list:
    out: list = []
    for op, key, arg in batch:
        cur = model.get(key)
        if op == "set":
            model[key] = arg
        elif op == "append":
            model[key] = (cur or b"") + arg
        elif op in ("delete", "discard"):
            model.pop(key, None)
        elif op == "fail":
            out.append(KeyError)
            continue
        out.append(model.get(key))
    return out


def model_scan(model: dict[bytes, bytes], start: int, end: int, after) -> list:
    items = sorted((token_of(k), k, v) for k, v in model.items())
    if start < end:
        return [i for i in items if start < i[0] <= end and (after is None or i[:2] > after)]
    first = [i for i in items if i[0] > start]
    second = [i for i in items if i[0] <= end]
    if after is not None and after[0] > start:
        return [i for i in first if i[:2] > after] + second
    if after is not None and after[0] <= end:
        return [i for i in second if i[:2] > after]
    return first + second


def check_engine(make, reopen, plan) -> None:
    engine = make()
    model: dict[bytes, bytes] = {}
    try:
        for batch, scan_list, do_reopen in plan:
            got = engine.apply([(k, mutation(op, arg)) for op, k, arg in batch])
            expected = model_apply(model, batch)
            assert [type(g) if isinstance(g, Exception) else g for g in got] == expected
            if do_reopen and reopen is not None:
                engine.close()
                engine = reopen()
            for key in KEYS:
                assert engine.get(key) == model.get(key)
            assert engine.count() == len(model)
            for start, end, after in scan_list:
                assert list(engine.scan(start, end, after_key=after)) == model_scan(
                    model, start, end, after
                ), (start, end, after)
    finally:
        engine.close()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(steps)
def test_memory_engine_matches_a_dict(plan) -> None:
    check_engine(MemoryEngine, None, plan)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(steps)
def test_sqlite_engine_matches_a_dict(plan) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.db"
        check_engine(
            lambda: SqliteEngine(path, sync="off"), lambda: SqliteEngine(path, sync="off"), plan
        )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(steps)
def test_async_store_matches_a_dict(plan) -> None:
    """The same plans through AsyncStore's threads: update_many per batch, single updates
    racing each other, batched gets, scan_chunk paging."""

    async def run(store: AsyncStore) -> None:
        model: dict[bytes, bytes] = {}
        for batch, scan_list, _ in plan:
            got = await store.update_many([(k, mutation(op, arg)) for op, k, arg in batch])
            expected = model_apply(model, batch)
            assert [type(g) if isinstance(g, Exception) else g for g in got] == expected
            # the same steps again as concurrent single updates: arrival order is kept
            singles = await asyncio.gather(
                *[store.update(k, mutation(op, arg)) for op, k, arg in batch],
                return_exceptions=True,
            )
            expected = model_apply(model, batch)
            assert [type(g) if isinstance(g, Exception) else g for g in singles] == expected
            assert await asyncio.gather(*[store.get(k) for k in KEYS]) == [
                model.get(k) for k in KEYS
            ]
            assert await store.count() == len(model)
            for start, end, after in scan_list:
                chunk = await store.scan_chunk(start, end, after, 3)
                assert chunk == model_scan(model, start, end, after)[:3]
        await store.close()

    asyncio.run(run(AsyncStore(MemoryEngine())))
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(AsyncStore(SqliteEngine(Path(tmp) / "data.db", sync="off"))))
