"""The request coordinator: any node serves any request.

Reads fan out to all N replicas of the key at once and return as soon as R of them
answered; writes are minted at a replica of the key (the coordinator itself when it is
one, otherwise the request is forwarded to one), made durable there, then sent to the
other replicas at once, returning as soon as W (counting the minting replica) acknowledged.
Replies that come later are not waited for. Every request can carry a trace that says
what the coordinator asked, who answered, how fast, and which versions they hold.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.core.errors import (
    Corruption,
    Fenced,
    InvalidArgument,
    KVError,
    NotReady,
    Timeout,
    Unavailable,
    from_pb,
)
from kvstore.core.ring import token_of
from kvstore.core.versions import Sibling
from kvstore.services.replica import Replica
from kvstore.transport.base import PeerTimeout, PeerUnreachable, Transport, TransportError
from kvstore.transport.context import REQUEST_ID

log = logging.getLogger(__name__)

LEVEL_NAMES = {cpb.ONE: "ONE", cpb.TWO: "TWO", cpb.THREE: "THREE", cpb.QUORUM: "QUORUM",
               cpb.ALL: "ALL", cpb.ANY: "ANY"}


@dataclass
class CoordinatorConfig:
    replication_factor: int = 3
    timeout_ms: int = 2000          # default request deadline
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    default_level: int = cpb.QUORUM
    # Chance that a read asks all N replicas rather than just R (Cassandra's
    # read_repair_chance): those reads let background read repair reach every replica.
    # Other reads ask R replicas (this node first, then those the detector thinks up) and
    # add a spare one when one fails or no quorum answered within a quarter of the
    # deadline (speculative retry). 1.0 makes every read cost what ALL costs.
    read_all_chance: float = 0.1
    # Repair stale replicas that took part in a QUORUM-or-stronger read before answering,
    # so a value once read at QUORUM is never "un-read" by the next QUORUM read.
    blocking_read_repair: bool = True
    # Hinted handoff: when a replica is down or does not answer, write a hint to the next
    # healthy node past the preference list (and keep one here for replicas that missed
    # the write); handoff delivers them when the owner is back. Off (--no-hinted-handoff):
    # no hints are written at all.
    hinted_handoff: bool = True
    # Whether hints count towards W when a write asks for neither --strict nor --sloppy.
    # Off (the default): only the key's own replicas count, so R + W > N reads see the
    # write. On (--sloppy-quorum): a hint on a fallback counts for the replica it stands
    # in for, so writes survive more failures but a QUORUM read may miss them until
    # handoff has run.
    sloppy_quorum: bool = False


def required_replicas(quorum: cpb.Quorum, n: int, default_level: int, what: str) -> int:
    """How many replicas must answer for this quorum with replication factor n."""
    if quorum.count:
        if quorum.count > n:
            raise InvalidArgument(
                f"{what}={quorum.count} exceeds the replication factor N={n}; use 1..{n}"
            )
        return quorum.count
    level = quorum.level or default_level
    if level == cpb.ANY:
        if what != "W":
            raise InvalidArgument(
                "consistency ANY is for writes only: a write acknowledged by a hint alone "
                "cannot be read until handoff delivers it; read at ONE or above"
            )
        return 1
    fixed = {cpb.ONE: 1, cpb.TWO: 2, cpb.THREE: 3, cpb.QUORUM: n // 2 + 1, cpb.ALL: n}
    if level not in fixed:
        raise InvalidArgument(
            f"unknown consistency level {level}; use ONE, TWO, THREE, QUORUM or ALL "
            "(or ANY, for writes)"
        )
    need = fixed[level]
    if need > n:
        raise InvalidArgument(
            f"consistency {LEVEL_NAMES[level]} needs {need} replicas but the replication "
            f"factor is N={n}"
        )
    return need


def is_any(quorum: cpb.Quorum) -> bool:
    """Whether a write asks for consistency ANY (an explicit count wins over the level)."""
    return not quorum.count and quorum.level == cpb.ANY


def counts_hints(strict: bool, sloppy: bool, any_level: bool, node_default: bool) -> bool:
    """Whether hints on fallback nodes count towards W for this write.

    ANY always counts them; otherwise the request's --strict or --sloppy, else the node's
    default (--sloppy-quorum, off unless set).
    """
    if strict and sloppy:
        raise InvalidArgument("--strict and --sloppy contradict each other; give one of them")
    if any_level:
        if strict:
            raise InvalidArgument("consistency ANY counts a hint alone, so it cannot be "
                                  "--strict; use ONE for one of the key's own replicas")
        return True
    if strict or sloppy:
        return sloppy
    return node_default


def _key_of(request: cpb.ClientRequest) -> bytes:
    op = request.WhichOneof("op")
    return getattr(request, op).key if op else b""


class Trace:
    """Collects what happened during one request (cheap no-op when disabled)."""

    def __init__(self, enabled: bool, coordinator: str, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = clock()
        self.pb = cpb.Trace(coordinator=coordinator) if enabled else None

    def ms(self) -> float:
        return (self.clock() - self.started) * 1000

    def event(self, text: str) -> None:
        if self.pb is not None:
            self.pb.events.append(cpb.TraceEvent(at_ms=round(self.ms(), 3), event=text))

    def replica(self, node: str, address: str, ok: bool, latency_ms: float,
                siblings: list[Sibling] | None, error: str = "", local: bool = False,
                hint_for: str = "", counted: bool = False) -> None:
        if self.pb is not None:
            self.pb.replicas.append(cpb.ReplicaTrace(
                node=node, address=address, ok=ok, latency_ms=round(latency_ms, 3),
                versions=[versions.sibling_to_pb(s) for s in siblings or ()], error=error,
                local=local, hint_for=hint_for, counted=counted,
            ))


@dataclass
class _Answer:
    node: str
    ok: bool
    latency_ms: float
    siblings: list[Sibling] | None = None
    error: KVError | TransportError | None = None
    hint_for: str = ""
    intent_txn: str = ""  # a read's: the transaction whose intent the replica holds

    def describe(self) -> str:
        if self.hint_for:
            return f"{self.node} (fallback for {self.hint_for}): {self._reason()}"
        if isinstance(self.error, TransportError):
            return f"{self.node} {self.error.reason}"
        return f"{self.node}: {self._reason()}"

    def _reason(self) -> str:
        if isinstance(self.error, TransportError):
            return self.error.reason
        if isinstance(self.error, KVError):
            return self.error.message
        return str(self.error)


class _NoReplica(Unavailable):
    """Every replica refused a forwarded write: it was delivered nowhere."""

    def __init__(self, message: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


def _with_mode(request: cpb.ClientRequest, sloppy: bool) -> cpb.ClientRequest:
    """A copy of a write request that says explicitly whether hints count."""
    out = cpb.ClientRequest()
    out.CopyFrom(request)
    write = out.put if out.WhichOneof("op") == "put" else out.delete
    write.sloppy, write.strict = sloppy, not sloppy
    return out


class Coordinator:
    def __init__(
        self,
        node_id: str,
        membership,
        transport: Transport,
        replica: Replica,
        config: CoordinatorConfig,
        monotonic: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
        forward_transport: Transport | None = None,
    ) -> None:
        self.monotonic = monotonic  # for latencies; the sim passes its virtual clock
        self.rng = rng or random.Random()
        # Where hints for owners that missed a write are kept (the handoff service).
        self.hint_sink: Callable[[str, bytes, list[Sibling]], Awaitable[None]] | None = None
        self.node_id = node_id
        self.membership = membership
        self.transport = transport
        # Forwarded writes on a lane of their own: a forward's answer waits for the whole
        # quorum round at the replica, and on the shared one-batch-in-flight queue it held
        # back this node's replica acknowledgements to that peer; forwards in a cycle (n1 to
        # n2, n2 to n3, n3 to n1, each coordinator needing an acknowledgement queued behind
        # its own forward) then waited on each other until the deadline.
        self.forward_transport = forward_transport or transport
        self.replica = replica
        self.config = config
        self.background: set[asyncio.Task] = set()
        # acks by kind (replica / hint, counted or not) and read repairs, for /metrics
        self.metrics: Counter[str] = Counter()
        # Resolves a transaction's intent met by a plain read (services/txn.py sets it):
        # (txn id, key, timeout) -> ("committed", its version) / ("open" or "aborted",
        # None): not committed, the older value is right / ("gone", None): the record was
        # forgotten (every replica resolved): read again.
        self.resolve_intent: Callable[[str, bytes, float],
                                      Awaitable[tuple[str, Sibling | None]]] | None = None

    # -- entry point -----------------------------------------------------------------
    async def execute(
        self, request: cpb.ClientRequest, *, forwarded: bool = False
    ) -> cpb.ClientReply:
        trace = Trace(request.trace, self.node_id, self.monotonic)
        timeout = (request.timeout_ms or self.config.timeout_ms) / 1000
        op = request.WhichOneof("op")
        request_id = (request.request_id or REQUEST_ID.get()  # a forwarded request keeps it
                      or (self._new_request_id() if request.trace else ""))
        token = None
        if request_id:  # named requests are logged step by step, on every node they reach
            token = REQUEST_ID.set(request_id)
            if trace.pb is not None:
                trace.pb.request_id = request_id
            log.info("%s %r: coordinating%s", op, _key_of(request),
                     " (forwarded)" if forwarded else "")
        try:
            if op == "get":
                reply = await self._get(request.get, trace, timeout)
            elif op == "put":
                put = request.put
                self._check_value(put.value)
                reply = await self._write(request, put.key, put.value, put.context, put.quorum,
                                          False, trace, timeout, forwarded, put.strict,
                                          put.sloppy, put.fence)
            elif op == "delete":
                delete = request.delete
                reply = await self._write(request, delete.key, b"", delete.context,
                                          delete.quorum, True, trace, timeout, forwarded,
                                          delete.strict, delete.sloppy, delete.fence)
            else:
                raise InvalidArgument("the request names no operation; send get, put or delete")
        except KVError as exc:
            trace.event(f"failed: {exc.message}")
            reply = cpb.ClientReply(error=exc.to_pb())
        except Exception as exc:  # never let a request crash the node
            log.exception("request failed")
            reply = cpb.ClientReply(error=common_pb2.Error(code=common_pb2.INTERNAL,
                                                           message=f"internal error: {exc!r}"))
        if trace.pb is not None and not reply.trace.coordinator:
            trace.pb.total_ms = round(trace.ms(), 3)
            reply.trace.CopyFrom(trace.pb)
        if token is not None:
            outcome = (f"failed: {reply.error.message}" if reply.HasField("error") else "ok")
            log.info("%s %r: %s after %.2f ms", op, _key_of(request), outcome, trace.ms())
            REQUEST_ID.reset(token)
        return reply

    def _new_request_id(self) -> str:
        # not from self.rng: an id must not shift the simulations' random streams
        return f"{self.node_id}-{uuid.uuid4().hex[:12]}"

    # -- validation and placement ----------------------------------------------------
    def _check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidArgument("the key is empty; keys are 1 to "
                                  f"{self.config.max_key_bytes} bytes")
        if len(key) > self.config.max_key_bytes:
            raise InvalidArgument(f"the key is {len(key)} bytes; the limit is "
                                  f"{self.config.max_key_bytes} bytes (--max-key-bytes)")

    def _check_value(self, value: bytes) -> None:
        if len(value) > self.config.max_value_bytes:
            raise InvalidArgument(f"the value is {len(value)} bytes; the limit is "
                                  f"{self.config.max_value_bytes} bytes (--max-value-bytes)")

    def _preference_list(self, key: bytes, trace: Trace) -> list[str]:
        if not self.membership.ready:
            waiting = ", ".join(sorted(self.membership.unresolved_seeds()))
            raise NotReady(f"{self.node_id} has not yet heard from seeds {waiting}; retry shortly")
        n = self.config.replication_factor
        pref = self.membership.ring.preference_list(key, n)
        if trace.pb is not None:
            trace.pb.preference_list.extend(pref)
        return pref

    def _other_owners(self, key: bytes, pref: list[str], trace: Trace) -> list[list[str]]:
        """The key's owners in the other rings a write must also satisfy now: after a
        move under way, and (for a while after a ring change) before it."""
        rings = getattr(self.membership, "write_rings", None)
        if rings is None:
            return []
        n = self.config.replication_factor
        out = []
        for ring in rings():
            owners = ring.preference_list(key, n)
            if owners != pref and owners not in out:
                out.append(owners)
        if out and trace.pb is not None:
            trace.event("ring changing: W is also needed among "
                        + "; ".join(", ".join(o) for o in out))
        return out

    async def _await_other_owners(self, others_sets: list[list[str]], need: int,
                                  tasks: dict[str, asyncio.Task], ok: list[_Answer],
                                  failed: list[_Answer], waiting: list[str], timeout: float,
                                  trace: Trace) -> tuple[list[_Answer], list[_Answer], list[str]]:
        """Wait (within the deadline) until `need` owners of each other ring acknowledged.

        During a join or a decommission the write must be durable on W of the owners that
        reads will use after the move, as well as on W of today's, or a read right after the
        move could miss it (Cassandra's pending ranges); likewise for the ring before a
        change, which a node that has not heard of the change still reads from."""
        def short() -> bool:
            acked = {self.node_id} | {a.node for a in ok if not a.hint_for}
            return any(len(acked & set(owners)) < min(need, len(owners))
                       for owners in others_sets)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while short():
            rest = [tasks[label] for label in waiting if not tasks[label].done()]
            if rest:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(rest, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            still = []
            for label in waiting:
                task = tasks[label]
                if not task.done():
                    still.append(label)
                    continue
                answer: _Answer = task.result()
                (ok if answer.ok else failed).append(answer)
                if trace.pb is not None:
                    trace.replica(answer.node, self._address(answer.node), answer.ok,
                                  answer.latency_ms, answer.siblings,
                                  "" if answer.ok else answer.describe(),
                                  local=False, hint_for=answer.hint_for, counted=answer.ok)
            if not rest and still == waiting:
                break
            waiting = still
        return ok, failed, waiting

    def _address(self, node: str) -> str:
        return self.membership.members.get(node, "")

    # -- replica calls ---------------------------------------------------------------
    async def _call(self, node: str, message: pb.PeerMessage, timeout: float,
                    hint_for: str = "") -> _Answer:
        started = self.monotonic()
        try:
            result = await self.transport.call(node, message, timeout)
        except TransportError as exc:
            return _Answer(node, False, (self.monotonic() - started) * 1000, error=exc,
                           hint_for=hint_for)
        latency = (self.monotonic() - started) * 1000
        if result.HasField("error"):
            return _Answer(node, False, latency, error=from_pb(result.error), hint_for=hint_for)
        return _Answer(node, True, latency, siblings=versions.from_pb(result.state),
                       hint_for=hint_for, intent_txn=result.intent_txn)

    async def _local(self, action, intent_txn: str | None = None) -> _Answer:
        started = self.monotonic()
        try:
            siblings = await action
        except KVError as exc:
            return _Answer(self.node_id, False, (self.monotonic() - started) * 1000, error=exc)
        return _Answer(self.node_id, True, (self.monotonic() - started) * 1000,
                       siblings=siblings, intent_txn=intent_txn or "")

    async def _gather(
        self, tasks: dict[str, asyncio.Task], need: int, timeout: float, trace: Trace,
        spares: Callable[[_Answer | None], list[asyncio.Task]] | None = None,
        counts_for: Callable[[_Answer], str | None] = lambda a: a.node,
    ) -> tuple[list[_Answer], list[_Answer], list[str]]:
        """Wait until `need` distinct owners answered, or all failed, or the deadline passed.

        `counts_for` names the replica an answer counts for (a hint counts for its owner;
        None: it does not count). When an answer fails, or no quorum has answered within a
        quarter of the deadline (speculation), `spares` may start more requests. Returns
        (successes, failures, labels still pending); pending tasks keep running.
        """
        ok: list[_Answer] = []
        failed: list[_Answer] = []
        covered: set[str] = set()
        # Quorum counting by callbacks: each task reports its completion once into
        # `arrived` and wakes the one waiter; one timer (speculation, then the deadline)
        # instead of an asyncio.wait, with its waiter, callbacks and timer, per answer.
        order: dict[asyncio.Future, int] = {}  # answers are handled in start order
        pending: set[asyncio.Future] = set()
        arrived: list[asyncio.Future] = []
        waker: list[asyncio.Future | None] = [None]

        def on_done(task: asyncio.Future) -> None:
            if task in pending:
                arrived.append(task)
                waiter = waker[0]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

        def watch(new: list[asyncio.Task]) -> None:
            for task in new:
                order[task] = len(order)
                pending.add(task)
                task.add_done_callback(on_done)

        def wake() -> None:
            waiter = waker[0]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        watch(list(tasks.values()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        speculate_at = loop.time() + timeout / 4 if spares is not None else deadline
        timer: asyncio.TimerHandle | None = None
        timer_at = 0.0
        try:
            while pending and len(covered) < need:
                if not arrived:
                    now = loop.time()
                    if deadline - now <= 0:
                        break
                    if speculate_at <= now:
                        speculate_at = deadline
                        watch(spares(None))
                    wake_at = min(deadline, speculate_at)
                    if timer is None or timer_at != wake_at:
                        if timer is not None:
                            timer.cancel()
                        timer, timer_at = loop.call_at(wake_at, wake), wake_at
                    waiter = waker[0] = loop.create_future()
                    try:
                        await waiter
                    finally:
                        waker[0] = None
                    continue
                batch = sorted(arrived, key=order.__getitem__) if len(arrived) > 1 \
                    else list(arrived)
                arrived.clear()
                for task in batch:
                    pending.discard(task)
                    answer: _Answer = task.result()
                    owner = counts_for(answer) if answer.ok else None
                    if answer.ok:
                        ok.append(answer)
                        if owner is not None:
                            covered.add(owner)
                        self.metrics[f"ack_{'hint' if answer.hint_for else 'replica'}"
                                     f"_{'counted' if owner is not None else 'extra'}"] += 1
                    else:
                        failed.append(answer)
                        if spares is not None:
                            watch(spares(answer))
                    if trace.pb is not None:
                        trace.replica(answer.node, self._address(answer.node), answer.ok,
                                      answer.latency_ms, answer.siblings,
                                      "" if answer.ok else answer.describe(),
                                      local=answer.node == self.node_id,
                                      hint_for=answer.hint_for, counted=owner is not None)
        finally:
            if timer is not None:
                timer.cancel()
        # (answers that arrived but were not handled are still in `pending`)
        waiting = [label for label, task in tasks.items() if task in pending]
        for task in pending:
            self._keep(task)
        return ok, failed, waiting

    def _keep(self, task: asyncio.Task) -> None:
        """Let a replica call finish after the client has its answer."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @staticmethod
    def _shortfall(what: str, need: int, ok: list[_Answer], failed: list[_Answer],
                   waiting: list[str], timeout: float) -> str:
        reasons = [a.describe() for a in failed]
        reasons += [f"{node} timed out after {timeout * 1000:.0f} ms" for node in waiting]
        answered = len(ok)
        return (f"{what}={need} needs {need} replicas, {answered} answered"
                + (f" ({'; '.join(reasons)})" if reasons else ""))

    # -- get -------------------------------------------------------------------------
    async def _get(self, get: cpb.GetRequest, trace: Trace, timeout: float,
                   again: bool = False) -> cpb.ClientReply:
        key = get.key
        self._check_key(key)
        n = self.config.replication_factor
        need = required_replicas(get.quorum, n, self.config.default_level, "R")
        pref = self._preference_list(key, trace)
        if trace.pb is not None:
            trace.pb.required = need
        message = pb.PeerMessage(read=pb.ReplicaRead(key=key))

        def ask(node: str) -> asyncio.Task:
            task = asyncio.create_task(
                # (the intent is looked up before the read: resolution merges the
                # version before it drops the intent, so the read meets one or the other)
                self._local(self.replica.read(key), self.replica.read_intent_of(key))
                if node == self.node_id
                else self._call(node, message, timeout))
            tasks[node] = task
            return task

        # Ask R replicas (ourselves first when we are one), or, by chance, all N; a
        # replica that fails is replaced by one not yet asked.
        ordered = sorted(pref, key=lambda node: (node != self.node_id,
                                                 not self.membership.is_up(node)))
        read_all = need >= n or self.rng.random() < self.config.read_all_chance
        first, unasked = (ordered, []) if read_all else (ordered[:need], ordered[need:])
        tasks: dict[str, asyncio.Task] = {}
        for node in first:
            ask(node)
        trace.event(f"read from {', '.join(first)}; R={need}"
                    + (" (all replicas)" if read_all and need < n else ""))

        def spare(failed: _Answer | None) -> list[asyncio.Task]:
            """On a failure ask one more replica; on speculation, all the rest."""
            started = []
            while unasked and (failed is None or not started):
                node = unasked.pop(0)
                trace.event(f"no quorum yet; also asking {node}")
                started.append(ask(node))
            return started

        ok, failed, waiting = await self._gather(tasks, need, timeout, trace, spare)
        if len(ok) < need:
            corrupt = [a for a in failed if isinstance(a.error, Corruption)]
            message_text = self._shortfall("R", need, ok, failed, waiting, timeout)
            if corrupt and len(ok) + len(corrupt) >= need:
                if ok:  # good copies exist: replace the damaged ones in the background
                    merged = []
                    for answer in ok:
                        merged = versions.sync(merged, answer.siblings or [])
                    for answer in corrupt:
                        self._keep(asyncio.ensure_future(
                            self._repair(answer.node, key, merged, timeout)))
                    trace.event("sent good copies to " + ", ".join(a.node for a in corrupt))
                raise Corruption(message_text + "; the damaged copies are being replaced "
                                 "from the good ones (`kv repair` does it for every key)")
            raise Unavailable(message_text)
        merged: list[Sibling] = []
        for answer in ok:
            merged = versions.sync(merged, answer.siblings or [])
        trace.event(f"R={need} reached; {len(merged)} version(s) after merge")
        if any(answer.intent_txn for answer in ok):
            merged, gone = await self._resolve_intents(key, ok, merged, trace, timeout)
            if gone and not again:
                return await self._get(get, trace, timeout, again=True)
        await self._read_repair(key, merged, ok, failed, waiting, tasks, need, n, trace,
                                timeout)
        values = versions.live(merged)
        reply = cpb.ClientReply()  # filled in place: a constructor would copy each part
        result = reply.get
        result.found = bool(values)
        add = result.siblings.add
        for s in values:
            versions.fill_version(add(), s)
        result.context = versions.encode_context(versions.read_context(merged))
        return reply

    async def _resolve_intents(self, key: bytes, ok: list[_Answer], merged: list[Sibling],
                               trace: Trace, timeout: float) -> tuple[list[Sibling], bool]:
        """Replicas hold transactions' intents on the key: ask each transaction's record
        (docs/transactions.md, "Isolation") so that a transaction committed before this
        read began is never missed. Returns the versions with the committed ones merged,
        and whether a record was already forgotten (every replica resolved: read again)."""
        if self.resolve_intent is None:
            raise Unavailable(f"{self.node_id} cannot resolve the transaction intents on "
                              f"{key!r} (it runs no transaction service)")
        gone = False
        for txn_id in sorted({answer.intent_txn for answer in ok if answer.intent_txn}):
            outcome, version = await self.resolve_intent(txn_id, key, timeout)
            trace.event(f"intent of transaction {txn_id}: {outcome}")
            self.metrics[f"read_intents_{outcome}"] += 1
            if version is not None:
                merged = versions.sync(merged, [version])
            gone = gone or outcome == "gone"
        return merged, gone

    # -- read repair -----------------------------------------------------------------
    async def _read_repair(self, key: bytes, merged: list[Sibling], ok: list[_Answer],
                           failed: list[_Answer], waiting: list[str],
                           tasks: dict[str, asyncio.Task], need: int, n: int, trace: Trace,
                           timeout: float) -> None:
        """Send the merged versions to replicas that answered with less.

        Replicas that took part in a QUORUM-or-stronger read are repaired before the read
        returns; replicas that answer later are repaired in the background.
        """
        want = {s.dot for s in merged}
        stale = [a for a in ok if {s.dot for s in a.siblings or ()} != want]
        # a replica whose record is corrupted gets a good copy (it replaces the damage)
        stale += [a for a in failed if isinstance(a.error, Corruption) and merged]
        if stale:
            blocking = self.config.blocking_read_repair and need >= n // 2 + 1
            names = ", ".join(a.node for a in stale)
            trace.event(f"read repair: {names} stale; sending merged versions"
                        + (" (before answering)" if blocking else " (in the background)"))
            repairs = [self._repair(a.node, key, merged, timeout) for a in stale]
            if blocking:
                results = await asyncio.gather(*repairs)
                failed = [node for node, done in zip(stale, results, strict=True) if not done]
                trace.event("read repair done" if not failed else
                            "read repair failed for " + ", ".join(a.node for a in failed))
            else:
                for repair in repairs:
                    self._keep(asyncio.ensure_future(repair))
        for node in waiting:
            task = tasks[node]

            def late(done: asyncio.Task, node: str = node) -> None:
                if done.cancelled():
                    return
                answer: _Answer = done.result()
                if answer.ok and {s.dot for s in answer.siblings or ()} != want:
                    self._keep(asyncio.ensure_future(self._repair(node, key, merged, timeout)))

            task.add_done_callback(late)

    async def _repair(self, node: str, key: bytes, merged: list[Sibling], timeout: float) -> bool:
        if node == self.node_id:
            answer = await self._local(self.replica.merge(key, merged))
        else:
            message = pb.PeerMessage(write=pb.ReplicaWrite(key=key, state=versions.to_pb(merged)))
            answer = await self._call(node, message, timeout)
        self.metrics["read_repair_ok" if answer.ok else "read_repair_failed"] += 1
        if not answer.ok:
            log.info("read repair of %r on %s failed: %s", key, node, answer.describe())
        return answer.ok

    # -- put / delete ----------------------------------------------------------------
    async def _write(self, request: cpb.ClientRequest, key: bytes, value: bytes, context: bytes,
                     quorum: cpb.Quorum, tombstone: bool, trace: Trace, timeout: float,
                     forwarded: bool, strict: bool = False,
                     sloppy_asked: bool = False,
                     fence_pb: common_pb2.Fence | None = None) -> cpb.ClientReply:
        self._check_key(key)
        n = self.config.replication_factor
        need = required_replicas(quorum, n, self.config.default_level, "W")
        any_level = is_any(quorum)
        fence = self._check_fence(fence_pb, strict, sloppy_asked, any_level)
        sloppy = counts_hints(strict or fence is not None, sloppy_asked, any_level,
                              self.config.sloppy_quorum)
        try:
            seen = versions.parse_context(context)
        except versions.InvalidContext as exc:
            raise InvalidArgument(str(exc)) from exc
        pref = self._preference_list(key, trace)
        if trace.pb is not None:
            trace.pb.required = need
        if self.node_id not in pref:
            if forwarded:
                raise NotReady(f"{self.node_id} was asked to coordinate a key it does not "
                               "replicate; the nodes disagree about membership, retry shortly")
            if not any_level:
                return await self._forward(request, pref, trace, timeout, sloppy)
            # ANY: forward only to replicas thought up; a forward that times out may have
            # been applied, and must not be minted a second time here
            up = [node for node in pref if self.membership.is_up(node)]
            down = [f"{node} is down (failure detector)" for node in pref if node not in up]
            try:
                return await self._forward(request, up, trace, timeout, sloppy)
            except _NoReplica as exc:
                return await self._write_unowned(key, value, seen, tombstone, pref, trace,
                                                 down + exc.reasons)
        verb = "delete" if tombstone else "write"
        wire: list[common_pb2.VersionSet] = []
        local = await self._local(
            self.replica.mint(key, seen, value, tombstone=tombstone, fence=fence, wire=wire))
        trace.replica(self.node_id, self._address(self.node_id), local.ok, local.latency_ms,
                      local.siblings, "" if local.ok else local.describe(), local=True,
                      counted=local.ok)
        if not local.ok:
            if isinstance(local.error, Fenced):
                raise self._fenced(local.error, [local], [], verb, need)
            raise local.error if isinstance(local.error, KVError) else Unavailable(local.describe())
        new = local.siblings[-1]
        concurrent = len(local.siblings) - 1  # siblings the writer had not seen
        trace.event(f"minted {verb} {new.node}:{new.counter} at {self.node_id} (durable)"
                    + (f" under fence {versions.format_fence(fence)}" if fence else "")
                    + (f"; {concurrent} concurrent sibling(s) the writer had not seen are kept"
                       if concurrent else ""))
        # the siblings as the mint encoded them for its record (one encoding per write)
        state = wire[-1] if wire else versions.to_pb(local.siblings)
        traced = trace.pb is not None
        message = pb.PeerMessage()  # filled in place: a constructor would copy `state`
        replica_write = message.write
        replica_write.key = key
        replica_write.state.CopyFrom(state)
        if traced:
            replica_write.reply_state = True
        if fence:
            replica_write.fence.CopyFrom(fence_pb)
        others = [node for node in pref if node != self.node_id]
        other_sets = self._other_owners(key, pref, trace)
        hinting = self.config.hinted_handoff
        def fallback_nodes():  # walked only when a hint is needed
            for node in self.membership.ring.walk(token_of(key)):
                if node not in pref and self.membership.is_up(node):
                    yield node

        fallbacks = fallback_nodes()
        tasks: dict[str, asyncio.Task] = {}
        hinted: dict[str, str] = {}  # owner -> fallback holding its hint
        counting = "counts towards W (sloppy)" if sloppy else "does not count towards W (strict)"

        def hint(owner: str) -> list[asyncio.Task]:
            """Send the write to the next healthy node past the preference list."""
            if not hinting or owner in hinted:
                return []
            fallback = next(fallbacks, None)
            if fallback is None:
                trace.event(f"no healthy fallback node to hold a hint for {owner}")
                hinted[owner] = ""
                return []
            hinted[owner] = fallback
            trace.event(f"{owner} is down or slow: writing a hint for it to {fallback}; "
                        f"the hint {counting}")
            hint_message = pb.PeerMessage(write=pb.ReplicaWrite(
                key=key, state=state, hint_for=owner, reply_state=traced))
            task = asyncio.create_task(self._call(fallback, hint_message, timeout, owner))
            tasks[f"{fallback} (hint for {owner})"] = task
            return [task]

        for node in others:
            if self.membership.is_up(node):
                tasks[node] = asyncio.create_task(self._call(node, message, timeout))
        if tasks:
            trace.event(f"sent to {', '.join(tasks)}; W={need}"
                        + (" (ANY: a hint alone counts)" if any_level
                           else " (sloppy: hints count)" if sloppy
                           else " (strict: only the key's replicas count)"))
        for node in others:
            if not self.membership.is_up(node):
                hint(node)
        pending = sorted({node for owners in other_sets for node in owners
                          if node not in pref and node != self.node_id})
        for node in pending:  # owns the key in a ring a write must also satisfy now
            tasks[f"{node} (pending)"] = asyncio.create_task(self._call(node, message, timeout))
        if pending:
            trace.event(f"ring changing: also sent to {', '.join(pending)}")

        def spare(failed: _Answer | None) -> list[asyncio.Task]:
            if failed is not None and isinstance(failed.error, Fenced):
                return []  # it refused the write: a hint would deliver it anyway
            if failed is not None:
                owner = failed.hint_for or failed.node
                if failed.hint_for:
                    hinted.pop(owner, None)  # that fallback failed: try the next one
                return hint(owner)
            # speculation: hint for every owner that has not answered yet (in a strict
            # write such a hint helps delivery but never counts; the owner still may)
            answered = {a for a, t in tasks.items() if t.done() and t.result().ok}
            return [t for node in others if node not in answered for t in hint(node)]

        def counts_for(answer: _Answer) -> str | None:
            """The replica an acknowledgement counts for; None: it does not count."""
            if answer.hint_for:
                return answer.hint_for if sloppy else None
            return answer.node if answer.node in pref else None

        ok, failed, waiting = await self._gather(
            tasks, need - 1, timeout, trace, spare if hinting else None, counts_for)
        if other_sets:
            ok, failed, waiting = await self._await_other_owners(
                other_sets, need, tasks, ok, failed, waiting, timeout, trace)
        refused = [a for a in failed if isinstance(a.error, Fenced)]
        if hinting:
            self._hint_stragglers(key, local.siblings,
                                  [o for o in others if o not in {a.node for a in refused}],
                                  tasks, ok, trace)
        owners = {self.node_id} | {o for a in ok if (o := counts_for(a))}
        true_acks = [self.node_id, *(a.node for a in ok if not a.hint_for)]
        hint_acks = [a for a in ok if a.hint_for]
        held = ", ".join(f"{a.node} (for {a.hint_for})" for a in hint_acks)
        if refused:
            raise self._fenced(refused[0].error, refused, true_acks, verb, need)
        if len(owners) < need:
            raise Unavailable(self._write_shortfall(
                need, verb, sloppy, true_acks, hint_acks, failed, waiting, timeout))
        for owners in other_sets:
            if len(set(true_acks) & set(owners)) < min(need, len(owners)):
                raise Unavailable(
                    f"W={need} reached among the key's owners, but the ring is changing and "
                    f"only {', '.join(sorted(set(true_acks) & set(owners))) or 'none'} of its "
                    f"owners in the other ring ({', '.join(owners)}) acknowledged; the write "
                    "may have been applied")
        if hint_acks and sloppy:
            trace.event(f"W={need} reached (sloppy quorum): replicas "
                        f"{', '.join(true_acks)} and counted hints on {held}")
        else:
            trace.event(f"W={need} reached: replicas {', '.join(true_acks)} acknowledged"
                        + (f"; hints on {held} not counted (strict)" if hint_acks else ""))
        # The reply context is what this writer has seen: its own context plus this write,
        # never the concurrent siblings kept beside it (they are in `stored`).
        after = versions.context_after_write(seen, local.siblings, new)
        reply = cpb.ClientReply()
        result = reply.put
        result.stored.extend(state.versions)  # local.siblings, encoded once above
        result.context = versions.encode_context(after)
        if concurrent:
            result.concurrent = concurrent
        return reply

    @staticmethod
    def _check_fence(fence_pb: common_pb2.Fence | None, strict: bool, sloppy: bool,
                     any_level: bool) -> versions.Fence | None:
        """The write's fence (None: not guarded), refused when malformed or combined with a
        mode in which a replica that never checked the token could count."""
        fence = versions.fence_from_pb(fence_pb) if fence_pb is not None else None
        if fence is None:
            if fence_pb is not None and fence_pb.lock:
                raise InvalidArgument(f"the fence of lock {fence_pb.lock!r} has token 0; "
                                      "tokens start at 1 (give LOCK:TOKEN as `kv lock` prints)")
            return None
        try:
            versions.check_fence(*fence)
        except versions.InvalidFence as exc:
            raise InvalidArgument(str(exc)) from exc
        if sloppy or any_level:
            raise InvalidArgument(
                f"a guarded write (--fence) counts only replicas that checked its token, so "
                f"it is always strict: drop {'ANY' if any_level else '--sloppy'}")
        return fence

    def _fenced(self, first: Fenced, refused: list[_Answer], accepted: list[str], verb: str,
                need: int) -> Fenced:
        """The error for a guarded write some replicas refused (`accepted`: where it is
        durable anyway)."""
        errors = [a.error for a in refused if isinstance(a.error, Fenced)]
        highest = max(e.highest for e in errors)
        by = ", ".join(f"{a.node} (highest {a.error.highest})" for a in refused
                       if isinstance(a.error, Fenced))
        text = (f"lock {first.lock!r} token {first.token} is below the highest token seen for "
                f"it ({highest}): the guarded {verb} was refused by {by}")
        if not accepted:
            text += "; nothing was written"
        else:
            text += (f"; it is durable on {', '.join(accepted)} ({len(accepted)} of W={need} "
                     "accepted), was not rolled back, and is hidden from reads wherever a "
                     "version of the key written under a higher token of the lock is held. "
                     "The lock has a newer holder: stop writing under this token")
        return Fenced(text, lock=first.lock, token=first.token, highest=highest,
                      refused_by=tuple(a.node for a in refused), accepted_by=tuple(accepted))

    def _write_shortfall(self, need: int, verb: str, sloppy: bool, true_acks: list[str],
                         hint_acks: list[_Answer], failed: list[_Answer], waiting: list[str],
                         timeout: float) -> str:
        """Why a write did not reach W: who acknowledged, which hints exist, what counted."""
        reasons = [a.describe() for a in failed]
        reasons += [f"{label} timed out after {timeout * 1000:.0f} ms" for label in waiting]
        covered = set(true_acks) | ({a.hint_for for a in hint_acks} if sloppy else set())
        text = (f"W={need} needs {need} replicas, {len(true_acks)} answered"
                + (f" ({'; '.join(reasons)})" if reasons else ""))
        if hint_acks:
            held = ", ".join(f"for {a.hint_for} on {a.node}" for a in hint_acks)
            if sloppy:
                text += f"; hints held ({held}) counted, {len(covered)} of {need} in all"
            else:
                would = len(set(true_acks) | {a.hint_for for a in hint_acks})
                text += (f"; hints are held on fallback nodes ({held}), but hints do not "
                         f"count towards W in a strict write: --sloppy would have counted "
                         f"them ({would} of {need})")
        stored_on = ", ".join(true_acks)
        text += (f". The {verb} is durable on {stored_on}"
                 + (f" and held as hints on {', '.join(a.node for a in hint_acks)}"
                    if hint_acks else "")
                 + " and may become visible to later reads; it was not rolled back.")
        return text

    def _hint_stragglers(self, key: bytes, siblings: list[Sibling], owners: list[str],
                         tasks: dict[str, asyncio.Task], ok: list[_Answer],
                         trace: Trace) -> None:
        """Keep a hint here for every owner that has not got the write (Cassandra-style).

        Owners that failed are hinted now; owners still being waited for are hinted if
        their write fails later. Hinted handoff delivers these like any other hint.
        """
        covered = {a.hint_for or a.node for a in ok}
        for owner in owners:
            if owner in covered:
                continue
            task = tasks.get(owner)
            if task is None or task.done():
                trace.event(f"keeping a hint for {owner} on {self.node_id}")
                self._keep(asyncio.ensure_future(self._hint_locally(owner, key, siblings)))
            else:
                def later(done: asyncio.Task, owner: str = owner) -> None:
                    # a replica that refused a guarded write gets no hint of it
                    if not done.cancelled() and not done.result().ok \
                            and not isinstance(done.result().error, Fenced):
                        self._keep(asyncio.ensure_future(
                            self._hint_locally(owner, key, siblings)))

                task.add_done_callback(later)

    async def _hint_locally(self, owner: str, key: bytes, siblings: list[Sibling]) -> None:
        if self.hint_sink is None:
            return
        try:
            await self.hint_sink(owner, key, siblings)
        except KVError as exc:
            log.warning("could not keep a hint for %s (key %r): %s", owner, key, exc.message)

    async def _write_unowned(self, key: bytes, value: bytes, seen: versions.Context,
                             tombstone: bool, pref: list[str], trace: Trace,
                             reasons: list[str]) -> cpb.ClientReply:
        """ANY when no replica of the key can take the write: mint it here under a fresh
        actor (no replica can have seen it, so the dot is unique) and keep a durable hint
        for every replica; one hint kept is W=1. Handoff delivers them."""
        why = "; ".join(reasons) or "none is up"
        verb = "delete" if tombstone else "write"
        if not self.config.hinted_handoff or self.hint_sink is None:
            raise Unavailable(f"consistency ANY: no replica of the key could take the {verb} "
                              f"({why}) and {self.node_id} keeps no hints "
                              "(--no-hinted-handoff); nothing was written")
        siblings = self.replica.mint_unowned(seen, value, tombstone=tombstone)
        new = siblings[-1]
        trace.event(f"no replica of the key could take the {verb} ({why}); minted "
                    f"{new.node}:{new.counter} at {self.node_id} under a fresh actor (ANY)")

        async def keep(owner: str) -> _Answer:
            started = self.monotonic()
            try:
                await self.hint_sink(owner, key, siblings)
            except KVError as exc:
                return _Answer(self.node_id, False, (self.monotonic() - started) * 1000,
                               error=exc, hint_for=owner)
            return _Answer(self.node_id, True, (self.monotonic() - started) * 1000,
                           siblings=siblings, hint_for=owner)

        answers = await asyncio.gather(*(keep(owner) for owner in pref))
        for a in answers:
            trace.replica(self.node_id, self._address(self.node_id), a.ok, a.latency_ms,
                          a.siblings, "" if a.ok else a.describe(), local=True,
                          hint_for=a.hint_for, counted=a.ok)
        held = [a.hint_for for a in answers if a.ok]
        if not held:
            failures = "; ".join(a.describe() for a in answers)
            raise Unavailable(f"consistency ANY: no replica of the key could take the {verb} "
                              f"({why}) and {self.node_id} could not keep a hint for any of "
                              f"them ({failures}); nothing was written")
        trace.event(f"W=1 reached (ANY): hints for {', '.join(held)} kept on {self.node_id}; "
                    "hinted handoff delivers them when the replicas are back")
        after = versions.context_after_write(seen, siblings, new)
        return cpb.ClientReply(put=cpb.PutResult(
            stored=[versions.sibling_to_pb(s) for s in siblings],
            context=versions.encode_context(after),
        ))

    async def _forward(self, request: cpb.ClientRequest, pref: list[str], trace: Trace,
                       timeout: float, sloppy: bool) -> cpb.ClientReply:
        """Writes are minted at a replica: hand the request to the first one that answers.

        The request goes with its write mode decided here (strict or sloppy, from this
        node's default when the client gave neither), so the replica counts as asked.
        Raises `_NoReplica` when every replica refused the connection (nothing written).
        """
        self.metrics["writes_forwarded"] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reasons = []
        request = _with_mode(request, sloppy)
        for node in sorted(pref, key=lambda node: not self.membership.is_up(node)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            trace.event(f"{self.node_id} is not a replica; forwarding to {node}")
            message = pb.PeerMessage(forward=pb.Forward(request=request))
            try:
                result = await self.forward_transport.call(node, message, remaining)
            except PeerTimeout as exc:
                raise Timeout(
                    f"forwarded the write to {node}, which did not answer within "
                    f"{timeout * 1000:.0f} ms ({exc.reason}); the write may have been applied"
                ) from exc
            except PeerUnreachable as exc:  # never delivered: safe to try the next replica
                reasons.append(f"{node} {exc.reason}")
                continue
            except TransportError as exc:
                raise Unavailable(
                    f"forwarded the write to {node}, which failed: {exc.reason}; the write "
                    "may have been applied") from exc
            if result.HasField("error"):
                raise from_pb(result.error)
            reply = result.reply
            reply.forwarded = True
            if reply.HasField("trace") and trace.pb is not None:
                inner = reply.trace
                merged = cpb.Trace()
                merged.CopyFrom(trace.pb)
                merged.forwarded_to = node
                merged.replicas.extend(inner.replicas)
                merged.events.extend(inner.events)
                merged.required = inner.required
                merged.total_ms = round(trace.ms(), 3)
                reply.trace.CopyFrom(merged)
            return reply
        raise _NoReplica("no replica of the key could coordinate the write ("
                         + "; ".join(reasons) + "); nothing was written", reasons)

    async def drain(self) -> None:
        """Wait for background replica calls (used on shutdown and in tests)."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
