"""Distributed transactions: the I/O around core/txn.py (issue 12; docs/transactions.md).

One `TxnService` per node plays three roles:

* **participant** (`on_peer`): places intents on the keys this node replicates (checking
  the transaction's condition against its own versions, inside the key's storage
  mutation, so a plain write cannot slip between the check and the intent), resolves
  them, and answers reads with the intent it holds;
* **coordinator** (`put`): record PENDING in Raft -> intents at a strict quorum of each
  key's replicas -> decision in Raft (compare-and-set; the commit point) -> resolution at
  every replica -> the record is forgotten once every replica acknowledged;
* **resolver** (`resolve_foreign`, the sweeper): whoever meets another transaction's
  intent looks its record up and finishes it: COMMITTED -> merge its version, ABORTED ->
  drop the intent, PENDING past its deadline -> abort it through Raft first.

Raft commands go through the node's raft driver with this node's own client session, so a
retried command (a forward broken by a leader change) applies once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from kvstore._proto import internode_pb2 as pb
from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import txn_pb2 as tpb
from kvstore.core import txn as core
from kvstore.core import versions
from kvstore.core.errors import Conflict, InvalidArgument, KVError, NotReady, Timeout, Unavailable
from kvstore.core.hlc import HLC
from kvstore.services.meta_session import MetaSession
from kvstore.services.replica import Replica
from kvstore.storage.intents import IntentStore, IntentStoreFull
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)

MetaSend = Callable[[mpb.MetaRequest], Awaitable[mpb.MetaReply]]
Reply = tpb.TxnPeerReply
DEFAULT_TTL_MS = 5_000
READ_ROUNDS = 8  # an atomic read retries at most this many times while keys keep changing
THREE_PC_TIMEOUT_MS = 1_000  # 3pc: a participant's wait in each phase
MAX_3PC_OUTCOMES = 10_000  # 3pc outcomes remembered per node (in memory) for the termination


class Aborted(KVError):
    """The transaction was not committed: nothing it wrote is visible."""

    code = Conflict.code


class OutcomeUnknown(KVError):
    code = Timeout.code


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class TxnTrace:
    def __init__(self, enabled: bool, clock: Callable[[], float]) -> None:
        self.enabled, self.clock, self.t0 = enabled, clock, clock()
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        if self.enabled:
            self.lines.append(f"{(self.clock() - self.t0) * 1000:7.1f} ms  {text}")


class TxnService:
    def __init__(self, node_id: str, transport: Transport, membership, replica: Replica,
                 intents: IntentStore, meta_send: MetaSend | None, *,
                 replication_factor: int, clock_ms: Callable[[], int],
                 monotonic: Callable[[], float], rng: random.Random, timeout: float = 2.0,
                 sweep_interval: float = 1.0, offload=None) -> None:
        self.node_id = node_id
        self.transport = transport
        self.membership = membership
        self.replica = replica
        self.intents = intents
        self.meta_send = meta_send
        self.n = replication_factor
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self.rng = rng
        self.timeout = timeout
        self.sweep_interval = sweep_interval
        self.offload = offload
        self._session = MetaSession(self._call_meta)
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._finishing: set[str] = set()  # resolutions started by plain reads (one each)
        replica.intent_of = intents.txn_of
        replica.read_intent_of = intents.record_txn_of
        # Transactions are ordered by hybrid logical timestamps: every txn message carries
        # the sender's, so a commit is stamped above everything its coordinator heard of.
        self.hlc = HLC(clock_ms)
        # 3PC has no record: each participant remembers how its transactions ended (for
        # the termination protocol of the others), the last MAX_3PC_OUTCOMES.
        self.outcomes_3pc: OrderedDict[str, bool] = OrderedDict()
        # Simulations crash a coordinator at a step: on_step(name) may raise. The steps:
        # "before_intents", "intent" (after each key's quorum), "after_record" (decided,
        # nothing resolved), "resolving" (after the first key's resolution).
        self.on_step: Callable[[str], None] | None = None
        # On the raft leader (the node sets it): the records not yet forgotten, so that
        # the sweeper aborts PENDING ones past their deadline (a coordinator that died
        # before placing any intent) and re-resolves decided ones until every replica
        # acknowledged. Elsewhere it returns nothing.
        self.live_records: Callable[[], list[tpb.TxnRecord]] = lambda: []

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self.meta_send is not None and self.sweep_interval > 0:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self._background) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    # ---- Raft (the records) -----------------------------------------------------------
    def _need_raft(self) -> MetaSend:
        if self.meta_send is None:
            raise Unavailable(f"{self.node_id} does not run the raft metadata group, which "
                              "holds transaction records (start nodes with --raft-voters)")
        return self.meta_send

    async def _call_meta(self, req: mpb.MetaRequest, deadline: float) -> mpb.MetaReply:
        send = self._need_raft()
        while True:
            left = deadline - self.monotonic()
            if left <= 0:
                raise OutcomeUnknown("the raft group gave no definite answer in time")
            try:
                reply = await asyncio.wait_for(send(req), left)
                if reply.result.code not in (mpb.META_UNKNOWN, mpb.META_UNAVAILABLE):
                    return reply
            except TimeoutError:
                pass  # (a stopped driver may fail at once: never spin without sleeping)
            await asyncio.sleep(min(0.05, max(0.001, deadline - self.monotonic())))

    async def _command(self, deadline: float, **op) -> mpb.MetaResult:
        result = await self._session.command(deadline, **op)
        if result.code == mpb.META_SESSION_EXPIRED:
            if "unknown" in result.error:
                self._session.forget()  # evicted: register again next time
            raise OutcomeUnknown(result.error)
        return result

    async def record(self, txn_id: str, timeout: float | None = None) -> tpb.TxnRecord | None:
        """The transaction's record (a linearizable read), None if there is none."""
        deadline = self.monotonic() + (timeout or self.timeout)
        reply = await self._call_meta(mpb.MetaRequest(txn_query=tpb.TxnQuery(txn_id=txn_id)),
                                      deadline)
        if reply.result.code == mpb.META_NOT_FOUND:
            return None
        if reply.result.code != mpb.META_OK:
            raise Unavailable(reply.result.error)
        if reply.result.txn.commit_hlc:
            self.hlc.update(reply.result.txn.commit_hlc)
        return reply.result.txn

    async def decide(self, txn_id: str, state: int, reason: str, deadline: float, *,
                     by_coordinator: bool = False, versions_: list[tpb.TxnVersion] = (),
                     commit_hlc: int = 0) -> tpb.TxnRecord:
        res = await self._command(deadline, txn_decide=tpb.TxnDecide(
            txn_id=txn_id, state=state, by=self.node_id, now_ms=self.clock_ms(),
            reason=reason, versions=list(versions_), by_coordinator=by_coordinator,
            commit_hlc=commit_hlc))
        if res.code == mpb.META_NOT_FOUND:
            return tpb.TxnRecord(txn_id=txn_id, state=tpb.TXN_UNKNOWN)
        if not res.HasField("txn"):
            raise Unavailable(res.error or "no transaction record in the decision's reply")
        return res.txn

    # ---- participant ------------------------------------------------------------------
    async def on_peer(self, source: str, msg: tpb.TxnPeer) -> Reply:
        kind = msg.WhichOneof("body")
        if kind == "prepare":
            self.hlc.update(msg.prepare.hlc)
            reply = await self._prepare(msg.prepare)
            reply.hlc = self.hlc.now().pack()
            return reply
        if kind == "resolve":
            self.hlc.update(msg.resolve.hlc)
            await self._resolve_here(msg.resolve)
            return Reply(hlc=self.hlc.now().pack())
        if kind == "precommit":
            self.hlc.update(msg.precommit.hlc)
            return await self._precommit(msg.precommit)
        if kind == "ask":
            return Reply(phase=self._phase_of(msg.ask.txn_id))
        if kind == "read":
            state = await self.replica.read_state(msg.read.key)
            intent = self.intents.get(msg.read.key)
            reply = Reply(state=state, has_intent=intent is not None)
            if intent is not None:
                reply.intent.CopyFrom(intent)
            return reply
        return Reply(outcome=Reply.REFUSED, error=f"unknown txn message {kind!r}")

    async def _prepare(self, p: tpb.TxnPrepare) -> Reply:
        out: list[Reply] = []
        intent = tpb.TxnIntent(txn_id=p.txn_id, write=p.write, value=p.value,
                               tombstone=p.tombstone, deadline_ms=p.deadline_ms,
                               coordinator=p.coordinator, protocol=p.protocol,
                               timeout_ms=p.timeout_ms, peers=list(p.peers))
        if p.protocol == "3pc":
            if p.txn_id in self.outcomes_3pc:
                return Reply(outcome=Reply.REFUSED, error=f"{self.node_id}: transaction "
                             f"{p.txn_id} has ended here already")
            intent.phase_deadline_ms = self.clock_ms() + p.timeout_ms

        def mutation(record: bytes | None) -> None:
            # inside the key's storage mutation: no mint can run between check and intent
            held = self.intents.get(p.key)
            if held is not None and held.txn_id != p.txn_id:
                out.append(Reply(outcome=Reply.CONFLICT, conflict_txn=held.txn_id,
                                 conflict_protocol=held.protocol,
                                 error=f"{self.node_id}: key {_text(p.key)!r} has an intent of "
                                       f"transaction {held.txn_id}"))
                return None
            local = versions.decode_record(record).siblings if record else []
            why = core.check_condition(p.condition, local)
            if why is not None:
                out.append(Reply(outcome=Reply.CONDITION_FAILED,
                                 error=f"{self.node_id}: condition on "
                                       f"{_text(p.key)!r} failed: {why}"))
                return None
            try:
                self.intents.place(p.key, intent)
            except IntentStoreFull as exc:
                out.append(Reply(outcome=Reply.REFUSED, error=f"{self.node_id}: {exc}"))
                return None
            out.append(Reply(state=versions.to_pb(local)))
            return None

        await self.replica._update(p.key, mutation)
        if out[-1].outcome == Reply.OK:
            await self._persist(p.key)
        return out[-1]

    async def _precommit(self, pc: tpb.TxnPreCommit) -> Reply:
        intent = self.intents.get(pc.key)
        if intent is None or intent.txn_id != pc.txn_id:
            return Reply(outcome=Reply.REFUSED, error=f"{self.node_id}: no intent of "
                         f"{pc.txn_id} on {_text(pc.key)!r} (its timeout aborted it?)")
        intent.precommitted = True
        if pc.HasField("version"):
            intent.version.CopyFrom(pc.version)
        intent.phase_deadline_ms = self.clock_ms() + intent.timeout_ms
        await self._persist(pc.key)
        return Reply(hlc=self.hlc.now().pack())

    def _phase_of(self, txn_id: str) -> str:
        if txn_id in self.outcomes_3pc:
            return "committed" if self.outcomes_3pc[txn_id] else "aborted"
        held = [i for _, i in self.intents.items() if i.txn_id == txn_id]
        if not held:
            return "unknown"
        return "precommitted" if any(i.precommitted for i in held) else "uncertain"

    def _remember_3pc(self, txn_id: str, committed: bool) -> None:
        self.outcomes_3pc[txn_id] = committed
        while len(self.outcomes_3pc) > MAX_3PC_OUTCOMES:
            self.outcomes_3pc.popitem(last=False)

    async def _terminate_3pc(self, now: int) -> None:
        """3PC's termination protocol for intents whose phase timed out: ask the other
        participants this side of any partition; commit if one committed or is
        precommitted (or this one is and nobody says otherwise), abort otherwise."""
        late = {}
        for key, intent in self.intents.items():
            if intent.protocol == "3pc" and core.three_pc_timeout(intent, now) is not None:
                late.setdefault(intent.txn_id, []).append((key, intent))
        for txn_id, held in sorted(late.items()):
            peers = sorted({p for _, i in held for p in i.peers} - {self.node_id})
            answers = await asyncio.gather(*(self._ask(p, tpb.TxnPeer(
                ask=tpb.TxnAsk(txn_id=txn_id)), self.timeout / 4) for p in peers))
            phases = {r.phase for r in answers if r is not None}
            mine = core.three_pc_timeout(held[0][1], now)
            commit = ("committed" in phases or "precommitted" in phases
                      or (mine == "commit" and "aborted" not in phases))
            if txn_id in self.outcomes_3pc:
                commit = self.outcomes_3pc[txn_id]
            self._remember_3pc(txn_id, commit)
            log.warning("%s: 3PC transaction %s timed out here (%s); peers say %s: %s",
                        self.node_id, txn_id, mine, sorted(phases) or "nothing",
                        "commit" if commit else "abort")
            for key, intent in held:
                await self._resolve_here(tpb.TxnResolve(
                    txn_id=txn_id, key=key, commit=commit,
                    version=intent.version if commit and intent.HasField("version")
                    else None))

    async def _persist(self, key: bytes) -> None:
        if self.intents.path is None:
            return
        if self.offload is None:
            self.intents.persist(key)
        else:
            await self.offload(self.intents.persist, key)

    async def _resolve_here(self, r: tpb.TxnResolve) -> None:
        """Commit: merge the version, then drop the intent (the value is durable before
        the intent goes, so a quorum read always meets one or the other). Abort: drop it."""
        if r.commit and r.HasField("version"):
            await self.replica.merge(r.key, [versions.sibling_from_pb(r.version)])
        held = self.intents.get(r.key)
        if held is not None and held.txn_id == r.txn_id and held.protocol == "3pc":
            self._remember_3pc(r.txn_id, r.commit)
        if self.intents.remove(r.key, r.txn_id):
            await self._persist(r.key)

    # ---- peers ------------------------------------------------------------------------
    def replicas(self, key: bytes) -> list[str]:
        if not self.membership.ready:
            raise NotReady(f"{self.node_id} has not yet heard from its seeds; retry shortly")
        return self.membership.ring.preference_list(key, self.n)

    async def _ask(self, node: str, msg: tpb.TxnPeer, timeout: float) -> Reply | None:
        """One message to a replica (this node directly); None if it did not answer."""
        try:
            if node == self.node_id:
                return await asyncio.wait_for(self.on_peer(node, msg), timeout)
            result = await self.transport.call(node, pb.PeerMessage(txn=msg), timeout)
        except (TransportError, TimeoutError, KVError):
            return None
        if result.HasField("error"):
            return Reply(outcome=Reply.REFUSED, error=result.error.message)
        return result.txn

    async def _quorum(self, key: bytes, msg: tpb.TxnPeer, timeout: float,
                      ok=lambda r: r.outcome == Reply.OK
                      ) -> tuple[dict[str, Reply], dict[str, Reply | None]]:
        """Send to every replica of `key`; return once a majority answered OK (or can no
        longer): (OK answers, the others so far)."""
        nodes = self.replicas(key)
        need = len(nodes) // 2 + 1
        tasks = {asyncio.ensure_future(self._ask(n, msg, timeout)): n for n in nodes}
        good: dict[str, Reply] = {}
        bad: dict[str, Reply | None] = {}
        pending = set(tasks)
        while pending and len(good) < need and len(nodes) - len(bad) >= need:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                r = t.result()
                (good if r is not None and ok(r) else bad)[tasks[t]] = r
        for t in pending:  # late answers: an intent placed late is resolved like any other
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        return good, bad

    # ---- resolution -------------------------------------------------------------------
    async def resolve_everywhere(self, rec: tpb.TxnRecord, timeout: float,
                                 trace: TxnTrace | None = None) -> bool:
        """Send the decision to every replica of every key; True if all acknowledged."""
        assert rec.state in (tpb.TXN_COMMITTED, tpb.TXN_ABORTED), "resolve a decided record"
        commit = rec.state == tpb.TXN_COMMITTED
        by_key = {v.key: v.version for v in rec.versions}
        calls = []
        for key in rec.keys:
            msg = tpb.TxnPeer(resolve=tpb.TxnResolve(txn_id=rec.txn_id, key=key, commit=commit,
                                                     hlc=rec.commit_hlc))
            if commit and key in by_key:
                msg.resolve.version.CopyFrom(by_key[key])
            for node in self.replicas(key):
                calls.append((key, node, self._ask(node, msg, timeout)))
        results = await asyncio.gather(*(c for _, _, c in calls))
        if trace is not None:
            for (key, node, _), r in zip(calls, results, strict=True):
                trace(f"resolve {key.decode('utf-8', 'replace')} at {node}: "
                      f"{'ok' if r is not None else 'no answer'}")
        return all(r is not None for r in results)

    async def finish(self, rec: tpb.TxnRecord, timeout: float,
                     trace: TxnTrace | None = None) -> None:
        """Resolve everywhere and, if every replica acknowledged, forget the record."""
        if await self.resolve_everywhere(rec, timeout, trace) and rec.versions is not None:
            with contextlib.suppress(KVError):
                await self._command(self.monotonic() + timeout,
                                    txn_forget=tpb.TxnForget(txn_id=rec.txn_id))
                if trace is not None:
                    trace("record forgotten (every replica resolved)")

    async def settle(self, txn_id: str, timeout: float) -> tpb.TxnRecord | None:
        """The decided record of a transaction met as an intent: abort it first if it is
        PENDING past its deadline. None while it is PENDING and in time."""
        deadline = self.monotonic() + timeout
        rec = await self.record(txn_id, timeout)
        if rec is None:
            return None
        if rec.state == tpb.TXN_PENDING:
            if self.clock_ms() <= rec.deadline_ms:
                return None
            rec = await self.decide(txn_id, tpb.TXN_ABORTED,
                                    f"expired: found PENDING past its deadline by "
                                    f"{self.node_id}", deadline)
            if rec.state == tpb.TXN_PENDING:
                return None
        return rec

    async def read_intent(self, txn_id: str, key: bytes, timeout: float
                          ) -> tuple[str, versions.Sibling | None]:
        """A plain read met `txn_id`'s intent on `key` (coordinator.py): what the read
        must answer. ("committed", the version it wrote to `key`, or None if it only
        checked the key): merge it; ("open", None): PENDING within its deadline or aborted
        (an expired PENDING one is aborted here, through Raft): the older value is right;
        ("gone", None): the record was forgotten (gone, or its versions dropped), so every
        replica resolved it: read again.
        Raises KVError if the record cannot be read (the read cannot answer safely)."""
        deadline = self.monotonic() + timeout
        rec = await self.record(txn_id, timeout)
        if rec is None:
            return "gone", None
        if rec.state == tpb.TXN_PENDING:
            if self.clock_ms() <= rec.deadline_ms:
                return "open", None
            rec = await self.decide(txn_id, tpb.TXN_ABORTED,
                                    f"expired: found PENDING past its deadline by "
                                    f"{self.node_id} (a plain read)", deadline)
            if rec.state == tpb.TXN_UNKNOWN:
                return "gone", None
            if rec.state == tpb.TXN_PENDING:
                return "open", None
        if txn_id not in self._finishing:  # resolve it everywhere, in the background, once
            self._finishing.add(txn_id)
            self._spawn(self.finish(rec, timeout)).add_done_callback(
                lambda _t: self._finishing.discard(txn_id))
        if rec.state != tpb.TXN_COMMITTED:
            return "aborted", None
        if not rec.versions:  # forgotten (core/txn.py drops them once every replica
            return "gone", None  # resolved): the replicas hold the version now
        mine = [v.version for v in rec.versions if v.key == key]
        return "committed", versions.sibling_from_pb(mine[0]) if mine else None

    async def resolve_foreign(self, txn_id: str, timeout: float) -> bool:
        """Finish another transaction whose intent we met; True if it is decided now."""
        try:
            rec = await self.settle(txn_id, timeout)
        except KVError:
            return False
        if rec is None:
            # PENDING in time, or no record: a record is forgotten only after every
            # replica resolved, so an intent without one is a stale duplicate
            try:
                gone = await self.record(txn_id, timeout) is None
            except KVError:
                return False
            if gone:
                for key, intent in self.intents.items():
                    if intent.txn_id == txn_id and self.intents.remove(key, txn_id):
                        await self._persist(key)
            return gone
        if rec.state == tpb.TXN_UNKNOWN:
            return True
        await self.finish(rec, timeout)
        return True

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval * (0.5 + self.rng.random()))
            now = self.clock_ms()
            try:
                await self._terminate_3pc(now)
            except Exception:  # the sweeper keeps running whatever one resolution does
                log.exception("the 3PC termination protocol failed")
            late = [i.txn_id for _, i in self.intents.items()
                    if i.deadline_ms < now and i.protocol != "3pc"]
            for rec in self.live_records():
                # decided ones once their coordinator had time to resolve them itself
                if rec.deadline_ms < now or (rec.state != tpb.TXN_PENDING
                                             and now - rec.decided_at_ms > 2_000):
                    late.append(rec.txn_id)
            for txn_id in sorted(set(late))[:32]:
                try:
                    await self.resolve_foreign(txn_id, self.timeout)
                except Exception:  # the sweeper keeps running whatever one resolution does
                    log.exception("resolving transaction %s failed", txn_id)

    # ---- coordinator ------------------------------------------------------------------
    async def put(self, req: tpb.TxnPutRequest) -> tpb.TxnPutReply:
        """Run one transaction; the reply says COMMITTED, or why not (never raises for a
        refused transaction; raises KVError for a bad request or an unknown outcome)."""
        trace = TxnTrace(req.trace, self.monotonic)
        writes = [(w.key, w.value) for w in req.writes]
        checks = [(c.key, c.condition.kind, c.condition.context) for c in req.checks]
        txn_id = req.txn_id or f"{self.rng.getrandbits(64):016x}"
        try:
            keys = core.check_request(txn_id, writes, checks, req.ttl_ms)
        except core.BadTxn as exc:
            raise InvalidArgument(str(exc)) from exc
        if req.protocol not in ("", "raft", "3pc"):
            raise InvalidArgument(f"unknown protocol {req.protocol!r}; use raft or 3pc")
        ttl = req.ttl_ms or DEFAULT_TTL_MS
        now = self.clock_ms()
        deadline_ms = now + ttl
        until = self.monotonic() + ttl / 1000 + self.timeout
        for key in keys:
            self.replicas(key)  # NotReady before anything is written
        if req.protocol == "3pc":
            return await self._put_3pc(req, txn_id, keys, trace)
        trace(f"txn {txn_id}: coordinator {self.node_id}, {len(writes)} write(s), "
              f"{len(checks)} condition(s), deadline in {ttl} ms")
        res = await self._command(until, txn_begin=tpb.TxnBegin(
            txn_id=txn_id, keys=keys, coordinator=self.node_id, deadline_ms=deadline_ms,
            now_ms=now, protocol="raft"))
        if res.code != mpb.META_OK:
            raise Unavailable(res.error)
        rec = res.txn
        if rec.created_revision != res.revision and rec.state != tpb.TXN_PENDING:
            trace(f"record exists already: {core.state_name(rec.state)} (a retry)")
            return self._reply(rec, trace)
        trace(f"record PENDING at revision {rec.created_revision} (raft)")
        self._step("before_intents")
        write_of = {w.key: w for w in req.writes}
        cond_of = {c.key: c.condition for c in req.checks}
        held: dict[bytes, list[list[versions.Sibling]]] = {}
        failure = ""
        timeout = min(self.timeout, ttl / 1000)

        async def prepare(key: bytes) -> str:
            w = write_of.get(key)
            msg = tpb.TxnPeer(prepare=tpb.TxnPrepare(
                txn_id=txn_id, key=key, write=w is not None,
                value=w.value if w is not None else b"",
                tombstone=w.tombstone if w is not None else False,
                condition=cond_of.get(key, tpb.TxnCondition()), deadline_ms=deadline_ms,
                coordinator=self.node_id, hlc=self.hlc.now().pack()))
            for attempt in range(3):
                good, bad = await self._quorum(key, msg, timeout)
                for r in [*good.values(), *bad.values()]:
                    if r is not None and r.hlc:
                        self.hlc.update(r.hlc)
                for node in sorted(good):
                    trace(f"intent on {key.decode('utf-8', 'replace')} at {node}: ok")
                for node, r in sorted(bad.items()):
                    trace(f"intent on {key.decode('utf-8', 'replace')} at {node}: "
                          + ("no answer" if r is None else Reply.Outcome.Name(r.outcome)
                             + f" {r.error}"))
                if len(good) >= len(self.replicas(key)) // 2 + 1:
                    held[key] = [versions.from_pb(r.state) for r in good.values()]
                    self._step("intent")
                    return ""
                answers = [r for r in bad.values() if r is not None]
                failed = [r for r in answers if r.outcome == Reply.CONDITION_FAILED]
                if failed:
                    return failed[0].error
                if any(r.conflict_protocol == "3pc" for r in answers):
                    return (f"conflict: key {_text(key)!r} is held by a 3PC transaction; it ends "
                            "by its participants' timeouts - retry")
                others = sorted({r.conflict_txn for r in answers
                                 if r.outcome == Reply.CONFLICT})
                if not others or attempt == 2:
                    break
                # Another transaction's intent: finish it if it is decided or expired
                for other in others:
                    if not await self.resolve_foreign(other, timeout):
                        return (f"conflict: key {_text(key)!r} is held by transaction {other}, "
                                "still in progress; retry")
                    trace(f"resolved transaction {other} met on {key.decode('utf-8', 'replace')}")
            reasons = [r.error for r in bad.values() if r is not None and r.error]
            return (f"no strict quorum of replicas of {_text(key)!r} took the intent"
                    + (f" ({'; '.join(reasons[:3])})" if reasons else " (no answer)"))

        tasks = [asyncio.ensure_future(prepare(k)) for k in keys]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:  # a crash mid-way: what is on the wire stays there
                t.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        failure = next((r for r in results if r), "")
        if failure:
            trace(f"decision: ABORT ({failure})")
            rec = await self.decide(txn_id, tpb.TXN_ABORTED, failure, until,
                                    by_coordinator=True)
        else:
            now = self.clock_ms()
            new = [tpb.TxnVersion(key=k, version=versions.sibling_to_pb(core.commit_version(
                txn_id, write_of[k].value, write_of[k].tombstone, held[k], now)))
                for k in keys if k in write_of]
            stamp = self.hlc.now()
            trace(f"every intent placed: proposing COMMIT at HLC {stamp} (the commit point)")
            rec = await self.decide(txn_id, tpb.TXN_COMMITTED, "", until,
                                    by_coordinator=True, versions_=new,
                                    commit_hlc=stamp.pack())
        trace(f"record {core.state_name(rec.state)} at revision {rec.decided_revision}, "
              f"decided by {rec.decided_by}" + (f" ({rec.reason})" if rec.reason else ""))
        if rec.state in (tpb.TXN_COMMITTED, tpb.TXN_ABORTED):
            self._step("after_record")
            if self.on_step is not None:  # resolve one key, then the rest
                first = tpb.TxnRecord()
                first.CopyFrom(rec)
                del first.keys[1:]
                await self.resolve_everywhere(first, timeout)
                self._step("resolving")
            if req.trace:
                await self.finish(rec, timeout, trace)
            else:
                self._spawn(self.finish(rec, timeout))
        return self._reply(rec, trace)

    async def _put_3pc(self, req: tpb.TxnPutRequest, txn_id: str, keys: list[bytes],
                       trace: TxnTrace) -> tpb.TxnPutReply:
        """Classic three-phase commit, for comparison (docs/transactions.md): no record in
        Raft. CanCommit (intents, every replica of every key must vote yes) -> PreCommit to
        each participant -> DoCommit. A participant left without word decides by its
        timeout and the termination protocol (services: `_terminate_3pc`)."""
        write_of = {w.key: w for w in req.writes}
        cond_of = {c.key: c.condition for c in req.checks}
        timeout_ms = req.ttl_ms or THREE_PC_TIMEOUT_MS
        timeout = min(self.timeout, timeout_ms / 1000)
        parts = [(k, n) for k in keys for n in self.replicas(k)]
        peers = sorted({n for _, n in parts})
        trace(f"3pc txn {txn_id}: coordinator {self.node_id}, participants "
              f"{', '.join(peers)}; phase timeout {timeout_ms} ms")

        def prepare_msg(key: bytes) -> tpb.TxnPeer:
            w = write_of.get(key)
            return tpb.TxnPeer(prepare=tpb.TxnPrepare(
                txn_id=txn_id, key=key, write=w is not None,
                value=w.value if w is not None else b"",
                tombstone=w.tombstone if w is not None else False,
                condition=cond_of.get(key, tpb.TxnCondition()),
                deadline_ms=self.clock_ms() + 3 * timeout_ms, coordinator=self.node_id,
                hlc=self.hlc.now().pack(), protocol="3pc", timeout_ms=timeout_ms,
                peers=peers))

        self._step("before_intents")
        votes = await asyncio.gather(*(self._ask(n, prepare_msg(k), timeout)
                                       for k, n in parts))
        failed = ""
        for (k, n), r in zip(parts, votes, strict=True):
            ok = r is not None and r.outcome == Reply.OK
            trace(f"CanCommit {_text(k)} at {n}: "
                  + ("yes" if ok else "no answer" if r is None else f"no ({r.error})"))
            if r is not None and r.hlc:
                self.hlc.update(r.hlc)
            if not ok and not failed:
                failed = f"{n} voted no on {_text(k)!r}" if r is not None else f"{n} did not vote"
        if failed:
            trace(f"decision: ABORT ({failed})")
            self._remember_3pc(txn_id, False)
            self._spawn(asyncio.gather(*(self._ask(n, tpb.TxnPeer(resolve=tpb.TxnResolve(
                txn_id=txn_id, key=k, commit=False)), timeout) for k, n in parts)))
            return self._reply(tpb.TxnRecord(txn_id=txn_id, state=tpb.TXN_ABORTED,
                                             reason=failed, decided_by=self.node_id,
                                             protocol="3pc"), trace)
        self._step("intent")
        stamp = self.hlc.now()
        held: dict[bytes, list] = {}
        for (k, _), r in zip(parts, votes, strict=True):
            held.setdefault(k, []).append(versions.from_pb(r.state))
        new = {k: versions.sibling_to_pb(core.commit_version(
            txn_id, write_of[k].value, write_of[k].tombstone, held[k], stamp.wall_ms))
            for k in keys if k in write_of}
        def precommit(k: bytes, n: str):
            msg = tpb.TxnPeer(precommit=tpb.TxnPreCommit(txn_id=txn_id, key=k,
                                                         hlc=stamp.pack()))
            if k in new:
                msg.precommit.version.CopyFrom(new[k])
            return self._ask(n, msg, timeout)

        def acked(k: bytes, n: str, r: Reply | None) -> None:
            trace(f"PreCommit {_text(k)} at {n}: " + ("ack" if r is not None and
                                                     r.outcome == Reply.OK else "no ack"))

        if self.on_step is None:  # PreCommit to every participant at once
            for (k, n), r in zip(parts, await asyncio.gather(
                    *(precommit(k, n) for k, n in parts)), strict=True):
                acked(k, n, r)
        else:  # one after the other, so a simulation can crash between two of them
            for k, n in parts:
                acked(k, n, await precommit(k, n))
                self._step("precommit")
        self._remember_3pc(txn_id, True)
        trace(f"decision: COMMIT at HLC {stamp} (DoCommit to every participant)")
        rec = tpb.TxnRecord(txn_id=txn_id, state=tpb.TXN_COMMITTED, keys=keys,
                            decided_by=self.node_id, protocol="3pc", commit_hlc=stamp.pack(),
                            versions=[tpb.TxnVersion(key=k, version=v)
                                      for k, v in new.items()])
        self._step("after_record")
        done = asyncio.gather(*(self._ask(n, tpb.TxnPeer(resolve=tpb.TxnResolve(
            txn_id=txn_id, key=k, commit=True, hlc=stamp.pack(),
            version=new.get(k))), timeout) for k, n in parts))
        if req.trace:
            for (k, n), r in zip(parts, await done, strict=True):
                trace(f"DoCommit {_text(k)} at {n}: {'ok' if r is not None else 'no answer'}")
        else:
            self._spawn(done)
        return self._reply(rec, trace)

    @staticmethod
    def _reply(rec: tpb.TxnRecord, trace: TxnTrace) -> tpb.TxnPutReply:
        reply = tpb.TxnPutReply(txn_id=rec.txn_id, state=rec.state, reason=rec.reason,
                                trace=trace.lines, revision=rec.decided_revision,
                                decided_by=rec.decided_by, commit_hlc=rec.commit_hlc)
        for v in rec.versions:
            s = versions.sibling_from_pb(v.version)
            reply.keys.append(tpb.TxnKeyResult(
                key=v.key, context=versions.encode_context(versions.read_context([s]))))
        if rec.state != tpb.TXN_COMMITTED:
            reply.error.CopyFrom(Aborted(
                f"transaction {rec.txn_id} was not committed ({core.state_name(rec.state)}"
                + (f": {rec.reason}" if rec.reason else "") + "); nothing it wrote is "
                "visible").to_pb())
        return reply

    # ---- atomic reads -----------------------------------------------------------------
    async def _read_key(self, key: bytes, timeout: float, trace: TxnTrace
                        ) -> list[versions.Sibling]:
        """The key's committed versions at a quorum, intents of decided transactions
        applied (COMMITTED: their version merged; PENDING or ABORTED: ignored)."""
        good, _ = await self._quorum(key, tpb.TxnPeer(read=tpb.TxnRead(key=key)), timeout)
        if len(good) < len(self.replicas(key)) // 2 + 1:
            raise Unavailable(f"too few replicas of {_text(key)!r} answered the read")
        merged: list[versions.Sibling] = []
        for r in good.values():
            merged = versions.sync(merged, versions.from_pb(r.state))
        for txn_id in sorted({r.intent.txn_id for r in good.values()
                              if r.has_intent and r.intent.protocol != "3pc"}):
            rec = await self.record(txn_id, timeout)
            if rec is not None and rec.state == tpb.TXN_COMMITTED:
                mine = [v.version for v in rec.versions if v.key == key]
                if mine:
                    merged = versions.sync(merged, [versions.sibling_from_pb(mine[0])])
                self._spawn(self.finish(rec, timeout))
            elif rec is not None and rec.state == tpb.TXN_ABORTED:
                self._spawn(self.finish(rec, timeout))
            elif rec is not None and self.clock_ms() > rec.deadline_ms:
                self._spawn(self.resolve_foreign(txn_id, timeout))
            trace(f"read {key.decode('utf-8', 'replace')}: intent of {txn_id} "
                  f"({core.state_name(rec.state) if rec else 'no record'})")
        return merged

    async def get(self, req: tpb.TxnGetRequest) -> tpb.TxnGetReply:
        """An atomic multi-key read: read every key, then again, until two rounds agree
        on every key's versions (so the answer held at one instant between them)."""
        keys = list(req.keys)
        if not keys or len(keys) > core.MAX_KEYS or len(set(keys)) != len(keys):
            raise InvalidArgument(f"give 1-{core.MAX_KEYS} distinct keys")
        trace = TxnTrace(req.trace, self.monotonic)
        timeout = self.timeout
        previous = None
        for rounds in range(1, READ_ROUNDS + 1):
            got = await asyncio.gather(*(self._read_key(k, timeout, trace) for k in keys))
            dots = [sorted(s.dot for s in g) for g in got]
            trace(f"round {rounds}: " + ", ".join(
                f"{_text(k)}={[_text(s.value) for s in versions.live(g)]}"
                for k, g in zip(keys, got, strict=True)))
            if dots == previous:
                reply = tpb.TxnGetReply(trace=trace.lines, rounds=rounds)
                for k, g in zip(keys, got, strict=True):
                    reply.values.append(tpb.TxnValue(
                        key=k, values=[s.value for s in versions.live(g)],
                        context=versions.encode_context(versions.read_context(g))))
                return reply
            previous = dots
            if rounds > 2:
                await asyncio.sleep(0.01 * rounds * self.rng.random())
        raise Conflict(f"the keys kept changing over {READ_ROUNDS} read rounds; retry")

    async def status(self, txn_id: str) -> tpb.TxnRecord | None:
        try:
            core.check_request(txn_id, [(b"k", b"")], [], 0)
        except core.BadTxn as exc:
            raise InvalidArgument(str(exc)) from exc
        return await self.record(txn_id)
