"""Tombstone collection and the guard against resurrecting deleted data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import versions as v
from kvstore.core.antientropy import Initiator, Responder, run_local
from kvstore.core.merkle import MerkleTree, in_range, version_digest
from kvstore.core.ring import TOKEN_MIN, token_of
from kvstore.core.tombstones import (
    Confirmations,
    check_settings,
    may_purge,
    needs_catch_up,
    purge_decision,
    split_purged,
)

GRACE = 10_000
SKEW = 100
PREF = ["a", "b", "c"]


def test_purge_needs_age_and_every_replica():
    assert not may_purge(1000, now_ms=1000 + GRACE, grace_ms=GRACE, preference_list=PREF,
                         confirmed=PREF)  # exactly grace old: not older than it
    ok = may_purge(1000, now_ms=1001 + GRACE, grace_ms=GRACE, preference_list=PREF,
                   confirmed=["c", "b", "a", "z"])
    assert ok and ok.allowed and "all 3 replicas" in ok.reason
    young = may_purge(1000, now_ms=2000, grace_ms=GRACE, preference_list=PREF, confirmed=PREF)
    assert not young and "grace period" in young.reason
    partial = may_purge(0, now_ms=GRACE * 5, grace_ms=GRACE, preference_list=PREF,
                        confirmed=["a", "c"])
    assert not partial and partial.missing == {"b"} and "b" in partial.reason
    assert not may_purge(0, now_ms=GRACE * 5, grace_ms=GRACE, preference_list=[], confirmed=[])
    with pytest.raises(ValueError):
        may_purge(0, now_ms=1, grace_ms=-1, preference_list=PREF, confirmed=PREF)


@settings(max_examples=200, derandomize=True)
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**7),
       st.sets(st.sampled_from(["a", "b", "c", "d"])))
def test_purge_rule_is_exactly_age_and_full_confirmation(written, now, grace, confirmed):
    decision = may_purge(written, now_ms=now, grace_ms=grace, preference_list=PREF,
                         confirmed=confirmed)
    assert decision.allowed == (now - written > grace and set(PREF) <= confirmed)


def test_purge_decision_for_a_sibling_set():
    tomb_old = v.Sibling("a", 2, {"a": 1}, tombstone=True, written_at_ms=100)
    tomb_new = v.Sibling("b", 1, {"a": 1}, tombstone=True, written_at_ms=5000)
    live = v.Sibling("c", 1, {}, b"x", written_at_ms=50)
    kw = {"grace_ms": GRACE, "preference_list": PREF, "confirmed": PREF}
    assert purge_decision([tomb_old], now_ms=100 + GRACE + 1, **kw)
    # the newest tombstone decides the age
    assert not purge_decision([tomb_old, tomb_new], now_ms=100 + GRACE + 1, **kw)
    assert purge_decision([tomb_old, tomb_new], now_ms=5000 + GRACE + 1, **kw)
    assert "live sibling" in purge_decision([tomb_old, live], now_ms=10**9, **kw).reason
    assert not purge_decision([], now_ms=10**9, **kw)


def test_confirmations_track_the_current_digest_only():
    conf = Confirmations()
    conf.record(b"k", b"d1", "a")
    conf.record_all([(b"k", b"d1"), (b"j", b"e")], ["a", "b"])
    assert conf.holders(b"k", b"d1") == {"a", "b"} and conf.holders(b"j", b"e") == {"a", "b"}
    assert conf.holders(b"k", b"other") == frozenset()
    conf.record(b"k", b"d2", "c")  # the key changed: old confirmations say nothing
    assert conf.holders(b"k", b"d2") == {"c"} and conf.holders(b"k", b"d1") == frozenset()
    conf.forget(b"k")
    assert conf.holders(b"k", b"d2") == frozenset() and len(conf) == 1


def test_settings_are_checked():
    check_settings(GRACE, SKEW, hint_ttl_ms=GRACE // 2)
    with pytest.raises(ValueError, match="twice"):
        check_settings(150, 100)
    with pytest.raises(ValueError, match="hints must expire"):
        check_settings(GRACE, SKEW, hint_ttl_ms=GRACE)
    with pytest.raises(ValueError):
        check_settings(GRACE, -1)


def test_a_purge_marker_refuses_exactly_what_the_purged_tombstones_covered():
    old = v.Sibling("c", 1, {}, b"old", written_at_ms=500)
    tomb = v.Sibling("a", 1, {"c": 1}, tombstone=True, written_at_ms=900)
    marker = v.context_of([tomb])
    concurrent = v.Sibling("b", 1, {}, b"concurrent", written_at_ms=100)  # never deleted
    fresh = v.Sibling("c@2", 1, {}, b"new", written_at_ms=0)  # after the purge, any clock
    assert split_purged(marker, [old, tomb, concurrent, fresh]) == \
        ([concurrent, fresh], [old, tomb])
    assert split_purged({}, [old]) == ([old], [])


def test_catch_up_after_an_absence_longer_than_the_grace_period():
    assert not needs_catch_up(last_alive_ms=0, now_ms=GRACE, grace_ms=GRACE)
    assert needs_catch_up(last_alive_ms=0, now_ms=GRACE + 1, grace_ms=GRACE)


class Replica:
    """A replica as plain data: key -> siblings, with the tombstone rules applied."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[bytes, list[v.Sibling]] = {}
        self.markers: dict[bytes, v.Clock] = {}

    def purge(self, key: bytes) -> None:
        self.markers[key] = v.context_of(self.data.pop(key))

    def receive(self, key: bytes, siblings: list[v.Sibling]) -> list[v.Sibling]:
        local = self.data.get(key, [])
        accepted, refused = split_purged(self.markers.get(key, {}), siblings)
        merged = v.sync(local, accepted)
        if merged:
            self.data[key] = merged
        return refused

    def digests(self) -> dict[bytes, bytes]:
        return {k: version_digest(s) for k, s in self.data.items()}

    def visible(self, key: bytes) -> list[bytes]:
        return [s.value for s in v.live(self.data.get(key, []))]


