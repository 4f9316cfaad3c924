"""The metadata state machine (kvstore/core/meta.py): sessions, leases, locks, snapshots."""

from __future__ import annotations

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore.core import meta
from kvstore.core.meta import LeaseClock, MetaStateMachine, command


class Driver:
    """Applies commands at consecutive indexes, as the raft log would."""

    def __init__(self, sm: MetaStateMachine | None = None) -> None:
        self.sm = sm or MetaStateMachine()

    def apply(self, cmd: mpb.MetaCommand | bytes) -> mpb.MetaResult:
        data = cmd if isinstance(cmd, bytes) else cmd.SerializeToString()
        return self.sm.apply(self.sm.applied + 1, data)

    def register(self) -> int:
        res = self.apply(command(register=mpb.RegisterClient()))
        assert res.code == mpb.META_OK and res.client_id == res.revision
        return res.client_id


def test_a_retried_command_applies_once_and_returns_the_first_result() -> None:
    d = Driver()
    cid = d.register()
    cas = meta.encode_cas("lock-0", None, "owner-0", (cid, 1, 0))
    first = d.apply(cas)
    assert first.code == mpb.META_OK and not first.duplicate
    other = d.register()
    assert d.apply(meta.encode_put("lock-0", "thief", (other, 1, 0))).code == mpb.META_OK
    again = d.apply(cas)  # the retry: not "compare failed", the first answer
    assert again.code == mpb.META_OK and again.duplicate and again.revision == first.revision
    assert d.sm.get("lock-0") == "thief"  # and not applied a second time
    assert d.sm.applied_ops == 4


def test_acknowledged_and_forgotten_results_are_never_applied_again() -> None:
    d = Driver()
    cid = d.register()
    put1 = meta.encode_put("k", "1", (cid, 1, 0))
    assert d.apply(put1).code == mpb.META_OK
    assert d.apply(meta.encode_put("k", "2", (cid, 2, 1))).code == mpb.META_OK  # acks seq 1
    late = d.apply(put1)
    assert late.code == mpb.META_SESSION_EXPIRED and d.sm.get("k") == "2"
    # more than MAX_RESULTS unacknowledged results: the oldest are forgotten, not re-applied
    for seq in range(3, 3 + meta.MAX_RESULTS + 1):
        d.apply(meta.encode_put("n", str(seq), (cid, seq, 1)))
    assert d.apply(meta.encode_put("n", "x", (cid, 3, 1))).code == mpb.META_SESSION_EXPIRED
    assert d.sm.get("n") == str(3 + meta.MAX_RESULTS)
    unknown = d.apply(meta.encode_put("k", "3", (999_999, 1, 0)))
    assert unknown.code == mpb.META_SESSION_EXPIRED and d.sm.get("k") == "2"


def test_the_session_table_is_bounded_least_recently_used_first() -> None:
    d = Driver(MetaStateMachine(max_sessions=3))
    a, b, c = d.register(), d.register(), d.register()
    d.apply(meta.encode_put("x", "1", (a, 1, 0)))  # a is now the most recently used
    d.register()  # evicts b
    assert set(d.sm.sessions) == {a, c, d.sm.applied}
    assert d.apply(meta.encode_put("x", "2", (b, 1, 0))).code == mpb.META_SESSION_EXPIRED


def test_sessions_leases_and_locks_survive_a_snapshot() -> None:
    d = Driver()
    cid = d.register()
    lease = d.apply(command((cid, 1, 0), lease_grant=mpb.LeaseGrant(ttl_ms=5000))).lease.id
    d.apply(meta.encode_put("eph", "v", (cid, 2, 0), lease=lease))
    tok = d.apply(command((cid, 3, 0), lock_acquire=mpb.LockAcquire(name="L", lease=lease)))
    image = d.sm.snapshot()
    restored = MetaStateMachine()
    restored.restore(image, d.sm.applied)
    assert restored.snapshot() == image
    d2 = Driver(restored)
    again = d2.apply(command((cid, 3, 0), lock_acquire=mpb.LockAcquire(name="L", lease=lease)))
    assert again.duplicate and again.token == tok.token
    assert restored.kv["eph"].lease == lease and restored.lock_info("L").holder == lease


def test_keys_carry_create_and_mod_revisions() -> None:
    d = Driver()
    cid = d.register()
    r1 = d.apply(meta.encode_put("k", "1", (cid, 1, 0)))
    r2 = d.apply(meta.encode_put("k", "2", (cid, 2, 1)))
    (kv,) = d.sm.read("k")
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1.revision, r2.revision, 2)
    assert r2.had_prev and r2.prev.value == "1"
    failed = d.apply(meta.encode_cas("k", "1", "3", (cid, 3, 2)))
    assert failed.code == mpb.META_COMPARE_FAILED and failed.prev.value == "2"
    d.apply(meta.encode_put("k2", "x", (cid, 4, 3)))
    assert [k.key for k in d.sm.read("k", prefix=True)] == ["k", "k2"]


