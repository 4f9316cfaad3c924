"""Per-prefix roles of the metadata service (core/auth.py `meta_needed`): the users' keys
are admin only, other keys readable by readonly and writable by readwrite, with leases and
locks; prefix reads and watches that would cover the users' keys need admin."""

from __future__ import annotations

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.auth import ADMIN, READONLY, READWRITE, RESERVED_PREFIX, allows, meta_needed


def command(**op) -> mpb.MetaRequest:
    return mpb.MetaRequest(command=mpb.MetaCommand(**op))


@pytest.mark.parametrize(("request_", "needed"), [
    (mpb.MetaRequest(read=mpb.MetaRead(key="app/config")), READONLY),
    (mpb.MetaRequest(read=mpb.MetaRead(key="app/", prefix=True)), READONLY),
    (mpb.MetaRequest(watch=mpb.MetaWatch(key="app/", prefix=True)), READONLY),
    (mpb.MetaRequest(lease_query=mpb.LeaseQuery()), READONLY),
    (command(put=mpb.MetaPut(key="app/config", value="1")), READWRITE),
    (command(delete=mpb.MetaDelete(key="app/config")), READWRITE),
    (command(cas=mpb.MetaCas(key="app/leader", expect_absent=True, value="me")), READWRITE),
    (command(register=mpb.RegisterClient()), READWRITE),
    (command(lease_grant=mpb.LeaseGrant(ttl_ms=1000)), READWRITE),
    (command(lease_keepalive=mpb.LeaseKeepAlive(lease=1)), READWRITE),
    (command(lease_revoke=mpb.LeaseRevoke(lease=1)), READWRITE),
    (command(lock_acquire=mpb.LockAcquire(name="auth/x", lease=1)), READWRITE),  # lock names
    (command(lock_release=mpb.LockRelease(name="jobs", lease=1, token=3)), READWRITE),
    (mpb.MetaRequest(lock_wait=mpb.LockWait(name="jobs", lease=1)), READWRITE),
    # the users' keys, and whatever could reach them
    (mpb.MetaRequest(read=mpb.MetaRead(key=RESERVED_PREFIX + "users/root")), ADMIN),
    (mpb.MetaRequest(read=mpb.MetaRead(key="", prefix=True)), ADMIN),
    (mpb.MetaRequest(read=mpb.MetaRead(key="au", prefix=True)), ADMIN),
    (mpb.MetaRequest(watch=mpb.MetaWatch(key="auth", prefix=True)), ADMIN),
    (mpb.MetaRequest(read=mpb.MetaRead(key="auth/token-key")), ADMIN),
    (command(put=mpb.MetaPut(key="auth/users/eve", value="{}")), ADMIN),
    (command(cas=mpb.MetaCas(key="auth/token-key", expect_absent=True)), ADMIN),
    (command(delete=mpb.MetaDelete(key="auth/users/root")), ADMIN),
    # the leader's own bookkeeping, and nothing at all
    (command(lease_expire=mpb.LeaseExpire(lease=1)), ADMIN),
    (command(lease_checkpoint=mpb.LeaseCheckpoint()), ADMIN),
    (command(), ADMIN),
    (mpb.MetaRequest(), ADMIN),
])
def test_the_role_each_request_needs(request_, needed):
    got, what = meta_needed(request_)
    assert got == needed, what
    assert what


def test_a_key_that_only_looks_like_the_reserved_prefix_is_not_reserved():
    assert meta_needed(mpb.MetaRequest(read=mpb.MetaRead(key="authors/1")))[0] == READONLY
    assert meta_needed(mpb.MetaRequest(read=mpb.MetaRead(key="authors/", prefix=True)))[0] \
        == READONLY
    assert meta_needed(command(put=mpb.MetaPut(key="auth", value="x")))[0] == READWRITE


def test_the_refusal_names_the_reserved_prefix():
    needed, what = meta_needed(mpb.MetaRequest(read=mpb.MetaRead(key="", prefix=True)))
    assert not allows(READWRITE, needed) and RESERVED_PREFIX in what