def _anti_entropy(x: Replica, y: Replica, conf: Confirmations | None = None) -> None:
    """One full-ring session between x and y, then move the records it names."""
    dx, dy = x.digests(), y.digests()

    def tree(d):
        return MerkleTree.build(TOKEN_MIN, TOKEN_MIN, ((token_of(k), k, g) for k, g in d.items()))

    def scan(d):
        return lambda rs: [(token_of(k), k, g) for k, g in d.items()
                           if any(in_range(token_of(k), lo, hi) for lo, hi in rs)]

    leaves = {tree(dx).leaf_of(token_of(k)) for k in (*dx, *dy)}
    result = run_local(Initiator(tree(dx), force_leaves=leaves), Responder(tree(dy)),
                       scan(dx), scan(dy))
    for key in result.push:
        y.receive(key, x.data[key])
    for key in result.fetch:
        x.receive(key, y.data[key])
    if conf is not None:
        conf.record_all(result.matched, [x.name, y.name])


def test_old_replica_cannot_resurrect_a_collected_delete():
    """The scenario of issue 5: delete, collect after grace, an old replica comes back."""
    a, b, c, d = (Replica(n) for n in "abcd")
    key = b"user:42"
    # t=0: the key is written at ONE... and replicated everywhere
    first = v.update([], {}, "a", b"v1", now_ms=0)
    for r in (a, b, c):
        r.receive(key, first)
    # c goes away; the preference list becomes a, b, d (d streams the data)
    d.receive(key, a.data[key])
    # t=1000: deleted with the context of v1, on a; repair spreads it to b and d
    deleted = v.update(a.data[key], v.context_of(a.data[key]), "a", b"", tombstone=True,
                       now_ms=1000)
    a.data[key] = deleted
    conf = Confirmations()
    _anti_entropy(a, b, conf)
    _anti_entropy(a, d, conf)
    # a repair that moved the tombstone does not confirm it: the peer's digest differed
    assert conf.holders(key, version_digest(a.data[key])) == frozenset()
    assert b.visible(key) == d.visible(key) == [] and c.visible(key) == [b"v1"]
    # the next sweep (forcing the candidate's leaf) sees equal digests: confirmed
    _anti_entropy(a, b, conf)
    _anti_entropy(a, d, conf)
    holders = conf.holders(key, version_digest(a.data[key]))
    assert holders == {"a", "b", "d"}
    pref = ["a", "b", "d"]
    early = purge_decision(a.data[key], now_ms=1000 + GRACE, grace_ms=GRACE,
                           preference_list=pref, confirmed=holders)
    assert not early
    # with c still in the preference list the tombstone would be kept: c never confirmed
    assert not purge_decision(a.data[key], now_ms=10**9, grace_ms=GRACE,
                              preference_list=["a", "b", "c"], confirmed=holders)
    now = 1000 + GRACE + 1
    assert purge_decision(a.data[key], now_ms=now, grace_ms=GRACE, preference_list=pref,
                          confirmed=holders)
    for r in (a, b, d):
        r.purge(key)
    # c comes back after more than the grace period, still holding v1
    assert needs_catch_up(last_alive_ms=500, now_ms=now + 5, grace_ms=GRACE)
    # its push (anti-entropy, read repair or a hint) is refused everywhere
    for r in (a, b, d):
        assert r.receive(key, c.data[key]) == first
        assert r.visible(key) == []
    _anti_entropy(c, a)
    _anti_entropy(c, b)
    assert a.visible(key) == b.visible(key) == d.visible(key) == []
    # catch-up: c drops what its peers' markers refuse
    accepted, dropped = split_purged(a.markers[key], c.data[key])
    assert dropped == first and accepted == []
    c.data[key] = accepted
    assert c.visible(key) == []
    # a write made after the purge (a fresh actor epoch) is accepted everywhere
    again = v.update([], {}, "c@2", b"v2", now_ms=now + 10)
    c.data[key] = again
    _anti_entropy(c, a)
    assert a.visible(key) == [b"v2"]


def test_without_a_collected_tombstone_the_delete_wins_by_merge():
    """Past the grace period but not collected (a replica never confirmed): merge deletes."""
    a, c = Replica("a"), Replica("c")
    key = b"k"
    first = v.update([], {}, "a", b"v1", now_ms=0)
    a.receive(key, first)
    c.receive(key, first)
    a.data[key] = v.update(a.data[key], v.context_of(a.data[key]), "a", b"", tombstone=True,
                           now_ms=1000)
    _anti_entropy(c, a)
    assert a.visible(key) == c.visible(key) == []
