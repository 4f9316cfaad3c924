"""The Python client: async (`AsyncClient`) and blocking (`Client`).

Each key's request goes to a listed endpoint that replicates the key (token-aware
routing, client/routing.py: the client keeps the ring, refreshed every ROUTE_REFRESH
seconds while it sends requests and soon after a node says it forwarded a write); other
requests, and keys whose replicas are not among the endpoints, are spread round-robin.
`route=False` turns routing off. Concurrent requests to one node
ride in one `Execute` call (one call in flight per node, the next batch fills meanwhile),
which is how a single client process gets tens of thousands of requests per second out
of Python. When a node cannot be reached the request moves on to the next endpoint, and
the node is skipped for a moment.

A request refused before delivery (connection failed) is retried on another node; one
that timed out is not, because it may have been applied: the caller gets a Timeout that
says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from kvstore._proto import (
    admin_pb2,
    admin_pb2_grpc,
    client_pb2_grpc,
    common_pb2,
    security_pb2_grpc,
)
from kvstore._proto import client_pb2 as cpb
from kvstore._proto import security_pb2 as spb
from kvstore.client.routing import RingView, route
from kvstore.client.security import Credentials
from kvstore.core import errors, versions
from kvstore.core.address import is_host_port
from kvstore.core.errors import (
    InvalidArgument,
    KVError,
    PermissionDenied,
    Timeout,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

LEVELS = {"ONE": cpb.ONE, "TWO": cpb.TWO, "THREE": cpb.THREE, "QUORUM": cpb.QUORUM,
          "ALL": cpb.ALL, "ANY": cpb.ANY}
MAX_PIPELINE = 512
DOWN_FOR = 1.0  # seconds a node that refused a connection is skipped
ROUTE_REFRESH = 10.0  # seconds between ring refreshes of a routing client that is in use
ROUTE_SOON = 1.0  # after a forwarded reply: refresh again this long after the last one
ROUTE_GRACE = 0.2  # after the first endpoint's ring: how long the others may still answer
OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class ConnectionFailed(Unavailable):
    """No listed endpoint could be reached."""


@dataclass
class Version:
    """One sibling as the client sees it.

    `fence`: `LOCK:TOKEN` of a guarded write (None otherwise). `fenced_out`: in the set it
    came in (a replica's versions in a trace, a put's `stored`), another version knows a
    higher token of its lock, so reads do not show it.
    """

    value: bytes
    clock: dict[str, int]
    dot: str
    tombstone: bool = False
    written_at_ms: int = 0
    fence: str | None = None
    fenced_out: bool = False

    @classmethod
    def from_pb(cls, v, fenced_out: bool = False) -> Version:
        s = versions.sibling_from_pb(v)
        return cls(s.value, s.clock(), f"{s.node}:{s.counter}", s.tombstone, s.written_at_ms,
                   versions.format_fence(s.fence) if s.fence else None, fenced_out)

    @classmethod
    def list_from_pb(cls, vs) -> list[Version]:
        """A set of versions, each marked when another of the set fences it out."""
        siblings = [versions.sibling_from_pb(v) for v in vs]
        hidden = versions.fenced_out(siblings)
        return [cls.from_pb(v, s.dot in hidden) for v, s in zip(vs, siblings, strict=True)]

    def to_json(self) -> dict[str, Any]:
        value, encoding = text_or_base64(self.value)
        out: dict[str, Any] = {"value": value, "clock": self.clock, "dot": self.dot}
        if encoding != "utf-8":
            out["value_encoding"] = encoding
        if self.tombstone:
            out["tombstone"] = True
        if self.fence:
            out["fence"] = self.fence
        if self.fenced_out:
            out["fenced_out"] = True
        return out


@dataclass
class GetResult:
    key: bytes
    found: bool
    siblings: list[Version]
    context: bytes
    trace: dict[str, Any] | None = None

    @property
    def value(self) -> bytes | None:
        """The value when there is exactly one sibling; None when not found."""
        if not self.siblings:
            return None
        if len(self.siblings) > 1:
            raise ValueError(f"{len(self.siblings)} siblings: read .siblings and resolve them")
        return self.siblings[0].value


@dataclass
class PutResult:
    key: bytes
    context: bytes  # what the writer has seen: its context plus this write, nothing more
    stored: list[Version] = field(default_factory=list)  # the key's siblings; the new one last
    trace: dict[str, Any] | None = None
    concurrent: int = 0  # siblings in `stored` written concurrently (the writer had not seen)
    fence: str | None = None  # LOCK:TOKEN the write was guarded by


def text_or_base64(data: bytes) -> tuple[str, str]:
    import base64

    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def trace_to_dict(trace: cpb.Trace) -> dict[str, Any]:
    """The documented trace schema (docs/trace.md): names here are a public contract."""
    return {
        "coordinator": trace.coordinator,
        "request_id": trace.request_id or None,
        "forwarded_to": trace.forwarded_to or None,
        "preference_list": list(trace.preference_list),
        "required": trace.required,
        "total_ms": trace.total_ms,
        "replicas": [
            {
                "node": r.node,
                "address": r.address,
                "ok": r.ok,
                "latency_ms": r.latency_ms,
                "local": r.local,
                "hint_for": r.hint_for or None,
                "counted": r.counted,
                "error": r.error or None,
                "versions": [v.to_json() for v in Version.list_from_pb(r.versions)],
            }
            for r in trace.replicas
        ],
        "events": [{"at_ms": e.at_ms, "event": e.event} for e in trace.events],
    }


def as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def make_fence(fence: str | tuple[str, int] | None) -> common_pb2.Fence | None:
    """`LOCK:TOKEN` (as `kv lock` prints it and exports as KV_FENCE) or (lock, token)."""
    if fence is None:
        return None
    try:
        if isinstance(fence, str):
            lock, token = versions.parse_fence(fence)
        else:
            lock, token = fence
            versions.check_fence(lock, token)
    except versions.InvalidFence as exc:
        raise InvalidArgument(str(exc)) from None
    return common_pb2.Fence(lock=lock, token=token)


def make_quorum(consistency: str | None, count: int | None) -> cpb.Quorum:
    if count is not None:
        if count < 1:
            raise InvalidArgument(f"an explicit replica count must be at least 1, got {count}")
        return cpb.Quorum(count=count)
    if consistency is None:
        return cpb.Quorum()
    level = LEVELS.get(consistency.upper())
    if level is None:
        raise InvalidArgument(
            f"unknown consistency level {consistency!r}; use ONE, TWO, THREE, QUORUM or ALL "
            "(or ANY, for writes)"
        )
    return cpb.Quorum(level=level)


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "://" in item:
            bare = item.split("://", 1)[1].rstrip("/") or "127.0.0.1:7001"
            raise InvalidArgument(f"invalid endpoint {item!r}: give host:port without a "
                                  f"scheme (e.g. {bare})")
        if not is_host_port(item):
            raise InvalidArgument(f"invalid endpoint {item!r}: not host:port "
                                  "(e.g. 127.0.0.1:7001)")
        out.append(item)
    if not out:
        raise InvalidArgument("no endpoints given; pass --endpoints host:port[,host:port...]")
    return out


class _Endpoint:
    def __init__(self, address: str, credentials: Credentials) -> None:
        self.address = address
        self.channel = credentials.aio_channel(address, OPTIONS)
        self.kv = client_pb2_grpc.KVStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.security = security_pb2_grpc.SecurityStub(self.channel)
        self.pending: list[tuple[cpb.ClientRequest, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.down_until = 0.0


def _none_answered(failed: list[str]) -> str:
    text = "could not reach any node (" + "; ".join(failed) + ")."
    if all("cannot resolve" in f for f in failed):
        return text + " Give endpoints this machine can resolve (--endpoints or KV_ENDPOINTS)."
    return text + " Is the cluster running? Start one with `kv cluster up`."


class _Refused(Exception):
    """The endpoint could not be reached: the request was not delivered."""


class AsyncClient:
    """`credentials`: TLS and user/password or client certificate (client/security.py).

    `route` (default on): send each get, put and delete to an endpoint that replicates its
    key (client/routing.py), so no write needs a forwarding hop. The ring is fetched from
    the endpoints in the background (the first requests go in the usual order until it
    arrives; `await refresh_ring()` first to route from the first request),
    again every `route_refresh` seconds while the client sends requests, and soon after a
    node answers that it forwarded a write. A stale ring is never a correctness problem: a
    node that is not a replica of the key forwards the write to one, as without routing.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0,
                 pipeline: bool = True, credentials: Credentials | None = None,
                 route: bool = True, route_refresh: float = ROUTE_REFRESH) -> None:
        self.credentials = credentials or Credentials()
        self.endpoints = [_Endpoint(a, self.credentials) for a in parse_endpoints(endpoints)]
        self.timeout = timeout
        self._token: tuple[str, float] | None = None  # (token, expiry in loop time)
        self._login_lock: asyncio.Lock | None = None
        self.pipeline = pipeline
        self._next = itertools.cycle(range(len(self.endpoints)))
        self.route = route
        self.route_refresh = route_refresh
        self.ring: RingView | None = None  # the ring routing uses (None: not known/usable)
        self._ring_task: asyncio.Task | None = None
        self._ring_due = 0.0  # loop time of the next refresh
        self._ring_fetched = float("-inf")  # loop time the last refresh started
        self._by_address: dict[str, _Endpoint] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ring_task is not None and not self._ring_task.done():
            self._ring_task.cancel()
            await asyncio.gather(self._ring_task, return_exceptions=True)
        for ep in self.endpoints:
            if ep.task and not ep.task.done():
                ep.task.cancel()
            await ep.channel.close()

    # -- high level ------------------------------------------------------------------
    async def get(self, key: bytes | str, *, consistency: str | None = None,
                  r: int | None = None, trace: bool = False,
                  timeout: float | None = None, request_id: str = "") -> GetResult:
        """`request_id` names the request in every node's logs (`kv logs --request`);
        with `trace` and none given, the coordinator makes one (in the trace)."""
        key = as_bytes(key)
        request = cpb.ClientRequest(get=cpb.GetRequest(key=key, quorum=make_quorum(consistency, r)),
                                    trace=trace, timeout_ms=self._timeout_ms(timeout),
                                    request_id=request_id)
        reply = await self.execute(request)
        result = reply.get
        return GetResult(key, result.found, [Version.from_pb(v) for v in result.siblings],
                         result.context, trace_to_dict(reply.trace) if trace else None)

    async def put(self, key: bytes | str, value: bytes | str, *, context: bytes = b"",
                  consistency: str | None = None, w: int | None = None, trace: bool = False,
                  timeout: float | None = None, strict: bool = False,
                  sloppy: bool = False,
                  fence: str | tuple[str, int] | None = None,
                  request_id: str = "") -> PutResult:
        """Write `value`, superseding what `context` (from a get or a put) saw.

        `strict` / `sloppy` choose whether hints on fallback nodes count towards W (neither:
        the node's default, strict unless it runs with --sloppy-quorum); consistency ANY
        accepts a hint alone. `fence` (`LOCK:TOKEN`, or (lock, token)) guards the write:
        a replica that has seen a higher token of the lock refuses it, and the call raises
        `Fenced` (docs/architecture.md, "Fencing"); a guarded write is always strict.
        """
        key = as_bytes(key)
        fence_pb = make_fence(fence)
        request = cpb.ClientRequest(
            put=cpb.PutRequest(key=key, value=as_bytes(value), context=context,
                               quorum=make_quorum(consistency, w), strict=strict,
                               sloppy=sloppy, fence=fence_pb),
            trace=trace, timeout_ms=self._timeout_ms(timeout), request_id=request_id)
        return self._put_result(key, await self.execute(request), trace, fence_pb)

    async def delete(self, key: bytes | str, *, context: bytes = b"",
                     consistency: str | None = None, w: int | None = None,
                     trace: bool = False, timeout: float | None = None,
                     strict: bool = False, sloppy: bool = False,
                     fence: str | tuple[str, int] | None = None,
                     request_id: str = "") -> PutResult:
        key = as_bytes(key)
        fence_pb = make_fence(fence)
        request = cpb.ClientRequest(
            delete=cpb.DeleteRequest(key=key, context=context, quorum=make_quorum(consistency, w),
                                     strict=strict, sloppy=sloppy, fence=fence_pb),
            trace=trace, timeout_ms=self._timeout_ms(timeout), request_id=request_id)
        return self._put_result(key, await self.execute(request), trace, fence_pb)

    @staticmethod
    def _put_result(key: bytes, reply: cpb.ClientReply, trace: bool,
                    fence: common_pb2.Fence | None = None) -> PutResult:
        return PutResult(key, reply.put.context, Version.list_from_pb(reply.put.stored),
                         trace_to_dict(reply.trace) if trace else None,
                         reply.put.concurrent,
                         versions.format_fence((fence.lock, fence.token)) if fence else None)

    def _timeout_ms(self, timeout: float | None) -> int:
        return int((timeout if timeout is not None else self.timeout) * 1000)

    async def info(self, endpoint: str | None = None) -> admin_pb2.NodeInfo:
        """What one node knows. `endpoint`: that node alone; None: the first endpoint that
        answers, in the order given (failing over as requests do)."""
        if endpoint is not None:
            ep = self._endpoint(endpoint)
            try:
                return await ep.admin.Info(admin_pb2.InfoRequest(), timeout=self.timeout,
                                           metadata=await self.metadata(ep))
            except grpc.aio.AioRpcError as exc:
                raise self._final_error(ep, exc) from None
        loop = asyncio.get_running_loop()
        failed: list[str] = []
        for ep in self.endpoints_in_order():
            try:
                return await ep.admin.Info(admin_pb2.InfoRequest(), timeout=self.timeout,
                                           metadata=await self.metadata(ep))
            except grpc.aio.AioRpcError as exc:
                err = self._rpc_error(ep, exc)
                if not isinstance(err, _Refused | Unavailable | Timeout):
                    raise err from None
                ep.down_until = loop.time() + DOWN_FOR
                failed.append(f"{ep.address}: {err}")
        raise ConnectionFailed(_none_answered(failed))

    def endpoints_in_order(self) -> list[_Endpoint]:
        """The endpoints as given, those not recently refused first."""
        now = asyncio.get_running_loop().time()
        return ([ep for ep in self.endpoints if ep.down_until <= now]
                + [ep for ep in self.endpoints if ep.down_until > now])

    async def repair(self, endpoint: str | None = None, peers: Sequence[str] = (),
                     timeout: float = 3600.0):
        """Run anti-entropy on one node with its peers; yields RepairProgress messages."""
        ep = self._endpoint(endpoint)
        call = ep.admin.Repair(admin_pb2.RepairRequest(peers=list(peers)), timeout=timeout,
                               metadata=await self.metadata(ep))
        try:
            async for progress in call:
                yield progress
        except grpc.aio.AioRpcError as exc:
            raise self._final_error(ep, exc) from None

    async def decommission(self, node_id: str, endpoint: str | None = None,
                           timeout: float = 24 * 3600.0):
        """Ask `node_id` (at `endpoint`, else its address as the first endpoint reports
        it) to stream its ranges out and leave; yields MoveProgress until it finishes."""
        if endpoint is None:
            members = {m.id: m.address for m in (await self.info()).members}
            if node_id not in members:
                raise InvalidArgument(f"{node_id} is not a member; members: "
                                      f"{', '.join(sorted(members))}")
            endpoint = members[node_id]
        ep = self._endpoint(endpoint)
        call = ep.admin.Decommission(admin_pb2.DecommissionRequest(node_id=node_id),
                                     timeout=timeout)
        try:
            async for progress in call:
                yield progress
        except grpc.aio.AioRpcError as exc:
            raise self._final_error(ep, exc) from None

    async def remove_node(self, node_id: str, endpoint: str | None = None,
                          timeout: float = 24 * 3600.0):
        """Force a dead member out (run by `endpoint`, default the first endpoint): its
        ranges are copied from the survivors; yields MoveProgress until it finishes."""
        ep = self._endpoint(endpoint)
        call = ep.admin.Remove(admin_pb2.RemoveRequest(node_id=node_id), timeout=timeout)
        try:
            async for progress in call:
                yield progress
        except grpc.aio.AioRpcError as exc:
            raise self._final_error(ep, exc) from None

    async def ping(self, payload: bytes = b"", endpoint: str | None = None) -> bytes:
        ep = self._endpoint(endpoint)
        try:
            reply = await ep.kv.Ping(cpb.PingRequest(payload=payload), timeout=self.timeout,
                metadata=await self.metadata(ep))
        except grpc.aio.AioRpcError as exc:
            raise self._final_error(ep, exc) from None
        return reply.payload

    async def metadata(self, ep: _Endpoint | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token (logging in first when there is none or it is
        about to expire); empty without a user."""
        if self.credentials.user is None or self.credentials.cert:
            return ()  # a certificate, when given, is the credential
        loop = asyncio.get_running_loop()
        if self._token is None or self._token[1] - loop.time() < 5.0:
            if self._login_lock is None:
                self._login_lock = asyncio.Lock()
            async with self._login_lock:
                if self._token is None or self._token[1] - loop.time() < 5.0:
                    await self.login(ep)
        return (("authorization", f"Bearer {self._token[0]}"),)

    async def login(self, ep: _Endpoint | None = None) -> spb.LoginReply:
        """Log in as the credentials' user; keeps the token for later calls."""
        creds = self.credentials
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        order = ([ep] if ep else []) + [e for e in self.endpoints if e is not ep]
        while True:  # nodes that cannot check credentials now (Unavailable): try again
            errors_seen = []
            for endpoint in order:
                try:
                    reply = await endpoint.security.Login(
                        spb.LoginRequest(user=creds.user or "", password=creds.password or ""),
                        timeout=max(0.1, deadline - loop.time()))
                except grpc.aio.AioRpcError as exc:
                    err = self._rpc_error(endpoint, exc)
                    if isinstance(err, (_Refused, Unavailable)):
                        errors_seen.append(f"{endpoint.address}: {exc.details()}")
                        continue
                    raise err from None
                now_ms = time.time() * 1000
                ttl = max(0.0, (reply.expires_at_ms - now_ms) / 1000)
                self._token = (reply.token, loop.time() + ttl)
                return reply
            if loop.time() + 0.25 >= deadline:
                raise ConnectionFailed("could not log in at any node ("
                                       + "; ".join(errors_seen) + ")")
            await asyncio.sleep(0.25)

    def _endpoint(self, address: str | None) -> _Endpoint:
        if address is None:
            return self.endpoints[0]
        for ep in self.endpoints:
            if ep.address == address:
                return ep
        ep = _Endpoint(address, self.credentials)
        self.endpoints.append(ep)
        return ep

    # -- request routing -------------------------------------------------------------
    async def execute(self, request: cpb.ClientRequest) -> cpb.ClientReply:
        """Send one request (failing over between endpoints); raise its error if it failed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        order = self._order(now)
        replicas = 0  # how many endpoints at the head of `order` replicate the key
        if self.route:
            if now >= self._ring_due and (self._ring_task is None or self._ring_task.done()):
                self._ring_task = loop.create_task(self.refresh_ring())
            if self.ring is not None:
                op = request.WhichOneof("op")
                if op is not None:
                    order, replicas = self._route(getattr(request, op).key, order, now)
        refused: list[str] = []
        for i, ep in enumerate(order):
            try:
                reply = await self._send(ep, request)
            except _Refused as exc:
                ep.down_until = loop.time() + DOWN_FOR
                refused.append(f"{ep.address}: {exc}")
                continue
            if reply.forwarded and i < replicas:  # our ring said it was a replica: stale
                self._ring_due = min(self._ring_due, self._ring_fetched + ROUTE_SOON)
            if reply.HasField("error"):
                raise errors.from_pb(reply.error)
            return reply
        raise ConnectionFailed(_none_answered(refused))

    def _route(self, key: bytes, order: list[_Endpoint],
               now: float) -> tuple[list[_Endpoint], int]:
        if len(self._by_address) != len(self.endpoints):
            self._by_address = {ep.address: ep for ep in self.endpoints}
        addresses, replicas = route(self.ring, key, [ep.address for ep in order],
                                    {ep.address for ep in order if ep.down_until > now})
        return [self._by_address[a] for a in addresses], replicas

    async def refresh_ring(self) -> RingView | None:
        """Fetch the ring for routing now: every endpoint's `Info` at once (each says which
        node answered, so endpoints are matched to members by id; those that have not
        answered ROUTE_GRACE after the first are matched by the address they gossip), the
        ring as the first endpoint in the list that answered reports it. Returns the view
        in use (None: none usable, requests go in the usual order). When no endpoint
        answers, the previous view is kept; the next refresh is due `route_refresh`
        seconds later."""
        loop = asyncio.get_running_loop()
        self._ring_fetched = loop.time()
        self._ring_due = self._ring_fetched + self.route_refresh
        endpoints = list(self.endpoints)
        tasks = {asyncio.ensure_future(self._info_of(ep)): i for i, ep in enumerate(endpoints)}
        answers: dict[int, admin_pb2.NodeInfo] = {}
        pending = set(tasks)
        until = loop.time() + self.timeout  # then ROUTE_GRACE after the first answer
        try:
            while pending and (wait := until - loop.time()) > 0:
                done, pending = await asyncio.wait(pending, timeout=wait,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.result() is not None:
                        if not answers:  # a hung node (paused, cut off) must not hold it up
                            until = min(until, loop.time() + ROUTE_GRACE)
                        answers[tasks[task]] = task.result()
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not answers:
            return self.ring
        identified: dict[str, str] = {}
        for i in sorted(answers):
            identified.setdefault(answers[i].node_id, endpoints[i].address)
        first = answers[min(answers)]
        self.ring = RingView.from_info(first, identified)
        if self.ring is None:
            log.debug("the ring %s reports cannot be rebuilt here; not routing",
                      first.node_id)
        return self.ring

    async def _info_of(self, ep: _Endpoint) -> admin_pb2.NodeInfo | None:
        try:
            return await ep.admin.Info(admin_pb2.InfoRequest(), timeout=self.timeout,
                                       metadata=await self.metadata(ep))
        except grpc.aio.AioRpcError as exc:
            log.debug("no ring from %s: %s", ep.address, self._rpc_error(ep, exc))
        except KVError as exc:  # could not log in
            log.debug("no ring from %s: %s", ep.address, exc)
        return None

    def _order(self, now: float) -> list[_Endpoint]:
        start = next(self._next)
        ring = self.endpoints[start:] + self.endpoints[:start]
        up = [ep for ep in ring if ep.down_until <= now]
        return up + [ep for ep in ring if ep.down_until > now]

    async def _send(self, ep: _Endpoint, request: cpb.ClientRequest) -> cpb.ClientReply:
        if not self.pipeline:
            replies = await self._call(ep, [request])
            return replies[0]
        future = asyncio.get_running_loop().create_future()
        ep.pending.append((request, future))
        if ep.task is None or ep.task.done():
            ep.task = asyncio.get_running_loop().create_task(self._pump(ep))
        return await future

    async def _pump(self, ep: _Endpoint) -> None:
        while ep.pending:
            batch = ep.pending[:MAX_PIPELINE]
            del ep.pending[:MAX_PIPELINE]
            try:
                replies = await self._call(ep, [r for r, _ in batch])
            except (Exception, asyncio.CancelledError) as exc:  # hand the failure to every caller
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else
                                          Unavailable("client closed"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, fut), reply in zip(batch, replies, strict=True):
                if not fut.done():
                    fut.set_result(reply)

    async def _call(
        self, ep: _Endpoint, requests: list[cpb.ClientRequest]
    ) -> list[cpb.ClientReply]:
        deadline = max(r.timeout_ms for r in requests) / 1000 + 1.0
        for attempt in (1, 2):
            try:
                reply = await ep.kv.Execute(cpb.ClientBatch(requests=requests),
                                            timeout=deadline,
                                            metadata=await self.metadata(ep))
            except grpc.aio.AioRpcError as exc:
                err = self._rpc_error(ep, exc)
                if (isinstance(err, Unauthenticated) and attempt == 1
                        and self.credentials.user is not None and "expired" in str(err)):
                    self._token = None  # refused before it ran: log in again and resend
                    continue
                writes = any(r.WhichOneof("op") != "get" for r in requests)
                raise self._rpc_error(ep, exc, writes=writes) from None
            return list(reply.replies)
        raise AssertionError("unreachable")

    @classmethod
    def _final_error(cls, ep: _Endpoint, exc: grpc.aio.AioRpcError) -> Exception:
        """The error for a call to one named node (no failover to another)."""
        err = cls._rpc_error(ep, exc)
        if isinstance(err, _Refused):
            return ConnectionFailed(f"could not reach {ep.address}: {err}")
        return err

    @staticmethod
    def _rpc_error(ep: _Endpoint, exc: grpc.aio.AioRpcError, *,
                   writes: bool = False) -> Exception:
        """The client's error for a failed call. `writes`: the call carried a put or a
        delete, so a call that may have been delivered may also have been applied; a read
        never changes anything, and a name that never resolved was never delivered."""
        code = exc.code()
        details = (exc.details() or "").lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(
                s in details for s in ("dns resolution failed", "errors resolving",
                                       "lookup failed", "domain name not found",
                                       "name or service not known")):
            return _Refused(f"cannot resolve the host name of {ep.address} "
                            "(a name known only inside a docker network, or a typo?)")
        if code == grpc.StatusCode.UNAVAILABLE and (
                "failed to connect" in details or "connection refused" in details):
            return _Refused(f"unreachable ({exc.details()})")  # never delivered: try another
        applied = "; the write may have been applied" if writes else ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"{ep.address}: connection lost during the call "
                               f"({exc.details()}){applied}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"{ep.address}: {exc.details()}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Timeout(f"{ep.address} did not answer in time{applied}")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated(f"{ep.address}: {exc.details()}")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDenied(f"{ep.address}: {exc.details()}")
        if code == grpc.StatusCode.UNAVAILABLE and ("ssl" in details or "handshake" in details):
            return _Refused(f"TLS handshake failed ({exc.details()}): check --tls (the "
                            "cluster's ca.crt) and whether this node runs with TLS")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return InvalidArgument(f"{ep.address} refused the request: {exc.details()}")
        return KVError(f"{ep.address}: {code.name}: {exc.details()}")


class Client:
    """A blocking client for scripts and the CLI (owns a private event loop)."""

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0,
                 credentials: Credentials | None = None, route: bool = True) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = self._run(self._make(endpoints, timeout, credentials, route))
        self._ring_tried = False

    @staticmethod
    async def _make(endpoints, timeout, credentials, route) -> AsyncClient:
        return AsyncClient(endpoints, timeout=timeout, pipeline=False, credentials=credentials,
                           route=route)

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def run(self, coro):
        """Run a coroutine that uses `async_client` on this client's loop."""
        return self._run(coro)

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    def get(self, key, **kwargs) -> GetResult:
        self._first_ring()
        return self._run(self._async.get(key, **kwargs))

    def put(self, key, value, **kwargs) -> PutResult:
        self._first_ring()
        return self._run(self._async.put(key, value, **kwargs))

    def delete(self, key, **kwargs) -> PutResult:
        self._first_ring()
        return self._run(self._async.delete(key, **kwargs))

    def _first_ring(self) -> None:
        """A blocking client makes few requests (a CLI command often one): fetch the ring
        before the first, so that one is routed too (one Info call; a failure only means
        the usual order). Later refreshes run in the background, as in AsyncClient."""
        if self._async.route and self._async.ring is None and not self._ring_tried:
            self._ring_tried = True
            self._run(self._async.refresh_ring())

    def info(self, endpoint: str | None = None) -> admin_pb2.NodeInfo:
        return self._run(self._async.info(endpoint))

    def ping(self, payload: bytes = b"", endpoint: str | None = None) -> bytes:
        return self._run(self._async.ping(payload, endpoint))

    def refresh_ring(self) -> RingView | None:
        return self._run(self._async.refresh_ring())

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
