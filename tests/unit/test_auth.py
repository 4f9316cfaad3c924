"""Tokens, passwords and roles (core/auth.py) and users in the metadata state machine
(services/auth.py, driven through the real MetaStateMachine)."""

from __future__ import annotations

import asyncio

import pytest

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import security_pb2 as spb
from kvstore.core import auth
from kvstore.core.auth import AuthError
from kvstore.core.meta import MetaStateMachine
from kvstore.services.auth import (
    AuthService,
    MetaUnavailable,
    MetaUsers,
    from_meta_reply,
    to_meta_request,
)

KEY = b"k" * 32


def claims(**kw) -> spb.TokenClaims:
    base = {"user": "alice", "role": "readwrite", "expires_at_ms": 2000, "generation": 1}
    return spb.TokenClaims(**{**base, **kw})


def test_token_round_trip_and_refusals():
    token = auth.make_token(KEY, claims())
    assert auth.read_token(KEY, token, 1999).user == "alice"
    with pytest.raises(AuthError, match="expired"):
        auth.read_token(KEY, token, 2000)
    with pytest.raises(AuthError, match="signature"):
        auth.read_token(b"x" * 32, token, 0)
    body, mac = token.split(".")
    forged = auth.make_token(b"other", claims(role="admin")).split(".")[0] + "." + mac
    with pytest.raises(AuthError, match="signature"):
        auth.read_token(KEY, forged, 0)
    for bad in ("", ".", "a.b.c", "!!!.???", "x" * 5000, body):
        with pytest.raises(AuthError):
            auth.read_token(KEY, bad, 0)
    with pytest.raises(AuthError, match="malformed"):  # signed, but not a valid role
        auth.read_token(KEY, auth.make_token(KEY, claims(role="root")), 0)


def test_roles_are_ordered():
    assert auth.allows("admin", "readonly") and auth.allows("readwrite", "readwrite")
    assert not auth.allows("readonly", "readwrite") and not auth.allows("readwrite", "admin")
    assert not auth.allows("nobody", "readonly")


def test_passwords():
    rec = auth.UserRecord("a", "readonly", "00" * 16, auth.hash_password("pw", bytes(16)), 1)
    assert auth.check_password(rec, "pw")
    assert not auth.check_password(rec, "pw2") and not auth.check_password(rec, "")
    assert auth.UserRecord.from_json("a", rec.to_json()) == rec
    for bad in ("", "{}", "[1]", '{"role":"god","salt":"","hash":"","gen":1}'):
        with pytest.raises(AuthError):
            auth.UserRecord.from_json("a", bad)


class Meta:
    """The metadata group as the node sees it: requests translated to the typed API
    (services/auth.py) and applied to the real MetaStateMachine."""

    def __init__(self) -> None:
        self.sm = MetaStateMachine()
        self.index = 0

    async def request(self, req: dict) -> dict:
        typed = to_meta_request(req)
        if typed.WhichOneof("body") == "read":
            value = self.sm.get(typed.read.key)
            kvs = [mpb.KeyValue(key=typed.read.key, value=value)] if value is not None else []
            return from_meta_reply(req, mpb.MetaReply(kvs=kvs))
        self.index += 1
        res = self.sm.apply(self.index, typed.command.SerializeToString())
        return from_meta_reply(req, mpb.MetaReply(result=res))


def test_login_verify_revoke_and_expiry():
    meta = Meta()
    now = [1_000_000]
    mono = [0.0]
    users = MetaUsers(meta.request)
    svc = AuthService("n1", users, token_ttl=60, cache_ttl=5, clock_ms=lambda: now[0],
                      monotonic=lambda: mono[0])
    other = AuthService("n2", MetaUsers(meta.request), clock_ms=lambda: now[0],
                        monotonic=lambda: mono[0])

    async def run():
        with pytest.raises(AuthError, match="needs a role"):
            await users.put("alice", None, "pw", None)
        await users.put("alice", "readwrite", "pw", None)
        with pytest.raises(AuthError, match="unknown user or wrong password"):
            await svc.login("alice", "nope")
        with pytest.raises(AuthError, match="unknown user or wrong password"):
            await svc.login("mallory", "pw")
        reply = await svc.login("alice", "pw")
        assert reply.role == "readwrite" and reply.expires_at_ms == now[0] + 60_000
        p = await other.from_token(reply.token)  # any node checks any node's tokens
        assert (p.name, p.role) == ("alice", "readwrite")
        # Revoke: the generation moves; caches see it once their entry is older than 5 s.
        await users.put("alice", None, None, await users.get("alice"))
        assert (await other.from_token(reply.token)).name == "alice"  # cached
        mono[0] += 5.1
        with pytest.raises(AuthError, match="revoked"):
            await other.from_token(reply.token)
        fresh = await svc.login("alice", "pw")
        now[0] += 60_000
        with pytest.raises(AuthError, match="expired"):
            await svc.from_token(fresh.token)
        # A stale compare-and-set loses: concurrent admins cannot clobber each other.
        old = await users.get("alice")
        await users.put("alice", "admin", None, old)
        with pytest.raises(AuthError, match="changed meanwhile"):
            await users.put("alice", "readonly", None, old)
        assert svc.stats == {"logins": 2, "logins_failed": 2}
        # Cut off from the group: what was read is used for up to max_stale, no longer.
        working = meta.request

        async def unreachable(req):
            return {"ok": False, "error": "no raft leader known"}

        mono[0] += 5.1
        token = (await svc.login("alice", "pw")).token
        assert (await other.from_token(token)).role == "admin"  # read while reachable
        meta_users = other.users
        meta_users.request = unreachable
        mono[0] += 5.1
        assert (await other.from_token(token)).role == "admin"  # stale, but known
        mono[0] += 601
        with pytest.raises(MetaUnavailable):
            await other.from_token(token)
        meta_users.request = working
        # The token key is made once, by whichever node asks first.
        assert await users.token_key() == await MetaUsers(meta.request).token_key()

    asyncio.run(run())


def test_a_restarted_node_cut_off_from_the_group_knows_what_it_read(tmp_path):
    meta = Meta()
    now = [1_000_000]
    path = tmp_path / "auth-cache.json"

    async def unreachable(req):
        return {"ok": False, "error": "no raft leader known"}

    async def run():
        users = MetaUsers(meta.request)
        await users.put("bob", "readonly", "pw", None)
        first = AuthService("n5", users, clock_ms=lambda: now[0], state_path=path)
        token = (await first.login("bob", "pw")).token
        assert path.stat().st_mode & 0o077 == 0  # it holds the token key
        # "Restarted" while the group cannot be reached: the disk copy answers.
        again = AuthService("n5", MetaUsers(unreachable), clock_ms=lambda: now[0],
                            state_path=path)
        assert (await again.from_token(token)).name == "bob"
        now[0] += 601_000  # ... for max_stale (600 s) after it was read, no longer
        again = AuthService("n5", MetaUsers(unreachable), clock_ms=lambda: now[0],
                            state_path=path)
        with pytest.raises(MetaUnavailable):
            await again.from_token(token)
        path.write_text("{not json")  # a damaged file is ignored, not fatal
        AuthService("n5", MetaUsers(unreachable), state_path=path)

    asyncio.run(run())
