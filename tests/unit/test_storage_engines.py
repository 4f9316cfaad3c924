"""The Engine contract, run against both engines (MemoryEngine and SqliteEngine)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN, token_of
from kvstore.storage import (
    DELETE,
    DISCARD,
    CorruptRecordError,
    MemoryEngine,
    OverwriteCorrupt,
    SqliteEngine,
    StorageError,
)


@pytest.fixture(params=["memory", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    eng = MemoryEngine() if request.param == "memory" else SqliteEngine(tmp_path / "data.db")
    yield eng
    eng.close()


def put(value: bytes):
    return lambda _current: value


def corrupt(engine, key: bytes) -> None:
    """Damage one record behind the engine's back, the way each engine can be damaged."""
    if isinstance(engine, MemoryEngine):
        engine.corrupt_for_test(key)
        return
    raw = sqlite3.connect(engine.path, isolation_level=None)
    raw.execute(
        "UPDATE records SET value = ? WHERE token = ? AND key = ?",
        (b"garbage", token_of(key), key),
    )
    raw.close()


KEYS = [f"key-{i}".encode() for i in range(300)]
ORDERED = sorted((token_of(k), k) for k in KEYS)


def fill(engine, keys=KEYS) -> None:
    engine.apply([(k, put(b"v:" + k)) for k in keys])


def test_round_trip(engine) -> None:
    assert engine.get(b"missing") is None
    assert engine.apply([(b"k", put(b"one"))]) == [b"one"]
    assert engine.get(b"k") == b"one"
    assert engine.apply([(b"k", lambda cur: cur + b"+two")]) == [b"one+two"]
    assert engine.get(b"k") == b"one+two"
    assert engine.apply([(b"", put(b""))]) == [b""]  # empty key and empty record are legal
    assert engine.get(b"") == b""
    assert engine.count() == 2


def test_mutation_returning_none_leaves_the_record(engine) -> None:
    engine.apply([(b"k", put(b"one"))])
    assert engine.apply([(b"k", lambda cur: None), (b"absent", lambda cur: None)]) == [
        b"one",
        None,
    ]
    assert engine.get(b"k") == b"one"
    assert engine.get(b"absent") is None
    assert engine.count() == 1


def test_steps_see_earlier_steps_of_the_same_batch(engine) -> None:
    seen: list[bytes | None] = []

    def append(cur: bytes | None) -> bytes:
        seen.append(cur)
        return (cur or b"") + b"x"

    assert engine.apply([(b"k", append)] * 5) == [b"x", b"xx", b"xxx", b"xxxx", b"xxxxx"]
    assert seen == [None, b"x", b"xx", b"xxx", b"xxxx"]


def test_failing_step_does_not_abort_the_others(engine) -> None:
    def boom(_cur: bytes | None) -> bytes:
        raise ValueError("merge refused")

    results = engine.apply(
        [(b"a", put(b"1")), (b"b", boom), (b"c", put(b"3")), (b"d", lambda c: 42), (7, put(b""))]
    )
    assert results[0] == b"1" and results[2] == b"3"
    assert isinstance(results[1], ValueError) and str(results[1]) == "merge refused"
    assert isinstance(results[3], TypeError)  # a mutation returning a non-bytes
    assert isinstance(results[4], TypeError)  # a non-bytes key
    assert engine.get(b"a") == b"1" and engine.get(b"c") == b"3"
    assert engine.get(b"b") is None and engine.get(b"d") is None
    assert engine.count() == 2


def test_failing_step_on_existing_key_keeps_old_record(engine) -> None:
    engine.apply([(b"a", put(b"old"))])
    results = engine.apply([(b"a", lambda c: 1 / 0), (b"a", lambda c: c + b"!")])
    assert isinstance(results[0], ZeroDivisionError)
    assert results[1] == b"old!"
    assert engine.get(b"a") == b"old!"


