"""Client authentication on a node: users in the Raft metadata group, tokens, roles.

Everything this feature keeps in the metadata group goes through `MetaUsers` (two key
shapes, `auth/users/NAME` and `auth/token-key`, read and written with the group's generic
get/put/cas requests), so moving it to another metadata API is one class to port.

Lookups are cached for `cache_ttl` seconds (default 5): a revoked token or a changed role
takes effect on every node within that time. Logins always read the user afresh. When the
metadata group cannot be reached (a node cut off from it), the last record read is used for
up to `max_stale` seconds (default 600): such a node keeps serving the users it knew, and
learns of revocations once it reaches the group again. With `state_path` (the node's data
directory) what was read is kept on disk as well, so a node restarted while cut off knows
the same (for the same max_stale, by wall clock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kvstore._proto import security_pb2 as spb
from kvstore.core import auth
from kvstore.core.auth import AuthError, UserRecord

log = logging.getLogger(__name__)

USER_PREFIX = "auth/users/"
TOKEN_KEY = "auth/token-key"

# A metadata request (the dict protocol of RaftDriver.handle / `kv meta`) -> its reply.
MetaRequest = Callable[[dict], Awaitable[dict]]


class MetaUnavailable(Exception):
    """The metadata group did not answer; the caller should retry."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    via: str  # "token", "certificate", "node"


class MetaUsers:
    """Users and the token key in the metadata group (the only place that knows the keys)."""

    def __init__(self, request: MetaRequest) -> None:
        self.request = request

    async def _call(self, req: dict) -> dict:
        if req["op"] == "cas":  # the metadata group takes writes within a client session
            session = await self.request({"op": "register"})
            if not session.get("ok"):
                raise MetaUnavailable(session.get("error") or "cannot open a session")
            req = dict(req, client_id=session["client_id"])
        reply = await self.request(req)
        if not reply.get("ok") and reply.get("error") not in (None, "", "compare failed"):
            raise MetaUnavailable(reply["error"])
        return reply

    async def get(self, name: str) -> UserRecord | None:
        reply = await self._call({"op": "get", "key": USER_PREFIX + name})
        value = reply.get("value")
        return None if value is None else UserRecord.from_json(name, value)

    async def put(self, name: str, role: str | None, password: str | None,
                  expected: UserRecord | None, delete: bool = False) -> UserRecord | None:
        """Create, change (role, password, generation+1) or delete a user, compare-and-set
        on the record read before; returns the new record (None when deleted)."""
        if role is not None and role not in auth.ROLES:
            raise AuthError(f"role {role!r} must be one of {', '.join(auth.ROLES)}")
        new: UserRecord | None = None
        if not delete:
            if expected is None and (role is None or password is None):
                raise AuthError("a new user needs a role and a password")
            salt, hashed = (expected.salt, expected.hash) if expected else ("", "")
            if password is not None:
                raw = os.urandom(16)
                salt, hashed = raw.hex(), auth.hash_password(password, raw)
            new = UserRecord(name, role or expected.role, salt, hashed,
                             (expected.generation if expected else 0) + 1)
        reply = await self._call({"op": "cas", "key": USER_PREFIX + name,
                                  "expected": expected.to_json() if expected else None,
                                  "value": new.to_json() if new else None})
        if not reply.get("ok"):
            raise AuthError(f"user {name!r} changed meanwhile; retry")
        return new

    async def token_key(self) -> bytes:
        reply = await self._call({"op": "get", "key": TOKEN_KEY})
        if reply.get("value"):
            return bytes.fromhex(reply["value"])
        fresh = os.urandom(32).hex()
        reply = await self._call({"op": "cas", "key": TOKEN_KEY, "expected": None,
                                  "value": fresh})
        if reply.get("ok"):
            return bytes.fromhex(fresh)
        return bytes.fromhex(reply["previous"])  # another node created it first


