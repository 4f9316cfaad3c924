"""The metadata client (issue 11): linearizable keys, leases and locks on the Raft group,
async (`AsyncMetaClient`) and blocking (`MetaClient`).

Every command carries this client's session (a client id registered once, then a sequence
number per command), so a command is retried - after a deadline, a broken connection, a
refused node or a leader change, on the same or the next endpoint - with the same identity
and the group applies it at most once; a retry that reaches it after it was applied gets the
first result back. Retries stop at the overall deadline: a command that may have been
delivered but was never answered raises `OutcomeUnknown` (the CLI exits 5), never a
definite failure. `Unavailable` (exit 1) means it was certainly not applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import meta_pb2_grpc
from kvstore.client.core import OPTIONS, parse_endpoints
from kvstore.core.errors import (
    InvalidArgument,
    KVError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from kvstore.core.meta import MAX_RESULTS

__all__ = [
    "AsyncMetaClient", "CompareFailed", "LeaseNotFound", "LockLost", "MetaClient", "MetaKey",
    "MetaWrite", "NotHolder", "OutcomeUnknown",
]


class OutcomeUnknown(KVError):
    """The command may or may not have been applied (no answer before the deadline, or its
    session result was forgotten). Check the state before acting on it."""


class CompareFailed(KVError):
    """A compare-and-set found another value; nothing changed."""

    def __init__(self, message: str, current: MetaKey | None, revision: int) -> None:
        super().__init__(message)
        self.current = current
        self.revision = revision


class LeaseNotFound(KVError):
    """The lease is unknown: expired, revoked or never granted."""


class NotHolder(KVError):
    """A lock release or wait by a lease that neither holds nor waits for the lock."""


class LockLost(KVError):
    """The lease under a held lock ended (a keepalive found it gone)."""


class Compacted(KVError):
    """A watch's start revision is older than the history the group keeps."""


class CampaignLost(KVError):
    """A campaign's lease ended (its candidacy is gone) before it won."""


@dataclass(frozen=True)
class ElectionLeader:
    """A leader of an election: its value, its lease (its session), and the revision of its
    candidacy (it only grows from one leader to the next) and of its latest proclamation."""

    name: str
    value: str
    lease: int
    revision: int
    mod_revision: int

    def to_json(self) -> dict:
        return {"election": self.name, "value": self.value, "lease": self.lease,
                "revision": self.revision, "mod_revision": self.mod_revision}


def _election_prefix(name: str) -> str:
    return f"election/{name}/"


def _leader_of(name: str, keys: dict[str, MetaKey]) -> ElectionLeader | None:
    if not keys:
        return None
    k = min(keys.values(), key=lambda k: k.create_revision)
    return ElectionLeader(name, k.value, k.lease, k.create_revision, k.mod_revision)


@dataclass(frozen=True)
class MetaKey:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int
    version: int

    @classmethod
    def from_pb(cls, kv: mpb.KeyValue) -> MetaKey:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease, kv.version)

    def to_json(self) -> dict:
        return {"key": self.key, "value": self.value, "create_revision": self.create_revision,
                "mod_revision": self.mod_revision, "lease": self.lease or None,
                "version": self.version}


@dataclass(frozen=True)
class MetaWrite:
    """A write's outcome: the revision it took effect at, the previous key (None: absent),
    and whether the answer came from the session table (an earlier attempt applied it)."""

    revision: int
    previous: MetaKey | None
    duplicate: bool = False
    extra: dict = field(default_factory=dict)


def _prev(res: mpb.MetaResult) -> MetaKey | None:
    return MetaKey.from_pb(res.prev) if res.had_prev else None


def lease_json(info: mpb.LeaseInfo) -> dict:
    return {"id": info.id, "ttl": info.ttl_ms / 1000,
            "remaining": None if info.remaining_ms < 0 else info.remaining_ms / 1000,
            "keys": list(info.keys), "locks": list(info.locks)}


