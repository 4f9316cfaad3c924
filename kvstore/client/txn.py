"""The transaction client (issue 12; docs/transactions.md): atomic multi-key writes with
conditions, atomic multi-key reads, and transaction status, through any node.

The client names each transaction (a random id), so a call broken after delivery is not
retried blindly: the client asks for the record of that id, and reports the decision it
finds, or OutcomeUnknown (with the id, for `kv txn status`) when none is known yet.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from kvstore._proto import txn_pb2 as tpb
from kvstore._proto import txn_pb2_grpc
from kvstore.client.core import OPTIONS, AsyncClient, parse_endpoints
from kvstore.client.meta import OutcomeUnknown
from kvstore.core import versions
from kvstore.core.errors import (
    InvalidArgument,
    KVError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    from_pb,
)
from kvstore.core.hlc import Timestamp
from kvstore.core.txn import state_name

__all__ = ["AsyncTxnClient", "TxnAborted", "TxnClient", "TxnResult", "TxnStatus"]


class TxnAborted(KVError):
    """The transaction was not committed; nothing of it is visible."""

    def __init__(self, message: str, result: TxnResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class TxnResult:
    txn_id: str
    state: str
    reason: str = ""
    contexts: dict[str, str] = field(default_factory=dict)  # key -> context text
    trace: list[str] = field(default_factory=list)
    revision: int = 0
    decided_by: str = ""
    commit_hlc: str = ""  # the commit's hybrid logical timestamp, "wall_ms.logical"

    def to_json(self) -> dict:
        return {"txn_id": self.txn_id, "state": self.state, "reason": self.reason,
                "contexts": self.contexts, "revision": self.revision,
                "decided_by": self.decided_by, "commit_hlc": self.commit_hlc,
                **({"trace": self.trace} if self.trace else {})}


@dataclass
class TxnStatus:
    txn_id: str
    state: str
    keys: list[str]
    coordinator: str
    created_revision: int
    created_at_ms: int
    deadline_ms: int
    decided_by: str
    decided_revision: int
    decided_at_ms: int
    reason: str
    commit_hlc: str

    @classmethod
    def from_pb(cls, r: tpb.TxnRecord) -> TxnStatus:
        return cls(r.txn_id, state_name(r.state), [k.decode("utf-8", "replace") for k in r.keys],
                   r.coordinator, r.created_revision, r.created_at_ms, r.deadline_ms,
                   r.decided_by, r.decided_revision, r.decided_at_ms, r.reason,
                   _hlc(r.commit_hlc))

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _hlc(packed: int) -> str:
    return str(Timestamp.unpack(packed)) if packed else ""


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


class AsyncTxnClient:
    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 10.0,
                 credentials=None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.credentials = credentials
        self._stubs: dict[str, tuple[grpc.aio.Channel, txn_pb2_grpc.TxnStub]] = {}
        self._next = secrets.randbelow(len(self.endpoints))
        # With a user (--user/--password), calls carry its login token, as the KV client's
        # do (that client logs in and renews the token); a certificate needs none.
        self._login: AsyncClient | None = None
        if credentials is not None and credentials.user is not None and not credentials.cert:
            self._login = AsyncClient(self.endpoints, timeout=min(timeout, 5.0),
                                      credentials=credentials)

    def _stub(self, ep: str) -> txn_pb2_grpc.TxnStub:
        if ep not in self._stubs:
            ch = (self.credentials.aio_channel(ep, OPTIONS) if self.credentials is not None
                  else grpc.aio.insecure_channel(ep, options=OPTIONS))
            self._stubs[ep] = (ch, txn_pb2_grpc.TxnStub(ch))
        return self._stubs[ep][1]

    async def close(self) -> None:
        for ch, _ in self._stubs.values():
            await ch.close()
        self._stubs.clear()
        if self._login is not None:
            await self._login.close()

    async def __aenter__(self) -> AsyncTxnClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method: str, req, *, repeatable: bool):
        """Try the endpoints in turn. A request that may have been delivered is repeated
        only if `repeatable`; otherwise the grpc error is raised (delivered=True)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        errors: list[str] = []
        renewed = False
        for _ in range(2 * len(self.endpoints)):
            left = deadline - loop.time()
            if left <= 0:
                break
            ep = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            metadata = await self._login.metadata() if self._login is not None else ()
            try:
                return await getattr(self._stub(ep), method)(req, timeout=left,
                                                             metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                details = (exc.details() or "").lower()
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    if self._login is not None and "expired" in details and not renewed:
                        self._login._token = None  # refused before it ran: log in, resend
                        renewed = True
                        continue
                    raise Unauthenticated(f"{ep}: {exc.details()}") from None
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    raise PermissionDenied(f"{ep}: {exc.details()}") from None
                refused = exc.code() == grpc.StatusCode.UNAVAILABLE and (
                    "connect" in details or "refused" in details)
                errors.append(f"{ep}: {exc.code().name}")
                if not refused and not repeatable:
                    raise _MaybeDelivered("; ".join(errors)) from exc
        raise Unavailable("no node answered (" + "; ".join(errors[-3:]) + "); is the cluster "
                          "up, and started with --raft-voters?")

    async def put(self, writes: Mapping[str | bytes, str | bytes], *,
                  if_context: Mapping[str | bytes, str] | None = None,
                  if_absent: Iterable[str | bytes] = (), trace: bool = False,
                  ttl: float | None = None, txn_id: str | None = None,
                  protocol: str = "raft") -> TxnResult:
        """Write every key of `writes` or none. `if_context`: key -> context text (as `kv
        get --json` prints it): the key must be unchanged since (the empty context of a key
        read as absent: it must still be absent); `if_absent`: keys that must not exist.
        Raises TxnAborted (nothing written), InvalidArgument, or OutcomeUnknown (check
        `status(txn_id)`)."""
        txn_id = txn_id or secrets.token_hex(8)
        req = tpb.TxnPutRequest(txn_id=txn_id, trace=trace,
                                ttl_ms=int(ttl * 1000) if ttl else 0,
                                protocol="" if protocol == "raft" else protocol)
        for k, v in writes.items():
            req.writes.append(tpb.TxnWrite(key=_b(k), value=_b(v)))
        for k, ctx in (if_context or {}).items():
            if ctx is None:
                raise InvalidArgument(f"no context given for {k!r}")
            if ctx == "":  # the context of a key read as absent: it must still be absent
                if_absent = [*if_absent, k]
                continue
            try:
                data = versions.context_from_text(ctx)
            except versions.InvalidContext as exc:
                raise InvalidArgument(f"the context given for {k!r}: {exc}") from exc
            req.checks.append(tpb.TxnCheck(key=_b(k), condition=tpb.TxnCondition(
                kind=tpb.TxnCondition.CONTEXT, context=data)))
        for k in if_absent:
            req.checks.append(tpb.TxnCheck(key=_b(k), condition=tpb.TxnCondition(
                kind=tpb.TxnCondition.ABSENT)))
        try:
            reply = await self._call("Put", req, repeatable=False)
        except _MaybeDelivered as exc:
            try:
                st = await self.status(txn_id)
            except KVError:
                st = None
            if st is None or st.state in ("PENDING", "UNKNOWN"):
                raise OutcomeUnknown(f"transaction {txn_id}: no definite answer ({exc}); it "
                                     f"may or may not commit: `kv txn status {txn_id}`") from exc
            result = TxnResult(txn_id, st.state, st.reason, revision=st.decided_revision,
                               decided_by=st.decided_by, commit_hlc=st.commit_hlc)
            if st.state != "COMMITTED":
                raise TxnAborted(f"transaction {txn_id} was not committed ({st.reason})",
                                 result) from exc
            return result
        result = TxnResult(
            reply.txn_id, state_name(reply.state), reply.reason,
            {k.key.decode("utf-8", "replace"): versions.context_to_text(k.context)
             for k in reply.keys}, list(reply.trace), reply.revision, reply.decided_by,
            _hlc(reply.commit_hlc))
        if reply.HasField("error"):
            err = from_pb(reply.error)
            if reply.state == tpb.TXN_ABORTED:
                raise TxnAborted(err.message, result)
            if "raft group gave no definite answer" in err.message:
                raise OutcomeUnknown(f"transaction {txn_id}: {err.message}")
            raise err
        return result

    async def get(self, keys: Iterable[str | bytes], *, trace: bool = False
                  ) -> tuple[dict[str, tuple[list[bytes], str]], list[str]]:
        """An atomic read: key -> (values, context text); and the trace lines."""
        req = tpb.TxnGetRequest(keys=[_b(k) for k in keys], trace=trace)
        reply = await self._call("Get", req, repeatable=True)
        if reply.HasField("error"):
            raise from_pb(reply.error)
        return ({v.key.decode("utf-8", "replace"): (list(v.values),
                                                     versions.context_to_text(v.context))
                 for v in reply.values}, list(reply.trace))

    async def status(self, txn_id: str) -> TxnStatus | None:
        reply = await self._call("Status", tpb.TxnStatusRequest(txn_id=txn_id),
                                 repeatable=True)
        if reply.HasField("error"):
            raise from_pb(reply.error)
        return TxnStatus.from_pb(reply.record) if reply.found else None


class _MaybeDelivered(Exception):
    pass


class TxnClient:
    """The blocking form of AsyncTxnClient (its own event loop)."""

    def __init__(self, endpoints: str | Sequence[str], **kw) -> None:
        self._loop = asyncio.new_event_loop()
        self.async_client = AsyncTxnClient(endpoints, **kw)

    def put(self, writes, **kw) -> TxnResult:
        return self._loop.run_until_complete(self.async_client.put(writes, **kw))

    def get(self, keys, **kw):
        return self._loop.run_until_complete(self.async_client.get(keys, **kw))

    def status(self, txn_id: str) -> TxnStatus | None:
        return self._loop.run_until_complete(self.async_client.status(txn_id))

    def close(self) -> None:
        self._loop.run_until_complete(self.async_client.close())
        self._loop.close()

    def __enter__(self) -> TxnClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