def test_delete_and_discard(engine) -> None:
    fill(engine, KEYS[:10])
    assert engine.apply([(KEYS[0], lambda c: DELETE), (KEYS[1], DISCARD)]) == [None, None]
    assert engine.get(KEYS[0]) is None and engine.get(KEYS[1]) is None
    assert engine.count() == 8
    # Conditional delete then re-create in one batch; deleting an absent key is a no-op.
    results = engine.apply(
        [(KEYS[2], lambda c: DELETE if c == b"v:" + KEYS[2] else None), (KEYS[2], put(b"new")),
         (b"never", lambda c: DELETE), (b"never2", DISCARD)]
    )
    assert results == [None, b"new", None, None]
    assert engine.get(KEYS[2]) == b"new"
    assert engine.count() == 8
    assert [k for _, k, _ in engine.scan(TOKEN_MIN, TOKEN_MAX)] == [
        k for _, k in ORDERED if k in KEYS[2:10]
    ]


def test_scan_is_in_token_key_order_with_bounds(engine) -> None:
    fill(engine)
    everything = list(engine.scan(TOKEN_MIN - 1, TOKEN_MAX))
    assert [(t, k) for t, k, _ in everything] == ORDERED
    assert all(v == b"v:" + k for _, k, v in everything)
    # start exclusive, end inclusive, at a real record's token
    lo, hi = ORDERED[50][0], ORDERED[120][0]
    got = [(t, k) for t, k, _ in engine.scan(lo, hi)]
    assert got == [p for p in ORDERED if lo < p[0] <= hi]
    assert got[0] == ORDERED[51] and got[-1] == ORDERED[120]
    assert list(engine.scan(lo, lo + 1)) == []  # no token strictly inside


def test_scan_resumes_after_key(engine) -> None:
    fill(engine)
    lo, hi = ORDERED[10][0], ORDERED[250][0]
    expected = [p for p in ORDERED if lo < p[0] <= hi]
    resumed = [(t, k) for t, k, _ in engine.scan(lo, hi, after_key=expected[99])]
    assert resumed == expected[100:]
    # A resume point beyond the end leaves nothing; one before the start is the whole range.
    assert list(engine.scan(lo, hi, after_key=(hi + 1, b""))) == []
    assert [(t, k) for t, k, _ in engine.scan(lo, hi, after_key=ORDERED[0])] == expected


def test_scan_page_walks_the_range_in_chunks(engine) -> None:
    fill(engine)
    seen: list[tuple[int, bytes]] = []
    after = None
    while True:
        page = engine.scan_page(TOKEN_MIN, TOKEN_MAX, after, 7)
        seen.extend((t, k) for t, k, _ in page)
        if len(page) < 7:
            break
        after = (page[-1][0], page[-1][1])
    assert seen == [p for p in ORDERED if p[0] > TOKEN_MIN]


def test_scan_wraps_around_the_ring(engine) -> None:
    fill(engine)
    start, end = ORDERED[200][0], ORDERED[30][0]
    got = [(t, k) for t, k, _ in engine.scan(start, end)]
    assert got == ORDERED[201:] + ORDERED[:31]
    # resume in each half of the wrapped range
    assert [(t, k) for t, k, _ in engine.scan(start, end, after_key=ORDERED[250])] == (
        ORDERED[251:] + ORDERED[:31]
    )
    assert [(t, k) for t, k, _ in engine.scan(start, end, after_key=ORDERED[5])] == ORDERED[6:31]
    # start == end: the whole ring, starting after `start`
    whole = [(t, k) for t, k, _ in engine.scan(start, start)]
    assert whole == ORDERED[201:] + ORDERED[:201]


