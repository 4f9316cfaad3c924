"""Fencing at a replica: the per-lock table, refusals inside the storage mutation, and what
merges teach (docs/architecture.md, "Fencing")."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from kvstore.core import tombstones, versions
from kvstore.core.errors import Fenced
from kvstore.services.replica import Replica
from kvstore.storage import AsyncStore, MemoryEngine, SqliteEngine, StorageError
from kvstore.storage.epochs import EpochAllocator
from kvstore.storage.fences import FenceTable


def replica(engine=None, node: str = "n1") -> Replica:
    return Replica(node, AsyncStore(engine or MemoryEngine(), inline=True), lambda: 10_000,
                   EpochAllocator(None, lambda: 10_000))


def run(coro):
    return asyncio.run(coro)


def test_the_table_stages_until_the_transaction_commits():
    table = FenceTable({"L": 3})
    assert not table.raise_to("L", 2) and table.raise_to("L", 5)
    assert table.highest("L") == 5 and table.snapshot() == {"L": 3}   # staged only
    table.abort()
    assert table.highest("L") == 3
    table.learn({"L": 4, "M": 1})
    table.commit()
    assert table.snapshot() == {"L": 4, "M": 1} and table.staged() == {}


def test_a_replica_refuses_a_lower_token_in_any_key_and_writes_nothing():
    r = replica()
    run(r.mint(b"k1", {}, b"new holder", fence=("L", 7)))
    with pytest.raises(Fenced) as info:
        run(r.mint(b"k2", {}, b"stale holder", fence=("L", 5)))
    err = info.value
    assert (err.lock, err.token, err.highest, err.refused_by) == ("L", 5, 7, ("n1",))
    assert "n1 refused" in err.message and "'L' token 5" in err.message
    assert run(r.read(b"k2")) == []                        # nothing written, no epoch taken
    assert r.store.engine.get(b"k2") is None
    run(r.mint(b"k2", {}, b"same token", fence=("L", 7)))  # equal is not stale
    run(r.mint(b"k3", {}, b"other lock", fence=("M", 1)))
    run(r.mint(b"k3", {}, b"unguarded"))                    # unguarded writes never refused
    assert r.metrics["fenced_writes_refused"] == 1


def test_the_key_and_the_context_refuse_even_when_the_table_forgot():
    r = replica()
    run(r.merge(b"k", versions.update([], {}, "n2@1", b"newer", fence=("L", 7))))
    r.store.engine.fences = FenceTable()                  # as if the table were lost
    with pytest.raises(Fenced):                            # the record still knows L:7
        run(r.mint(b"k", {}, b"stale", fence=("L", 5)))
    context = versions.Context({}, frozenset(), {"L": 9})  # the writer read token 9
    with pytest.raises(Fenced) as info:
        run(r.mint(b"other", context, b"stale", fence=("L", 8)))
    assert info.value.highest == 9


def test_a_replicated_guarded_write_is_refused_but_repair_always_merges():
    r = replica()
    run(r.mint(b"a", {}, b"newer", fence=("L", 7)))
    stale = versions.update([], {}, "n2@1", b"stale", fence=("L", 5))
    with pytest.raises(Fenced):
        run(r.merge(b"k", stale, fence=("L", 5)))          # the client write: refused
    assert run(r.read(b"k")) == []
    merged = run(r.merge(b"k", stale))                     # repair, handoff: merged
    assert [s.value for s in versions.live(merged)] == [b"stale"]  # nothing newer here
    newer = versions.update([], {}, "n3@1", b"newer", fence=("L", 7))
    merged = run(r.merge(b"k", newer))
    assert {s.value for s in merged} == {b"stale", b"newer"}
    assert [s.value for s in versions.live(merged)] == [b"newer"]


def test_merges_teach_the_table():
    r = replica()
    run(r.merge(b"k", versions.update([], versions.Context({}, frozenset(), {"M": 4}),
                                      "n2@1", b"x", fence=("L", 9))))
    assert r.fences.snapshot() == {"L": 9, "M": 4}
    with pytest.raises(Fenced):
        run(r.mint(b"elsewhere", {}, b"stale", fence=("M", 3)))


def test_the_table_is_durable_with_the_write_and_survives_a_reopen(tmp_path):
    path = tmp_path / "data.db"
    r = replica(SqliteEngine(path, "off"))
    run(r.mint(b"k", {}, b"v", fence=("jobs/nightly", 42)))
    r.store.engine.close()
    again = replica(SqliteEngine(path, "off"))
    assert again.fences.snapshot() == {"jobs/nightly": 42}
    with pytest.raises(Fenced):
        run(again.mint(b"k2", {}, b"stale", fence=("jobs/nightly", 41)))
    again.store.engine.close()


def test_a_failed_transaction_forgets_what_it_staged(tmp_path):
    engine = SqliteEngine(tmp_path / "data.db", "off")
    r = replica(engine)
    run(r.mint(b"k", {}, b"v", fence=("L", 1)))
    real = engine._conn()

    class Failing:  # the COMMIT fails, as on a full disk
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    engine._local.conn = Failing()
    with pytest.raises(Exception, match=r"disk full|storage failed"):
        run(r.mint(b"k2", {}, b"v", fence=("L", 5)))
    engine._local.conn = real
    assert engine.fences.highest("L") == 1               # the failed write taught nothing
    run(r.mint(b"k3", {}, b"v", fence=("L", 2)))
    engine.close()


def test_a_file_from_before_fencing_gets_the_table(tmp_path):
    path = tmp_path / "data.db"
    SqliteEngine(path, "off").close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE fences")
    engine = SqliteEngine(path, "off")
    assert engine.fences.snapshot() == {}
    run(replica(engine).mint(b"k", {}, b"v", fence=("L", 3)))
    engine.close()
    assert SqliteEngine(path, "off").fences.snapshot() == {"L": 3}


def test_a_key_showing_nothing_may_be_purged_with_its_fenced_out_versions():
    stale = versions.update([], {}, "a@1", b"stale", fence=("L", 5))
    tomb = versions.update([], {}, "b@1", b"", tombstone=True, now_ms=100, fence=("L", 7))
    both = versions.sync(stale, tomb)
    assert versions.live(both) == []
    decision = tombstones.purge_decision(both, now_ms=10_000, grace_ms=1000,
                                         preference_list=["a"], confirmed=["a"])
    assert decision.allowed
    shown = versions.sync(stale, versions.update([], {}, "c@1", b"", tombstone=True))
    assert not tombstones.purge_decision(shown, now_ms=10_000, grace_ms=1000,
                                         preference_list=["a"], confirmed=["a"]).allowed


def test_storage_errors_are_not_taken_for_refusals(tmp_path):
    engine = SqliteEngine(tmp_path / "data.db", "off")
    r = replica(engine)
    engine.close()
    with pytest.raises(Exception) as info:
        run(r.mint(b"k", {}, b"v", fence=("L", 1)))
    assert not isinstance(info.value, Fenced)
    assert isinstance(info.value.__cause__, StorageError) or "closed" in str(info.value)