def test_a_lease_ends_with_its_keys_and_passes_its_locks_on_in_fifo_order() -> None:
    d = Driver()
    cid = d.register()
    seq = iter(range(1, 100))

    def cmd(**op):
        return d.apply(command((cid, next(seq), 0), **op))

    leases = [cmd(lease_grant=mpb.LeaseGrant(ttl_ms=1000)).lease.id for _ in range(3)]
    cmd(put=mpb.MetaPut(key="eph", value="v", lease=leases[0]))
    grant = cmd(lock_acquire=mpb.LockAcquire(name="L", lease=leases[0]))
    assert grant.code == mpb.META_OK and grant.token == grant.revision
    q1 = cmd(lock_acquire=mpb.LockAcquire(name="L", lease=leases[1]))
    q2 = cmd(lock_acquire=mpb.LockAcquire(name="L", lease=leases[2]))
    assert (q1.code, q1.position, q2.code, q2.position) == (mpb.META_QUEUED, 1, mpb.META_QUEUED, 2)
    # the leader's clock says lease 0 ran out: its key goes, the first waiter gets the lock
    exp = d.apply(command(lease_expire=mpb.LeaseExpire(lease=leases[0], refreshed=leases[0])))
    assert "eph" not in d.sm.kv and leases[0] not in d.sm.leases
    info = d.sm.lock_info("L")
    assert (info.holder, info.token, list(info.waiters)) == (leases[1], exp.revision,
                                                             [leases[2]])
    # a stale release (the old token) never frees the newer holder
    stale = cmd(lock_release=mpb.LockRelease(name="L", lease=leases[1], token=grant.token))
    assert stale.code == mpb.META_NOT_HOLDER and d.sm.lock_info("L").holder == leases[1]
    rel = cmd(lock_release=mpb.LockRelease(name="L", lease=leases[1], token=info.token))
    assert rel.code == mpb.META_OK
    last = d.sm.lock_info("L")
    assert last.holder == leases[2] and last.token == rel.revision > info.token > grant.token
    # unknown leases are refused with a clear error
    bad = cmd(put=mpb.MetaPut(key="x", value="v", lease=12345))
    assert bad.code == mpb.META_NO_LEASE and "12345" in bad.error


def test_an_expiry_racing_a_keepalive_does_not_end_the_lease() -> None:
    d = Driver()
    cid = d.register()
    lease = d.apply(command((cid, 1, 0), lease_grant=mpb.LeaseGrant(ttl_ms=1000))).lease.id
    d.apply(command((cid, 2, 1), lease_keepalive=mpb.LeaseKeepAlive(lease=lease)))
    d.apply(command(lease_expire=mpb.LeaseExpire(lease=lease, refreshed=lease)))
    assert lease in d.sm.leases  # kept alive after the expiry was decided
    # a checkpoint taken before the keepalive does not shorten it either
    d.apply(command(lease_checkpoint=mpb.LeaseCheckpoint(
        as_of=lease, leases=[mpb.LeaseRemaining(lease=lease, remaining_ms=1)])))
    assert d.sm.leases[lease].remaining_ms == 1000


def test_lease_clock_never_early_and_bounded_late_across_a_leader_change() -> None:
    """Leader A: grant at t=0 (TTL 10 s); checkpoints every 1 s; A dies at t=3.5 s. The last
    checkpoint (t=3 s) recorded 7 s left; leader B takes over at t=5 s and expires the lease
    at t=12 s: 2 s late (= checkpoint interval + failover), never before t=10 s."""
    d = Driver()
    cid = d.register()
    a = LeaseClock()
    a.become_leader(d.sm, 0)
    lease = d.apply(command((cid, 1, 0), lease_grant=mpb.LeaseGrant(ttl_ms=10_000))).lease.id
    a.on_applied(d.sm, 0)
    for t in (1000, 2000, 3000):
        cp = [mpb.LeaseRemaining(lease=i, remaining_ms=r) for i, r in a.checkpoint(t)]
        d.apply(command(lease_checkpoint=mpb.LeaseCheckpoint(as_of=d.sm.applied, leases=cp)))
        a.on_applied(d.sm, t)
    assert a.expired(9_999) == [] and a.expired(10_000) == [(lease, lease)]
    b = LeaseClock()
    b.become_leader(d.sm, 5000)
    assert b.expired(11_999) == [] and b.expired(12_000) == [(lease, lease)]
    assert b.remaining(lease, 5000) == 7000


@pytest.mark.parametrize("data", [b"\xff\xfe", b"", mpb.MetaCommand().SerializeToString()])
def test_malformed_commands_are_no_ops_with_an_error(data: bytes) -> None:
    d = Driver()
    res = d.apply(data or b"\x00")
    assert res.code == mpb.META_BAD_REQUEST and d.sm.applied == 1


def test_commands_without_a_session_are_refused() -> None:
    d = Driver()
    res = d.apply(meta.encode_put("k", "v"))
    assert res.code == mpb.META_BAD_REQUEST and "session" in res.error


def test_nul_characters_are_refused_so_no_record_holds_a_run_of_zeros() -> None:
    d = Driver()
    cid = d.register()
    with pytest.raises(ValueError, match="NUL"):
        meta.encode_put("k", "\x00" * 600, (cid, 1, 0))
    raw = command((cid, 1, 0), put=mpb.MetaPut(key="k", value="\x00" * 600))
    assert d.apply(raw).code == mpb.META_BAD_REQUEST and d.sm.get("k") is None
