"""The durable hint store: bounds, ordering, expiry, corruption, durability."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvstore.storage.engine import StorageError
from kvstore.storage.hints import (
    DEFAULT_MAX_AGE_MS,
    DroppedHint,
    Hint,
    HintStore,
    HintStoreFull,
    hint_crc,
)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> HintStore:
    path = None if request.param == "memory" else tmp_path / "hints.db"
    s = HintStore(path, sync="off", max_per_target=5, max_total=8)
    yield s
    s.close()


def test_add_pending_delete_roundtrip(store: HintStore) -> None:
    a1 = store.add("a", b"k1", b"r1", 1000)
    b1 = store.add("b", b"k2", b"r2", 1001)
    a2 = store.add("a", b"k3", b"r3", 1002)
    assert a1 < b1 < a2
    assert store.pending("a", 10) == [
        Hint(a1, "a", b"k1", b"r1", 1000),
        Hint(a2, "a", b"k3", b"r3", 1002),
    ]
    assert [h.id for h in store.pending("a", 1)] == [a1]
    assert [h.id for h in store.pending("a", 10, after_id=a1)] == [a2]
    assert store.pending("nobody", 10) == []
    assert store.count_by_target() == {"a": 2, "b": 1}
    assert store.delete([a1, 99999]) == 1
    assert store.count_by_target() == {"a": 1, "b": 1}
    assert store.delete([a2, b1]) == 2
    assert store.count_by_target() == {}
    assert store.count() == 0
    assert store.delete([]) == 0


def test_bounds_per_target_and_total(store: HintStore) -> None:
    for i in range(5):
        store.add("a", b"k%d" % i, b"r", i)
    with pytest.raises(HintStoreFull, match=r"5 hints held for it \(limit 5\)") as info:
        store.add("a", b"x", b"r", 9)
    assert info.value.target == "a"
    store.add("b", b"k", b"r", 1)
    store.add("b", b"k", b"r", 2)
    store.add("c", b"k", b"r", 3)
    with pytest.raises(HintStoreFull, match=r"holds 8 hints \(limit 8\)"):
        store.add("d", b"k", b"r", 4)
    assert store.count() == 8
    # Deleting frees room again.
    store.delete([store.pending("a", 1)[0].id])
    assert store.add("d", b"k", b"r", 4) > 0


def test_add_many_refuses_item_by_item_in_one_transaction(store: HintStore) -> None:
    items = [("a", b"k%d" % i, b"r", i) for i in range(7)] + [("b", b"k", b"r", 0)]
    ids = store.add_many(items)
    assert [i is None for i in ids] == [False] * 5 + [True, True] + [False]
    assert store.count_by_target() == {"a": 5, "b": 1}
    assert store.add_many([]) == []


def test_bad_input_is_refused_before_anything_is_written(store: HintStore) -> None:
    with pytest.raises(ValueError):
        store.add_many([("a", b"k", b"r", 1), ("a", "not bytes", b"r", 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        store.add("", b"k", b"r", 1)
    with pytest.raises(ValueError):
        store.add("a", b"k", b"r", -1)
    assert store.count() == 0


def test_expire_by_age_and_membership(store: HintStore) -> None:
    old = store.add("a", b"old", b"r", 1_000)
    edge = store.add("a", b"edge", b"r", 2_000)
    gone = store.add("left-node", b"k", b"r", 5_000)
    keep = store.add("b", b"new", b"r", 5_000)
    dropped = store.expire(now_ms=12_000, max_age_ms=10_000, live_members={"a", "b"})
    assert dropped == [
        DroppedHint(old, "a", b"old", 1_000, "expired"),
        DroppedHint(gone, "left-node", b"k", 5_000, "not_member"),
    ]
    assert [h.id for h in store.pending("a", 10)] == [edge]  # exactly max_age old: kept
    assert [h.id for h in store.pending("b", 10)] == [keep]
    assert store.count_by_target() == {"a": 1, "b": 1}
    assert store.expire(now_ms=12_000, max_age_ms=10_000) == []  # membership not checked


def test_default_age_limit_is_three_hours(store: HintStore) -> None:
    assert DEFAULT_MAX_AGE_MS == 3 * 3600 * 1000
    store.add("a", b"k", b"r", 0)
    assert store.expire(now_ms=DEFAULT_MAX_AGE_MS) == []
    assert [d.reason for d in store.expire(now_ms=DEFAULT_MAX_AGE_MS + 1)] == ["expired"]


def test_corrupted_hint_is_dropped_never_delivered(tmp_path: Path) -> None:
    path = tmp_path / "hints.db"
    store = HintStore(path, sync="full")
    good = store.add("a", b"k1", b"value-1", 10)
    bad = store.add("a", b"k2", b"value-2", 11)
    raw = sqlite3.connect(path)
    raw.execute("UPDATE hints SET record = ? WHERE id = ?", (b"value-X", bad))
    raw.commit()
    raw.close()
    assert store.pending("a", 10) == [Hint(good, "a", b"k1", b"value-1", 10)]
    assert store.take_dropped() == [DroppedHint(bad, "a", b"k2", 11, "corrupt")]
    assert store.take_dropped() == []
    assert store.count_by_target() == {"a": 1}
    store.close()
    reopened = HintStore(path)
    assert reopened.count_by_target() == {"a": 1}
    reopened.close()


def test_checksum_covers_every_field() -> None:
    base = hint_crc("a", b"k", b"r", 1)
    assert base != hint_crc("b", b"k", b"r", 1)
    assert base != hint_crc("a", b"kk", b"r", 1)
    assert base != hint_crc("a", b"k", b"rr", 1)
    assert base != hint_crc("a", b"k", b"r", 2)
    assert hint_crc("a", b"kr", b"", 1) != hint_crc("a", b"k", b"r", 1)  # no shifting


def test_hints_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "hints.db"
    store = HintStore(path, sync="normal")
    ids = store.add_many([("a", b"k%d" % i, b"r%d" % i, i) for i in range(50)])
    store.close()
    store = HintStore(path, max_per_target=50)
    assert store.count_by_target() == {"a": 50}
    assert [h.id for h in store.pending("a", 100)] == ids
    with pytest.raises(HintStoreFull):
        store.add("a", b"k", b"r", 1)
    # New ids never reuse old ones (AUTOINCREMENT): a late ack cannot delete a new hint.
    store.delete(ids[-1:])
    assert store.add("a", b"k", b"r", 1) > ids[-1]
    store.close()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="not a kvstore hint store"):
        HintStore(other)
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left untouched
    conn.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StorageError):
        HintStore(junk)
    with pytest.raises(StorageError, match="directory"):
        HintStore(tmp_path)
    with pytest.raises(ValueError):
        HintStore(None, sync="sometimes")


def test_closed_store_refuses_calls() -> None:
    store = HintStore(None)
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.add("a", b"k", b"r", 1)
    with pytest.raises(StorageError, match="closed"):
        store.pending("a")


def test_concurrent_adds_from_threads_keep_counts_exact(tmp_path: Path) -> None:
    store = HintStore(tmp_path / "hints.db", sync="off", max_per_target=10_000)

    def work(n: int) -> None:
        for i in range(100):
            store.add_many([(f"t{n}", b"k%d" % i, b"r", i), ("shared", b"k", b"r", i)])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = store.count_by_target()
    assert counts == {"t0": 100, "t1": 100, "t2": 100, "t3": 100, "shared": 400}
    assert len(store.pending("shared", 1000)) == 400
    store.close()


# -- model-based: the store behaves like a bounded ordered dict ---------------------------

TARGETS = st.sampled_from(["a", "b", "c"])


class HintModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = HintStore(None, sync="off", max_per_target=4, max_total=7)
        self.model: dict[int, tuple[str, bytes, bytes, int]] = {}

    def teardown(self) -> None:
        self.store.close()

    def _room(self, target: str, extra: dict[str, int], total_extra: int) -> bool:
        held = sum(1 for t, *_ in self.model.values() if t == target) + extra.get(target, 0)
        return len(self.model) + total_extra < 7 and held < 4

    @rule(items=st.lists(st.tuples(TARGETS, st.binary(max_size=4), st.integers(0, 100)),
                         max_size=5))
    def add_many(self, items: list[tuple[str, bytes, int]]) -> None:
        extra: dict[str, int] = {}
        accepted = 0
        want = []
        for target, _, _ in items:
            ok = self._room(target, extra, accepted)
            want.append(ok)
            if ok:
                extra[target] = extra.get(target, 0) + 1
                accepted += 1
        ids = self.store.add_many([(t, k, b"rec" + k, c) for t, k, c in items])
        assert [i is not None for i in ids] == want
        for (t, k, c), i in zip(items, ids, strict=True):
            if i is not None:
                assert i not in self.model and all(i > old for old in self.model)
                self.model[i] = (t, k, b"rec" + k, c)

    @rule(node=TARGETS, limit=st.integers(1, 5), data=st.data())
    def deliver(self, node: str, limit: int, data: st.DataObject) -> None:
        got = self.store.pending(node, limit)
        want = sorted(i for i, v in self.model.items() if v[0] == node)[:limit]
        assert [h.id for h in got] == want
        for h in got:
            assert (h.target, h.key, h.record, h.created_ms) == self.model[h.id]
        acked = [h.id for h in got if data.draw(st.booleans())]
        assert self.store.delete(acked) == len(acked)
        for i in acked:
            del self.model[i]

    @rule(now=st.integers(0, 200), age=st.integers(0, 100),
          members=st.sets(TARGETS) | st.none())
    def expire(self, now: int, age: int, members: set[str] | None) -> None:
        dropped = self.store.expire(now, age, members)
        want = {
            i: ("not_member" if members is not None and v[0] not in members else "expired")
            for i, v in self.model.items()
            if (members is not None and v[0] not in members) or v[3] < now - age
        }
        assert {d.id: d.reason for d in dropped} == want
        for i in want:
            del self.model[i]

    @invariant()
    def counts_match(self) -> None:
        want: dict[str, int] = {}
        for t, *_ in self.model.values():
            want[t] = want.get(t, 0) + 1
        assert self.store.count_by_target() == want
        assert self.store.count() == len(self.model)


TestHintModel = HintModel.TestCase
TestHintModel.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, derandomize=True
)
