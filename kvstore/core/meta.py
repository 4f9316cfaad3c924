"""The metadata state machine replicated by Raft (issue 11): a key-value namespace with
compare-and-set, leases with attached keys, locks with FIFO waiters and fencing tokens, and
the client-session table that makes a retried command apply exactly once.

Pure and deterministic - every replica applying the same commands in the same order ends
in the same state and returns the same results - so it can be simulated. Commands are
`MetaCommand` protobuf messages (proto/kvstore/_proto/meta.proto). A malformed command is
applied as a no-op returning META_BAD_REQUEST: it must not crash one replica and not
another.

Revisions are Raft indexes: the revision of a command is the index of its entry. A key's
create/mod revision, a lease's id and a lock's fencing token are all revisions, so they
are unique and grow with the log.

Sessions (the Raft dissertation, section 6.3): a client registers once (its client id is
the revision of the registration), then numbers its commands. The table keeps, per
client, the results of commands not yet acknowledged (at most MAX_RESULTS each) and at
most MAX_SESSIONS clients (least recently used evicted first). A command whose result was
forgotten, or of an unknown client, gets META_SESSION_EXPIRED: its outcome is unknown to
the client, who must check before trying again - never applied twice.

Leases hold no clock here: the leader's driver keeps deadlines (see LeaseClock) and
proposes LeaseExpire; LeaseCheckpoint records the time left so a new leader continues
from it instead of restarting every TTL in full.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from kvstore._proto import meta_pb2 as mpb
from kvstore.core import ringlog
from kvstore.core import txn as txncore

__all__ = [
    "MAX_KEY", "MAX_RESULTS", "MAX_SESSIONS", "MAX_VALUE", "LeaseClock", "MetaStateMachine",
    "command", "encode_cas", "encode_delete", "encode_put", "validate_command",
]

MAX_KEY = 1024
MAX_VALUE = 64 * 1024
MAX_SESSIONS = 4096
MAX_RESULTS = 64
MAX_LEASES = 10_000
MIN_TTL_MS = 100
MAX_TTL_MS = 7 * 24 * 3600 * 1000
MAX_WAITERS = 1000
MAX_EVENTS = 10_000  # watch history kept in memory (not in snapshots)

OK = mpb.META_OK


def _check(key: str, value: str | None) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValueError(f"meta key must be a non-empty string of at most {MAX_KEY} chars")
    if value is not None and (not isinstance(value, str) or len(value) > MAX_VALUE):
        raise ValueError(f"meta value must be a string of at most {MAX_VALUE} chars")
    if "\x00" in key or (value is not None and "\x00" in value):
        # Kept out so that no log record holds a run of zero bytes (docs/raft.md, the
        # torn-record rule relies on it).
        raise ValueError("meta keys and values cannot contain NUL characters")


def command(session: tuple[int, int, int] | None = None, **op) -> mpb.MetaCommand:
    """A MetaCommand with one op, e.g. command((cid, seq, acked), put=mpb.MetaPut(...))."""
    cmd = mpb.MetaCommand(**op)
    if session is not None:
        cid, seq, acked = session
        cmd.session.client_id, cmd.session.seq, cmd.session.acked = cid, seq, acked
    return cmd


def encode_put(key: str, value: str, session: tuple[int, int, int] | None = None,
               lease: int = 0) -> bytes:
    _check(key, value)
    return command(session, put=mpb.MetaPut(key=key, value=value, lease=lease)
                   ).SerializeToString()


def encode_cas(key: str, expected: str | None, new: str | None,
               session: tuple[int, int, int] | None = None, lease: int = 0) -> bytes:
    """Set `key` to `new` (None deletes) only if its value is `expected` (None: absent)."""
    _check(key, expected)
    _check(key, new)
    cas = mpb.MetaCas(key=key, expect_absent=expected is None, expected=expected or "",
                      delete=new is None, value=new or "", lease=lease)
    return command(session, cas=cas).SerializeToString()


def encode_delete(key: str, session: tuple[int, int, int] | None = None) -> bytes:
    _check(key, None)
    return command(session, delete=mpb.MetaDelete(key=key)).SerializeToString()


def validate_command(cmd: mpb.MetaCommand) -> None:
    """Raise ValueError (a message for the user) if `cmd` is malformed."""
    op = cmd.WhichOneof("op")
    if op is None:
        raise ValueError("meta command has no operation")
    if op == "put":
        _check(cmd.put.key, cmd.put.value)
    elif op == "delete":
        _check(cmd.delete.key, None)
    elif op == "cas":
        _check(cmd.cas.key, cmd.cas.expected)
        _check(cmd.cas.key, cmd.cas.value)
    elif op == "lease_grant":
        if not MIN_TTL_MS <= cmd.lease_grant.ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"lease TTL must be between {MIN_TTL_MS / 1000:g} s and "
                             f"{MAX_TTL_MS // 1000} s, not {cmd.lease_grant.ttl_ms / 1000:g} s")
    elif op in ("lock_acquire", "lock_release"):
        msg = getattr(cmd, op)
        _check(msg.name, None)
        if not msg.lease:
            raise ValueError("a lock is held under a lease: give its lease id")
    elif op in ("txn_begin", "txn_decide", "txn_forget"):
        txncore.validate(op, getattr(cmd, op))
    elif op == "ring_change":
        ringlog.validate_change(cmd.ring_change)
    if op not in ("register", "lease_expire", "lease_checkpoint") and not (
            cmd.session.client_id and cmd.session.seq):
        raise ValueError(f"a {op} command needs a client session (client id and seq)")


@dataclass(slots=True)
class _Key:
    value: str
    create: int
    mod: int
    version: int
    lease: int


@dataclass(slots=True)
class _Lease:
    ttl_ms: int
    remaining_ms: int  # time left when last refreshed/checkpointed (a new leader starts here)
    refreshed: int  # revision of the grant or last keepalive
    keys: set[str] = field(default_factory=set)
    locks: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Lock:
    holder: int = 0
    token: int = 0
    waiters: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Session:
    acked: int = 0
    floor: int = 0  # results of seqs <= floor are forgotten
    results: dict[int, bytes] = field(default_factory=dict)


class MetaStateMachine:
    """Applies committed raft entries (empty entries are leader no-ops)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self.kv: dict[str, _Key] = {}
        self.leases: dict[int, _Lease] = {}
        self.locks: dict[str, _Lock] = {}
        self.sessions: OrderedDict[int, _Session] = OrderedDict()
        self.applied = 0
        self.applied_ops = 0  # commands whose effect was applied (not duplicates)
        # Watch history: every key change at revisions >= events_from, in revision order.
        # Kept in memory only: after a restart or a snapshot install it starts afresh, and a
        # watch from an older revision is told so (META_COMPACTED).
        self.events: deque[mpb.MetaEvent] = deque()
        self.events_from = 1
        self.txns = txncore.TxnTable()  # transaction records (issue 12)
        self.ring = ringlog.RingTable()  # the committed ring (issue 15)

    @property
    def data(self) -> dict[str, str]:
        """Key -> value (what replicas are compared on in tests)."""
        return {k: v.value for k, v in self.kv.items()}

    # ---- applying ----------------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> mpb.MetaResult | None:
        """Apply the entry at `index`; None for no-op entries."""
        if index != self.applied + 1:
            raise ValueError(f"apply out of order: {index} after {self.applied}")
        self.applied = index
        if not data:
            return None
        try:
            cmd = mpb.MetaCommand.FromString(data)
            validate_command(cmd)
        except (DecodeError, ValueError) as exc:
            return self._res(mpb.META_BAD_REQUEST, f"bad meta command: {exc}")
        s = cmd.session
        sess = None
        if s.client_id:
            sess = self.sessions.get(s.client_id)
            if sess is None:
                return self._res(mpb.META_SESSION_EXPIRED,
                                 f"client session {s.client_id} is unknown (expired or never "
                                 "registered); the command was not applied now - whether an "
                                 "earlier attempt was is unknown")
            self.sessions.move_to_end(s.client_id)
            if s.acked > sess.acked:
                sess.acked = s.acked
                for seq in [q for q in sess.results if q <= s.acked]:
                    del sess.results[seq]
                sess.floor = max(sess.floor, s.acked)
            cached = sess.results.get(s.seq)
            if cached is not None:
                res = mpb.MetaResult.FromString(cached)
                res.duplicate = True
                return res
            if s.seq <= sess.floor:
                return self._res(mpb.META_SESSION_EXPIRED,
                                 f"the result of command {s.seq} of session {s.client_id} was "
                                 "already acknowledged or forgotten; not applied again")
        res = self._apply_op(index, cmd)
        self.applied_ops += 1
        if sess is not None:
            sess.results[s.seq] = res.SerializeToString()
            while len(sess.results) > MAX_RESULTS:
                oldest = min(sess.results)
                del sess.results[oldest]
                sess.floor = max(sess.floor, oldest)
        return res

    def skip(self, index: int) -> None:
        """Account for a non-command entry (configuration change) at `index`."""
        if index != self.applied + 1:
            raise ValueError(f"apply out of order: {index} after {self.applied}")
        self.applied = index

    def _res(self, code: int, error: str = "", **kw) -> mpb.MetaResult:
        return mpb.MetaResult(code=code, error=error, revision=self.applied, **kw)

    def _apply_op(self, index: int, cmd: mpb.MetaCommand) -> mpb.MetaResult:
        op = cmd.WhichOneof("op")
        if op == "register":
            self.sessions[index] = _Session()
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            return self._res(OK, client_id=index)
        if op == "put":
            return self._write(index, cmd.put.key, cmd.put.value, cmd.put.lease)
        if op == "delete":
            return self._write(index, cmd.delete.key, None, 0)
        if op == "cas":
            c = cmd.cas
            prev = self.kv.get(c.key)
            if (prev is None) != c.expect_absent or (prev is not None and
                                                     prev.value != c.expected):
                r = self._res(mpb.META_COMPARE_FAILED, "compare failed")
                self._fill_prev(r, c.key, prev)
                return r
            return self._write(index, c.key, None if c.delete else c.value, c.lease)
        if op == "lease_grant":
            if len(self.leases) >= MAX_LEASES:
                return self._res(mpb.META_BAD_REQUEST,
                                 f"too many leases ({MAX_LEASES}); revoke unused ones")
            ttl = cmd.lease_grant.ttl_ms
            self.leases[index] = _Lease(ttl, ttl, index)
            return self._res(OK, lease=self.lease_info(index))
        if op == "lease_keepalive":
            lease = self.leases.get(cmd.lease_keepalive.lease)
            if lease is None:
                return self._no_lease(cmd.lease_keepalive.lease)
            lease.remaining_ms, lease.refreshed = lease.ttl_ms, index
            return self._res(OK, lease=self.lease_info(cmd.lease_keepalive.lease))
        if op == "lease_revoke":
            if cmd.lease_revoke.lease not in self.leases:
                return self._no_lease(cmd.lease_revoke.lease)
            info = self.lease_info(cmd.lease_revoke.lease)
            self._end_lease(index, cmd.lease_revoke.lease)
            return self._res(OK, lease=info)
        if op == "lease_expire":
            lease = self.leases.get(cmd.lease_expire.lease)
            if lease is not None and lease.refreshed <= cmd.lease_expire.refreshed:
                self._end_lease(index, cmd.lease_expire.lease)
            return self._res(OK)
        if op == "lease_checkpoint":
            for lr in cmd.lease_checkpoint.leases:
                lease = self.leases.get(lr.lease)
                if lease is not None and lease.refreshed <= cmd.lease_checkpoint.as_of:
                    lease.remaining_ms = max(0, min(lease.ttl_ms, lr.remaining_ms))
            return self._res(OK)
        if op == "lock_acquire":
            return self._acquire(index, cmd.lock_acquire.name, cmd.lock_acquire.lease)
        if op == "lock_release":
            r = cmd.lock_release
            return self._release(index, r.name, r.lease, r.token)
        if op == "ring_change":
            try:
                self.ring.apply(index, cmd.ring_change)
            except ringlog.RingRefused as exc:
                return self._res(mpb.META_COMPARE_FAILED, str(exc))
            return self._res(OK)
        if op in ("txn_begin", "txn_decide", "txn_forget"):
            body = getattr(cmd, op)
            if op == "txn_begin":
                out = self.txns.begin(index, body)
            elif op == "txn_decide":
                out = self.txns.decide(index, body)
            else:
                out = self.txns.forget(body)
            r = self._res(out.code, out.error)
            rec = self.txns.get(body.txn_id)
            if rec is not None:
                r.txn.CopyFrom(rec)
            return r
        return self._res(mpb.META_BAD_REQUEST, f"unknown meta command {op}")

    def _no_lease(self, lease: int) -> mpb.MetaResult:
        return self._res(mpb.META_NO_LEASE, f"lease {lease} not found (expired, revoked or "
                                            "never granted)")

    def _fill_prev(self, r: mpb.MetaResult, key: str, prev: _Key | None) -> None:
        if prev is not None:
            r.had_prev = True
            r.prev.CopyFrom(self._kv_pb(key, prev))

    def _write(self, index: int, key: str, value: str | None, lease: int) -> mpb.MetaResult:
        if lease and lease not in self.leases:
            return self._no_lease(lease)
        prev = self.kv.get(key)
        r = self._res(OK)
        self._fill_prev(r, key, prev)
        if prev is not None and prev.lease:
            self.leases[prev.lease].keys.discard(key)
        if value is None:
            if prev is not None:
                self._event(mpb.MetaEvent.DELETE, index, key, prev)
            self.kv.pop(key, None)
            return r
        k = self.kv[key] = _Key(value, prev.create if prev else index, index,
                                (prev.version if prev else 0) + 1, lease)
        if lease:
            self.leases[lease].keys.add(key)
        self._event(mpb.MetaEvent.PUT, index, key, k)
        return r

    def _event(self, kind: int, index: int, key: str, k: _Key) -> None:
        self.events.append(mpb.MetaEvent(type=kind, revision=index, kv=self._kv_pb(key, k)))
        while len(self.events) > MAX_EVENTS:
            self.events_from = self.events.popleft().revision + 1

    def watch(self, key: str, prefix: bool, start: int, limit: int = 1000
              ) -> tuple[list[mpb.MetaEvent], int] | None:
        """Events on `key` (or under it) at revisions >= `start`, at most `limit`, and the
        revision up to which the answer is complete; None if `start` is older than the
        kept history."""
        start = max(start, 1)
        if start < self.events_from:
            return None
        out: list[mpb.MetaEvent] = []
        for ev in self.events:  # small (bounded); in revision order
            if ev.revision < start:
                continue
            if ev.kv.key == key or (prefix and ev.kv.key.startswith(key)):
                if len(out) >= limit and ev.revision != out[-1].revision:
                    return out, out[-1].revision
                out.append(ev)
        return out, self.applied

    def _end_lease(self, index: int, lease_id: int) -> None:
        lease = self.leases.pop(lease_id)
        for key in sorted(lease.keys):
            self._event(mpb.MetaEvent.DELETE, index, key, self.kv.pop(key))
        for name in sorted(lease.locks):
            lock = self.locks.get(name)
            if lock is None:
                continue
            if lock.holder == lease_id:
                self._pass_on(index, name, lock)
            elif lease_id in lock.waiters:
                lock.waiters.remove(lease_id)
                if not lock.holder and not lock.waiters:
                    del self.locks[name]

    def _pass_on(self, index: int, name: str, lock: _Lock) -> None:
        """The holder is gone: grant the lock to the first waiter (token: this revision)."""
        lock.holder, lock.token = 0, 0
        while lock.waiters:
            nxt = lock.waiters.pop(0)
            if nxt in self.leases:
                lock.holder, lock.token = nxt, index
                return
        del self.locks[name]

    def _acquire(self, index: int, name: str, lease_id: int) -> mpb.MetaResult:
        lease = self.leases.get(lease_id)
        if lease is None:
            return self._no_lease(lease_id)
        lock = self.locks.get(name)
        if lock is None:
            lock = self.locks[name] = _Lock()
        if lock.holder == lease_id:
            return self._res(OK, token=lock.token)
        if not lock.holder:
            lock.holder, lock.token = lease_id, index
            lease.locks.add(name)
            return self._res(OK, token=index)
        if lease_id not in lock.waiters:
            if len(lock.waiters) >= MAX_WAITERS:
                return self._res(mpb.META_BAD_REQUEST,
                                 f"lock {name!r} has {MAX_WAITERS} waiters already")
            lock.waiters.append(lease_id)
            lease.locks.add(name)
        return self._res(mpb.META_QUEUED, position=lock.waiters.index(lease_id) + 1)

    def _release(self, index: int, name: str, lease_id: int, token: int) -> mpb.MetaResult:
        lock = self.locks.get(name)
        if lock is not None and lock.holder == lease_id and token in (0, lock.token):
            if lease_id in self.leases:
                self.leases[lease_id].locks.discard(name)
            self._pass_on(index, name, lock)
            return self._res(OK)
        if lock is not None and lease_id in lock.waiters:
            lock.waiters.remove(lease_id)
            if lease_id in self.leases:
                self.leases[lease_id].locks.discard(name)
            return self._res(OK)
        return self._res(mpb.META_NOT_HOLDER,
                         f"lease {lease_id} does not hold lock {name!r}"
                         + (f" with token {token}" if token else "") + " and does not wait "
                         "for it (released already, or its lease ended)")

    # ---- reading -----------------------------------------------------------------------------

    def _kv_pb(self, key: str, k: _Key) -> mpb.KeyValue:
        return mpb.KeyValue(key=key, value=k.value, create_revision=k.create,
                            mod_revision=k.mod, lease=k.lease, version=k.version)

    def get(self, key: str) -> str | None:
        k = self.kv.get(key)
        return None if k is None else k.value

    def read(self, key: str, prefix: bool = False, limit: int = 10_000) -> list[mpb.KeyValue]:
        if not prefix:
            k = self.kv.get(key)
            return [] if k is None else [self._kv_pb(key, k)]
        keys = sorted(k for k in self.kv if k.startswith(key))[:limit]
        return [self._kv_pb(k, self.kv[k]) for k in keys]

    def lease_info(self, lease_id: int, remaining_ms: int = -1) -> mpb.LeaseInfo:
        lease = self.leases[lease_id]
        return mpb.LeaseInfo(id=lease_id, ttl_ms=lease.ttl_ms, remaining_ms=remaining_ms,
                             keys=sorted(lease.keys), locks=sorted(lease.locks))

    def lock_info(self, name: str) -> mpb.LockInfo:
        lock = self.locks.get(name) or _Lock()
        return mpb.LockInfo(name=name, holder=lock.holder, token=lock.token,
                            waiters=list(lock.waiters))

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state (sessions included, in eviction order) as deterministic JSON."""
        return json.dumps({
            "applied": self.applied,
            "ops": self.applied_ops,
            "kv": {k: [v.value, v.create, v.mod, v.version, v.lease] for k, v in self.kv.items()},
            "leases": {str(i): [v.ttl_ms, v.remaining_ms, v.refreshed, sorted(v.keys),
                                sorted(v.locks)] for i, v in self.leases.items()},
            "locks": {n: [v.holder, v.token, v.waiters] for n, v in self.locks.items()},
            "sessions": [[cid, s.acked, s.floor,
                          {str(q): base64.b64encode(r).decode() for q, r in s.results.items()}]
                         for cid, s in self.sessions.items()],
            "txns": self.txns.snapshot(),
            "ring": self.ring.snapshot(),
        }, sort_keys=True, separators=(",", ":")).encode()

    def restore(self, image: bytes, index: int) -> None:
        obj = json.loads(image) if image else {}
        self.kv = {k: _Key(*v) for k, v in obj.get("kv", {}).items()}
        self.leases = {int(i): _Lease(v[0], v[1], v[2], set(v[3]), set(v[4]))
                       for i, v in obj.get("leases", {}).items()}
        self.locks = {n: _Lock(v[0], v[1], list(v[2])) for n, v in obj.get("locks", {}).items()}
        self.sessions = OrderedDict(
            (cid, _Session(acked, floor, {int(q): base64.b64decode(r) for q, r in res.items()}))
            for cid, acked, floor, res in obj.get("sessions", []))
        self.applied_ops = obj.get("ops", 0)
        self.txns = txncore.TxnTable()
        self.txns.restore(obj.get("txns", {}))
        self.ring = ringlog.RingTable()
        self.ring.restore(obj.get("ring", {}))
        self.applied = index
        self.events = deque()
        self.events_from = index + 1


class LeaseClock:
    """The leader's lease deadlines (pure: `now` is an argument, in ms of a monotonic clock).

    A lease's deadline is set when the leader applies its grant or a keepalive (now + TTL:
    never before the holder's own `sent + TTL`), and, on a new leader, from the time left
    recorded in the state machine (the last checkpoint or refresh): now + remaining. A
    checkpoint is taken every `checkpoint_ms`, so across a failover a lease ends late by at
    most checkpoint_ms + the time to elect and establish the new leader, never early.
    """

    def __init__(self) -> None:
        self.deadlines: dict[int, tuple[int, int]] = {}  # lease -> (deadline_ms, refreshed)

    def become_leader(self, sm: MetaStateMachine, now: int) -> None:
        self.deadlines = {i: (now + lease.remaining_ms, lease.refreshed)
                          for i, lease in sm.leases.items()}

    def step_down(self) -> None:
        self.deadlines = {}

    def on_applied(self, sm: MetaStateMachine, now: int) -> None:
        """After applying: track new/refreshed leases, forget ended ones."""
        for i, lease in sm.leases.items():
            d = self.deadlines.get(i)
            if d is None or d[1] != lease.refreshed:  # granted or kept alive just now
                self.deadlines[i] = (now + lease.ttl_ms, lease.refreshed)
        for i in [i for i in self.deadlines if i not in sm.leases]:
            del self.deadlines[i]

    def expired(self, now: int) -> list[tuple[int, int]]:
        """(lease, refreshed) pairs whose deadline has passed."""
        return sorted((i, r) for i, (d, r) in self.deadlines.items() if d <= now)

    def remaining(self, lease: int, now: int) -> int:
        d = self.deadlines.get(lease)
        return -1 if d is None else max(0, d[0] - now)

    def checkpoint(self, now: int) -> list[tuple[int, int]]:
        return sorted((i, max(0, d - now)) for i, (d, _) in self.deadlines.items())
