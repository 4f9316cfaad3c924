"""Users, roles and tokens: the pure part of client authentication (no I/O, no clock).

Roles are ordered: readonly < readwrite < admin. A user record (kept in the Raft metadata
group, see services/auth.py) holds the role, a scrypt password hash and a generation; a
token is `TokenClaims` (proto/.../security.proto) plus an HMAC-SHA256 under the cluster's
token key, so any node can check any node's tokens without asking anyone. Bumping the
user's generation (password change, role change, `kv user revoke`, delete) invalidates the
tokens issued before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import security_pb2 as spb

__all__ = ["RESERVED_PREFIX", "ROLES", "AuthError", "UserRecord", "allows", "check_password",
           "hash_password", "make_token", "meta_needed", "read_token"]

READONLY, READWRITE, ADMIN = "readonly", "readwrite", "admin"
ROLES = (READONLY, READWRITE, ADMIN)
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MAX_TOKEN = 4096
MAX_PASSWORD = 1024


class AuthError(ValueError):
    """Credentials that do not authenticate; the message says why (never which secret)."""


def allows(role: str, needed: str) -> bool:
    """Whether `role` may do what needs `needed`."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


# Metadata keys under this prefix hold the users' records and the token key
# (services/auth.py): only admins read or write them, whatever else a role may do.
RESERVED_PREFIX = "auth/"

# What each metadata command needs, apart from keys under RESERVED_PREFIX. Lease expiry
# and checkpoints are the leader's own bookkeeping: no client sends them but an admin.
_COMMAND_ROLES = {
    "put": READWRITE, "delete": READWRITE, "cas": READWRITE, "register": READWRITE,
    "lease_grant": READWRITE, "lease_keepalive": READWRITE, "lease_revoke": READWRITE,
    "lock_acquire": READWRITE, "lock_release": READWRITE,
    "lease_expire": ADMIN, "lease_checkpoint": ADMIN,
}


def _reserved(key: str, prefix: bool) -> bool:
    """Whether a key (or, with `prefix`, any key starting with it) is reserved."""
    return key.startswith(RESERVED_PREFIX) or (prefix and RESERVED_PREFIX.startswith(key))


def meta_needed(req: mpb.MetaRequest) -> tuple[str, str]:
    """The role a metadata request needs, and what it does (for the refusal's message).

    Per prefix: keys under RESERVED_PREFIX (users, token key) need admin, for reads too,
    and so does a prefix read or watch that covers them (e.g. the prefix "" or "au").
    Elsewhere: reads, watches and lease queries need readonly; writes, sessions, leases
    and locks (acquire, wait, release) need readwrite.
    """
    body = req.WhichOneof("body")
    if body in ("read", "watch"):
        q = req.read if body == "read" else req.watch
        if _reserved(q.key, q.prefix):
            return ADMIN, f"{body} {q.key!r}{' (prefix)' if q.prefix else ''}: keys under " \
                          f"{RESERVED_PREFIX!r} are the users' (admin only)"
        return READONLY, f"{body} metadata keys"
    if body == "lease_query":
        return READONLY, "query leases"
    if body == "ring_read":
        return READONLY, "read the committed ring"
    if body == "lock_wait":
        return READWRITE, "wait for a lock"
    if body == "command":
        op = req.command.WhichOneof("op")
        needed = _COMMAND_ROLES.get(op or "", ADMIN)
        key = {"put": req.command.put.key, "delete": req.command.delete.key,
               "cas": req.command.cas.key}.get(op or "")
        if key is not None and _reserved(key, False):
            return ADMIN, f"{op} {key!r}: keys under {RESERVED_PREFIX!r} are the users' " \
                          "(admin only; use `kv user`)"
        doing = {"register": "open a write session"}.get(op or "", (op or "send an empty "
                                                                  "command").replace("_", " "))
        return needed, f"{doing} in the metadata group"
    return ADMIN, "send an empty metadata request"


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    role: str
    salt: str        # hex
    hash: str        # hex scrypt(password, salt)
    generation: int

    def to_json(self) -> str:
        return json.dumps({"role": self.role, "salt": self.salt, "hash": self.hash,
                           "gen": self.generation}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, text: str) -> UserRecord:
        try:
            obj = json.loads(text)
            rec = cls(name, str(obj["role"]), str(obj["salt"]), str(obj["hash"]),
                      int(obj["gen"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"user record of {name!r} is damaged: {exc}") from None
        if rec.role not in ROLES:
            raise AuthError(f"user record of {name!r} has unknown role {rec.role!r}")
        return rec


def hash_password(password: str, salt: bytes) -> str:
    if not password or len(password) > MAX_PASSWORD:
        raise AuthError(f"a password must have 1..{MAX_PASSWORD} characters")
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT, dklen=32).hex()


def check_password(record: UserRecord, password: str) -> bool:
    if not password or len(password) > MAX_PASSWORD:
        return False
    try:
        salt = bytes.fromhex(record.salt)
    except ValueError:
        return False
    # Bytes, not str: compare_digest refuses non-ASCII strings (a damaged record must
    # fail the check, not raise; found by fuzzing, tests/fuzz/regressions/user_record).
    return hmac.compare_digest(hash_password(password, salt).encode(),
                               record.hash.encode("utf-8", "replace"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(key: bytes, claims: spb.TokenClaims) -> str:
    body = claims.SerializeToString()
    return _b64(body) + "." + _b64(hmac.new(key, body, hashlib.sha256).digest())


def read_token(key: bytes, token: str, now_ms: int) -> spb.TokenClaims:
    """The claims of a token signed with `key` and not expired at `now_ms`; else AuthError."""
    if not token or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise AuthError("malformed token")
    body_text, mac_text = token.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise AuthError("malformed token") from None
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
        raise AuthError("token signature does not verify (forged, or from another cluster)")
    claims = spb.TokenClaims()
    try:
        claims.ParseFromString(body)
    except DecodeError:
        raise AuthError("malformed token") from None
    if claims.expires_at_ms <= now_ms:
        raise AuthError("token expired; log in again")
    if claims.role not in ROLES or not claims.user:
        raise AuthError("malformed token")
    return claims