def test_corrupt_record_raises_and_names_the_key(engine) -> None:
    fill(engine, KEYS[:20])
    corrupt(engine, KEYS[3])
    with pytest.raises(CorruptRecordError) as info:
        engine.get(KEYS[3])
    assert info.value.key == KEYS[3]
    assert repr(KEYS[3]) in str(info.value)
    for k in KEYS[:20]:
        if k != KEYS[3]:
            assert engine.get(k) == b"v:" + k
    # A scan yields everything before the bad record, then raises naming it.
    yielded: list[bytes] = []
    with pytest.raises(CorruptRecordError) as info:
        for _, k, _ in engine.scan(TOKEN_MIN, TOKEN_MAX):
            yielded.append(k)
    assert info.value.key == KEYS[3]
    ordered20 = [k for _, k in sorted((token_of(k), k) for k in KEYS[:20])]
    assert yielded == ordered20[: ordered20.index(KEYS[3])]
    # A merge never runs against the damaged bytes; other steps of the batch still apply.
    calls: list[bytes | None] = []
    results = engine.apply(
        [(KEYS[3], lambda c: calls.append(c) or b"x"), (KEYS[4], lambda c: c + b"!")]
    )
    assert isinstance(results[0], CorruptRecordError) and calls == []
    assert results[1] == b"v:" + KEYS[4] + b"!"
    # DISCARD clears it, after which repair can rewrite it.
    assert engine.apply([(KEYS[3], DISCARD), (KEYS[3], put(b"repaired"))]) == [None, b"repaired"]
    assert engine.get(KEYS[3]) == b"repaired"
    assert engine.count() == 20


def test_closed_engine_refuses(engine) -> None:
    engine.apply([(b"k", put(b"v"))])
    engine.close()
    with pytest.raises(StorageError):
        engine.get(b"k")
    with pytest.raises(StorageError):
        engine.apply([(b"k", put(b"v"))])
    engine.close()  # idempotent


def test_memory_engine_reopens_over_the_same_records() -> None:
    eng = MemoryEngine()
    eng.apply([(b"k", put(b"v"))])
    eng.close()
    again = eng.reopen()
    assert again.get(b"k") == b"v" and again.count() == 1
    with pytest.raises(StorageError):
        eng.get(b"k")


def test_get_many(engine) -> None:
    fill(engine, KEYS[:100])
    corrupt(engine, KEYS[5])
    asked = [*KEYS[:100], b"missing", KEYS[0], 7]
    got = engine.get_many(asked)
    assert len(got) == len(asked)
    for key, value in zip(asked[:100], got[:100], strict=True):
        if key == KEYS[5]:
            assert isinstance(value, CorruptRecordError) and value.key == KEYS[5]
        else:
            assert value == b"v:" + key
    assert got[100] is None and got[101] == b"v:" + KEYS[0]
    assert isinstance(got[102], TypeError)
    assert engine.get_many([]) == []
    big = [b"k%d" % i for i in range(1200)]  # more than one IN query
    engine.apply([(k, put(k)) for k in big[::2]])
    assert engine.get_many(big) == [k if i % 2 == 0 else None for i, k in enumerate(big)]


def test_overwrite_corrupt(engine) -> None:
    fill(engine, KEYS[:10])
    corrupt(engine, KEYS[1])
    corrupt(engine, KEYS[2])
    seen: list[bytes | None] = []

    def merge(cur: bytes | None) -> bytes:
        seen.append(cur)
        return (cur or b"") + b"+repaired"

    results = engine.apply(
        [
            (KEYS[1], OverwriteCorrupt(merge)),  # damaged: merged as if absent
            (KEYS[1], merge),  # then an ordinary step sees the new record
            (KEYS[2], OverwriteCorrupt(lambda c: None)),  # "no change" keeps it damaged
            (KEYS[3], OverwriteCorrupt(merge)),  # a healthy record merges as usual
        ]
    )
    assert results[0] == b"+repaired" and results[1] == b"+repaired+repaired"
    assert isinstance(results[2], CorruptRecordError) and results[2].key == KEYS[2]
    assert results[3] == b"v:" + KEYS[3] + b"+repaired"
    assert seen == [None, b"+repaired", b"v:" + KEYS[3]]
    assert engine.get(KEYS[1]) == b"+repaired+repaired"
    with pytest.raises(CorruptRecordError):
        engine.get(KEYS[2])
    assert engine.count() == 10