class AuthService:
    def __init__(self, node_id: str, users: MetaUsers, token_ttl: float = 900.0,
                 cache_ttl: float = 5.0, max_stale: float = 600.0,
                 clock_ms: Callable[[], int] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 state_path: Path | str | None = None) -> None:
        self.node_id = node_id
        self.users = users
        self.token_ttl = token_ttl
        self.cache_ttl = cache_ttl
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.monotonic = monotonic
        self._key: bytes | None = None
        # name -> (checked at, read at, record): checked at most every cache_ttl; when the
        # group cannot be reached, what was read is used for up to max_stale seconds.
        self._cache: dict[str, tuple[float, float, UserRecord | None]] = {}
        self.max_stale = max_stale
        self.stats = {"logins": 0, "logins_failed": 0}
        # What was read, kept on disk too (`state_path`), so that a node restarted while cut
        # off from the metadata group still knows the users for max_stale after reading
        # them: name -> (read at, wall clock ms; record JSON or None), and the token key.
        self.state_path = Path(state_path) if state_path else None
        self._known: dict[str, tuple[int, str | None]] = {}
        self._load()

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            obj = json.loads(self.state_path.read_text())
            key = obj.get("token_key")
            self._key = bytes.fromhex(key) if key else None
            self._known = {str(n): (int(v[0]), v[1]) for n, v in obj["users"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring %s (%s): users are read from the metadata group",
                        self.state_path, exc)
            self._key, self._known = None, {}

    async def _save(self) -> None:
        if self.state_path is None:
            return
        data = json.dumps({"token_key": self._key.hex() if self._key else None,
                           "users": {n: list(v) for n, v in self._known.items()}},
                          sort_keys=True).encode()
        path = self.state_path

        def write() -> None:
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    async def _token_key(self) -> bytes:
        if self._key is None:
            self._key = await self.users.token_key()
            await self._save()
        return self._key

    def _remembered(self, name: str) -> UserRecord | bool | None:
        """A record kept on disk and read less than max_stale ago; False if there is none."""
        known = self._known.get(name) if self.state_path is not None else None
        if known is None or self.clock_ms() - known[0] > self.max_stale * 1000:
            return False
        return None if known[1] is None else UserRecord.from_json(name, known[1])

    async def _remember(self, name: str, record: UserRecord | None) -> None:
        if self.state_path is None:
            return
        text = record.to_json() if record else None
        known = self._known.get(name)
        now_ms = self.clock_ms()
        if known is not None and known[1] == text and now_ms - known[0] < 60_000:
            return  # written less than a minute ago, unchanged
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[name] = (now_ms, text)
        await self._save()

    async def _user(self, name: str, fresh: bool = False) -> UserRecord | None:
        now = self.monotonic()
        cached = self._cache.get(name)
        if cached is not None and not fresh and now - cached[0] < self.cache_ttl:
            return cached[2]
        try:
            record = await self.users.get(name)
        except MetaUnavailable:
            # The metadata group cannot be reached (this node is cut off, or not a member
            # and no leader answers): go on with what we knew, for at most max_stale.
            if cached is None or now - cached[1] > self.max_stale:
                remembered = self._remembered(name)
                if remembered is False:
                    raise
                log.warning("user %r: metadata group unreachable, using the record kept "
                            "on disk", name)
                age = (self.clock_ms() - self._known[name][0]) / 1000
                self._cache[name] = (now, now - age, remembered)  # retry in cache_ttl
                return remembered
            log.warning("user %r: metadata group unreachable, using what was read %.0f s "
                        "ago", name, now - cached[1])
            self._cache[name] = (now, cached[1], cached[2])  # retry in cache_ttl
            return cached[2]
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = (now, now, record)
        await self._remember(name, record)
        return record

    async def login(self, user: str, password: str) -> spb.LoginReply:
        record = await self._user(user, fresh=True)
        ok = record is not None and await asyncio.to_thread(auth.check_password, record,
                                                            password)
        if not ok:
            self.stats["logins_failed"] += 1
            raise AuthError("unknown user or wrong password")
        self.stats["logins"] += 1
        expires = self.clock_ms() + int(self.token_ttl * 1000)
        claims = spb.TokenClaims(user=user, role=record.role, expires_at_ms=expires,
                                 generation=record.generation, issuer=self.node_id)
        return spb.LoginReply(token=auth.make_token(await self._token_key(), claims),
                              expires_at_ms=expires, role=record.role)

    async def from_token(self, token: str) -> Principal:
        claims = auth.read_token(await self._token_key(), token, self.clock_ms())
        record = await self._user(claims.user)
        if record is None or record.generation != claims.generation:
            raise AuthError("token revoked (the user was changed, revoked or deleted); log in "
                            "again")
        return Principal(claims.user, record.role, "token")

    async def from_certificate(self, name: str) -> Principal:
        record = await self._user(name)
        if record is None:
            raise AuthError(f"client certificate {name!r} names no user; add it with "
                            f"`kv user add {name} --role ...`")
        return Principal(name, record.role, "certificate")


# ---- the typed metadata API (proto meta.proto) -----------------------------------------------
# MetaUsers speaks a small dict protocol (get / cas); these two functions map it onto the
# Meta service's MetaRequest / MetaReply, so the node (RaftDriver.handle_meta) and the CLI
# (the Meta gRPC service) share one translation.

def to_meta_request(req: dict):
    from kvstore._proto import meta_pb2 as mpb

    if req["op"] == "get":
        return mpb.MetaRequest(read=mpb.MetaRead(key=req["key"], serializable=True))
    if req["op"] == "register":
        return mpb.MetaRequest(command=mpb.MetaCommand(register=mpb.RegisterClient()))
    expected, value = req.get("expected"), req.get("value")
    cmd = mpb.MetaCommand(cas=mpb.MetaCas(
        key=req["key"], expect_absent=expected is None, expected=expected or "",
        delete=value is None, value=value or ""))
    cmd.session.client_id, cmd.session.seq = req["client_id"], 1  # one write per session
    return mpb.MetaRequest(command=cmd)


def from_meta_reply(req: dict, reply) -> dict:
    from kvstore._proto import meta_pb2 as mpb

    code = reply.result.code
    if req["op"] == "register":
        if code != mpb.META_OK:
            return {"ok": False, "error": reply.result.error or mpb.MetaCode.Name(code)}
        return {"ok": True, "client_id": reply.result.client_id}
    if req["op"] == "get":
        if code not in (mpb.META_OK, mpb.META_NOT_FOUND):
            return {"ok": False, "error": reply.result.error or mpb.MetaCode.Name(code)}
        kv = next((k for k in reply.kvs if k.key == req["key"]), None)
        return {"ok": True, "value": kv.value if kv else None, "found": kv is not None}
    previous = reply.result.prev.value if reply.result.had_prev else None
    if code == mpb.META_OK:
        return {"ok": True, "previous": previous}
    if code == mpb.META_COMPARE_FAILED:
        return {"ok": False, "error": "compare failed", "previous": previous}
    return {"ok": False, "error": reply.result.error or mpb.MetaCode.Name(code)}