class AsyncMetaClient:
    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0,
                 credentials=None) -> None:
        """`credentials`: client/security.Credentials (TLS, a client certificate, or a user
        and password: then the client logs in and sends its token, as the data client)."""
        self.credentials = credentials
        self._token: tuple[str, float] | None = None  # (bearer token, loop time it expires)
        self._login_lock: asyncio.Lock | None = None
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._channels: dict[str, tuple[grpc.aio.Channel, meta_pb2_grpc.MetaStub]] = {}
        self._next = 0
        self.last_leader = ""  # the member that answered the last request as leader
        self.client_id = 0
        self._seq = 0
        self._open: set[int] = set()
        # The group keeps MAX_RESULTS unacknowledged results per session: a command is
        # numbered only within that window of the oldest one still open, so no result is
        # forgotten while its command may still be retried.
        self._window = asyncio.Condition()
        self._register_lock = asyncio.Lock()
        # Coalescing (as the data-path client does): concurrent short requests to one node
        # ride in one CallBatch, one batch in flight per node, the next filling meanwhile.
        self._pending: dict[str, list[tuple[mpb.MetaRequest, asyncio.Future]]] = {}
        self._pumps: dict[str, asyncio.Task] = {}

    async def _send(self, ep: str, req: mpb.MetaRequest, timeout: float) -> mpb.MetaReply:
        """One attempt on `ep`: coalesced with the other requests pending for it. Long
        polls (watch, lock wait) go alone: a batch waits for its slowest member."""
        if req.WhichOneof("body") in ("watch", "lock_wait"):
            return await self._stub(ep).Call(req, timeout=timeout,
                                             metadata=await self._metadata(ep))
        fut = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting (its deadline) leaves the outcome unread: read it.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.setdefault(ep, []).append((req, fut))
        pump = self._pumps.get(ep)
        if pump is None or pump.done():
            self._pumps[ep] = asyncio.ensure_future(self._pump(ep, timeout))
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def _pump(self, ep: str, timeout: float) -> None:
        pending = self._pending[ep]
        while pending:
            batch = pending[:512]
            del pending[:512]
            try:
                reply = await self._stub(ep).CallBatch(
                    mpb.MetaBatch(requests=[r for r, _ in batch]), timeout=timeout,
                    metadata=await self._metadata(ep))
            except grpc.aio.AioRpcError as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), rep in zip(batch, reply.replies, strict=True):
                if not fut.done():
                    fut.set_result(rep)

    async def _metadata(self, ep: str) -> tuple[tuple[str, str], ...]:
        """The bearer token for a user and password (logging in at `ep` first when there is
        none or it is about to expire); empty otherwise (a certificate is the credential)."""
        creds = self.credentials
        if creds is None or creds.user is None or creds.cert:
            return ()
        loop = asyncio.get_running_loop()
        if self._login_lock is None:
            self._login_lock = asyncio.Lock()
        async with self._login_lock:
            if self._token is None or self._token[1] - loop.time() < 5.0:
                from kvstore._proto import security_pb2 as spb
                from kvstore._proto import security_pb2_grpc

                self._stub(ep)
                reply = await security_pb2_grpc.SecurityStub(self._channels[ep][0]).Login(
                    spb.LoginRequest(user=creds.user, password=creds.password or ""),
                    timeout=self.timeout)
                ttl = max(0.0, reply.expires_at_ms / 1000 - time.time())
                self._token = (reply.token, loop.time() + ttl)
        return (("authorization", f"Bearer {self._token[0]}"),)

    def _stub(self, ep: str) -> meta_pb2_grpc.MetaStub:
        if ep not in self._channels:
            ch = (self.credentials.aio_channel(ep, OPTIONS) if self.credentials is not None
                  else grpc.aio.insecure_channel(ep, options=OPTIONS))
            self._channels[ep] = (ch, meta_pb2_grpc.MetaStub(ch))
        return self._channels[ep][1]

    async def close(self) -> None:
        for task in self._pumps.values():
            task.cancel()
        for ch, _ in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncMetaClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- the call loop ----------------------------------------------------------------------

    async def call(self, req: mpb.MetaRequest, timeout: float | None = None,
                   attempt: float | None = None) -> mpb.MetaReply:
        """Send `req` until a definite answer or the deadline, rotating over the endpoints.
        Every attempt is safe to repeat (commands carry the session). Raises OutcomeUnknown
        if an attempt may have been delivered and none was answered definitely, Unavailable
        if none was delivered (or every member said so)."""
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        deadline = loop.time() + timeout
        maybe = False
        errors: list[str] = []
        is_cmd = req.WhichOneof("body") == "command"
        retried_login = False
        while True:
            ep = self.endpoints[self._next % len(self.endpoints)]
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                # An attempt gets a part of the time: a paused node must not eat all of it
                # (a repeat is safe: commands carry the session).
                reply = await self._send(ep, req, min(left, attempt or max(0.5, timeout / 3)))
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                        grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    # definite: the node refused before doing anything. An expired token
                    # is renewed once; anything else is the caller's to fix.
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and self._token and \
                            "expired" in (exc.details() or "") and not retried_login:
                        self._token, retried_login = None, True
                        continue
                    kind = (Unauthenticated if exc.code() == grpc.StatusCode.UNAUTHENTICATED
                            else PermissionDenied)
                    raise kind(f"{ep}: {exc.details()}") from None
                if isinstance(exc, TimeoutError):
                    refused, name = False, "DEADLINE_EXCEEDED"
                else:
                    details = (exc.details() or "").lower()
                    refused = exc.code() == grpc.StatusCode.UNAVAILABLE and (
                        "connect" in details or "refused" in details)
                    name = exc.code().name
                maybe = maybe or not refused
                errors.append(f"{ep}: {name}")
                self._next += 1
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                continue
            code = reply.result.code
            self.last_leader = reply.leader or self.last_leader
            lead = reply.leader_address
            if lead and lead != ep and lead in self.endpoints:
                self._next = self.endpoints.index(lead)  # next time, straight to the leader
            if code in (mpb.META_UNAVAILABLE, mpb.META_UNKNOWN):
                maybe = maybe or code == mpb.META_UNKNOWN
                errors.append(f"{ep}: {reply.result.error}")
                self._next += 1
                await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
                continue
            return reply
        last = "; ".join(errors[-3:]) or "no attempt"
        if maybe and is_cmd:
            raise OutcomeUnknown(f"no definite answer within {timeout:g}s; the command may or "
                                 f"may not have been applied ({last})")
        raise Unavailable(f"the raft group did not answer within {timeout:g}s ({last}); is the "
                          "cluster up, and started with --raft-voters?")

    async def _session(self) -> int:
        async with self._register_lock:
            if not self.client_id:
                reply = await self.call(mpb.MetaRequest(command=mpb.MetaCommand(
                    register=mpb.RegisterClient())))
                self._check(reply.result)
                self.client_id = reply.result.client_id
        return self.client_id

    async def command(self, timeout: float | None = None, **op) -> mpb.MetaResult:
        """Apply one command exactly once (or raise OutcomeUnknown); returns its result."""
        cid = await self._session()
        async with self._window:
            await self._window.wait_for(
                lambda: not self._open or self._seq + 1 - min(self._open) < MAX_RESULTS)
            self._seq += 1
            seq = self._seq
            self._open.add(seq)
            acked = min(self._open) - 1
        cmd = mpb.MetaCommand(session=mpb.Session(client_id=cid, seq=seq, acked=acked), **op)
        try:
            reply = await self.call(mpb.MetaRequest(command=cmd), timeout)
        finally:
            # Answered, or given up (this seq is never sent again): either way the group
            # may forget its result.
            async with self._window:
                self._open.discard(seq)
                self._window.notify_all()
        res = reply.result
        if res.code == mpb.META_SESSION_EXPIRED:
            raise OutcomeUnknown(res.error)
        return res

    @staticmethod
    def _check(res: mpb.MetaResult) -> None:
        if res.code == mpb.META_OK:
            return
        if res.code == mpb.META_BAD_REQUEST:
            raise InvalidArgument(res.error)
        if res.code == mpb.META_NO_LEASE:
            raise LeaseNotFound(res.error)
        if res.code == mpb.META_NOT_HOLDER:
            raise NotHolder(res.error)
        raise KVError(res.error or f"metadata request failed ({mpb.MetaCode.Name(res.code)})")

    # ---- keys -------------------------------------------------------------------------------

    async def get(self, key: str, *, serializable: bool = False) -> tuple[MetaKey | None, int]:
        """(the key or None, the revision read at). Linearizable (ReadIndex on the leader)
        unless `serializable` (any member's applied state, possibly stale)."""
        reply = await self.call(mpb.MetaRequest(read=mpb.MetaRead(
            key=key, serializable=serializable)))
        self._check(reply.result)
        kv = reply.kvs[0] if reply.kvs else None
        return (MetaKey.from_pb(kv) if kv is not None else None), reply.result.revision

    async def range(self, prefix: str, *, serializable: bool = False
                    ) -> tuple[list[MetaKey], int]:
        reply = await self.call(mpb.MetaRequest(read=mpb.MetaRead(
            key=prefix, prefix=True, serializable=serializable)))
        self._check(reply.result)
        return [MetaKey.from_pb(kv) for kv in reply.kvs], reply.result.revision

    async def put(self, key: str, value: str, *, lease: int = 0) -> MetaWrite:
        res = await self.command(put=mpb.MetaPut(key=key, value=value, lease=lease))
        self._check(res)
        return MetaWrite(res.revision, _prev(res), res.duplicate)

    async def delete(self, key: str) -> MetaWrite:
        res = await self.command(delete=mpb.MetaDelete(key=key))
        self._check(res)
        return MetaWrite(res.revision, _prev(res), res.duplicate)

    async def cas(self, key: str, expected: str | None, new: str | None, *, lease: int = 0
                  ) -> MetaWrite:
        """Set `key` to `new` (None deletes) if its value is `expected` (None: absent);
        raise CompareFailed (with the current key) otherwise."""
        res = await self.command(cas=mpb.MetaCas(
            key=key, expect_absent=expected is None, expected=expected or "",
            delete=new is None, value=new or "", lease=lease))
        if res.code == mpb.META_COMPARE_FAILED:
            cur = _prev(res)
            raise CompareFailed(f"compare failed: {key!r} is "
                                f"{cur.value if cur else None!r}, not {expected!r}", cur,
                                res.revision)
        self._check(res)
        return MetaWrite(res.revision, _prev(res), res.duplicate)

    # ---- leases -----------------------------------------------------------------------------

    async def lease_grant(self, ttl: float) -> mpb.LeaseInfo:
        res = await self.command(lease_grant=mpb.LeaseGrant(ttl_ms=round(ttl * 1000)))
        self._check(res)
        return res.lease

    async def lease_keepalive(self, lease: int) -> mpb.LeaseInfo:
        res = await self.command(lease_keepalive=mpb.LeaseKeepAlive(lease=lease))
        self._check(res)
        return res.lease

    async def lease_revoke(self, lease: int) -> mpb.LeaseInfo:
        res = await self.command(lease_revoke=mpb.LeaseRevoke(lease=lease))
        self._check(res)
        return res.lease

    async def lease_list(self) -> list[mpb.LeaseInfo]:
        reply = await self.call(mpb.MetaRequest(lease_query=mpb.LeaseQuery()))
        self._check(reply.result)
        return list(reply.leases)

    async def lease_ttl(self, lease: int) -> mpb.LeaseInfo:
        reply = await self.call(mpb.MetaRequest(lease_query=mpb.LeaseQuery(lease=lease)))
        self._check(reply.result)
        return reply.leases[0]

    # ---- locks ------------------------------------------------------------------------------

    async def lock(self, name: str, lease: int, *, wait: float | None = None) -> int:
        """Acquire lock `name` under `lease` (FIFO behind earlier waiters) and return the
        fencing token (the revision of the grant). `wait`: give up after this many seconds
        (raise TimeoutError; the lease stays queued until released or ended)."""
        res = await self.command(lock_acquire=mpb.LockAcquire(name=name, lease=lease))
        if res.code == mpb.META_OK:
            return res.token
        if res.code != mpb.META_QUEUED:
            self._check(res)
        loop = asyncio.get_running_loop()
        until = None if wait is None else loop.time() + wait
        while True:
            step = self.timeout if until is None else min(self.timeout, until - loop.time())
            if step <= 0:
                raise TimeoutError(f"lock {name!r} not granted within {wait:g}s")
            reply = await self.call(mpb.MetaRequest(lock_wait=mpb.LockWait(
                name=name, lease=lease, wait_ms=int(step * 1000))), timeout=step + self.timeout,
                attempt=step + max(0.5, self.timeout / 3))
            if reply.result.code == mpb.META_OK:
                return reply.result.token
            if reply.result.code != mpb.META_QUEUED:
                self._check(reply.result)

    # ---- watch ------------------------------------------------------------------------------

    async def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0,
                    wait: float = 2.0):
        """Yield every change (MetaEvent) to `key` (or under it) from `start_revision` on,
        in revision order, for ever. Each answer says up to which revision it is complete,
        so the next request resumes just after it - across disconnects and leader changes,
        without gaps or repeats (it keeps asking while no leader answers). Raises Compacted
        if the start is older than the history kept (read the state, then watch from its
        revision + 1)."""
        nxt = start_revision
        if not nxt:
            _, rev = await (self.range(key) if prefix else self.get(key))
            nxt = rev + 1
        while True:
            try:
                reply = await self.call(mpb.MetaRequest(watch=mpb.MetaWatch(
                    key=key, prefix=prefix, start_revision=nxt, wait_ms=int(wait * 1000))),
                    timeout=wait + self.timeout, attempt=wait + max(0.5, self.timeout / 3))
            except (OutcomeUnknown, Unavailable):
                # No leader for now (a failover, a partition): keep watching from where the
                # last answer ended - nothing is missed meanwhile.
                await asyncio.sleep(0.2)
                continue
            if reply.result.code == mpb.META_COMPACTED:
                raise Compacted(reply.result.error)
            self._check(reply.result)
            for ev in reply.events:
                yield ev
            nxt = max(nxt, reply.result.revision + 1)

    # ---- elections (on keys, leases and watch) -------------------------------------------

    async def campaign(self, name: str, value: str, lease: int):
        """Stand in election `name` under `lease`; returns the ElectionLeader (this
        candidacy) once it leads. The candidacy is a key attached to the lease, so it ends
        with the lease: an expired campaign can never win. Candidates win in the order they
        stood (the revision of their key)."""
        key = f"{_election_prefix(name)}{lease:016x}"
        try:
            await self.cas(key, None, value, lease=lease)
        except CompareFailed:
            pass  # this lease stands already (a retried campaign)
        async for leader in self.observe(name):
            if leader.lease == lease:
                return leader
            keys, _ = await self.range(_election_prefix(name))
            if not any(k.key == key for k in keys):
                raise CampaignLost(f"the candidacy of lease {lease} in election {name!r} "
                                   "ended (its lease expired or was revoked)")
        raise CampaignLost(f"election {name!r}: observation ended")  # pragma: no cover

    async def proclaim(self, name: str, lease: int, value: str) -> None:
        """Change the leader's value (only while `lease` still stands in the election)."""
        key = f"{_election_prefix(name)}{lease:016x}"
        cur, _ = await self.get(key)
        if cur is None:
            raise CampaignLost(f"lease {lease} does not stand in election {name!r}")
        await self.cas(key, cur.value, value, lease=lease)

    async def resign(self, name: str, lease: int) -> None:
        await self.delete(f"{_election_prefix(name)}{lease:016x}")

    async def leader(self, name: str) -> ElectionLeader | None:
        keys, _ = await self.range(_election_prefix(name))
        return _leader_of(name, {k.key: k for k in keys})

    async def observe(self, name: str, wait: float = 2.0):
        """Yield each leader of election `name` as it changes (and the current one first),
        in revision order: never one earlier than one already named, never one whose lease
        had ended at the revision it is named at."""
        prefix = _election_prefix(name)
        keys_list, rev = await self.range(prefix)
        keys = {k.key: k for k in keys_list}
        last = _leader_of(name, keys)
        if last is not None:
            yield last
        async for ev in self.watch(prefix, prefix=True, start_revision=rev + 1, wait=wait):
            if ev.type == mpb.MetaEvent.DELETE:
                keys.pop(ev.kv.key, None)
            else:
                keys[ev.kv.key] = MetaKey.from_pb(ev.kv)
            cur = _leader_of(name, keys)
            if cur is not None and (last is None or (cur.revision, cur.mod_revision) !=
                                    (last.revision, last.mod_revision)):
                last = cur
                yield cur

    async def unlock(self, name: str, lease: int, token: int = 0) -> None:
        """Release `name` if `lease` holds it with `token` (0: any); a release of an older
        grant never frees a newer holder (NotHolder)."""
        res = await self.command(lock_release=mpb.LockRelease(name=name, lease=lease,
                                                              token=token))
        self._check(res)


class MetaClient:
    """A blocking metadata client for scripts (owns a private event loop)."""

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = self._loop.run_until_complete(self._make(endpoints, timeout))

    @staticmethod
    async def _make(endpoints, timeout) -> AsyncMetaClient:
        return AsyncMetaClient(endpoints, timeout=timeout)

    @property
    def async_client(self) -> AsyncMetaClient:
        return self._async

    def run(self, coro):
        return self._loop.run_until_complete(coro)

    def __getattr__(self, name: str):
        fn = getattr(self._async, name)
        if not asyncio.iscoroutinefunction(fn):
            return fn

        def call(*args, **kwargs):
            return self._loop.run_until_complete(fn(*args, **kwargs))

        call.__doc__ = fn.__doc__
        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._async.close())
        self._loop.close()

    def __enter__(self) -> MetaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
