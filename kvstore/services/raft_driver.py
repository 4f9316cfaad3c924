"""The asyncio driver of the Raft core inside a node, and the metadata service on top.

It runs the ordering contract of `kvstore.core.raft` (persist, then send, then apply, then
advance) over the node's `Transport`: raft messages ride in `PeerMessage.raft`, so the
transport's per-peer coalescing batches them, and the core pipelines AppendEntries (up to
`max_inflight` per follower). Persistence runs in a worker thread; messages keep being
stepped into the core meanwhile (the contract allows it), and proposals made meanwhile are
batched into the next Ready (one write, one fsync for all of them). On the leader, a Ready
marked `send_first` is sent before it is persisted: the leader's fsync runs in parallel
with the followers' (the leader counts itself toward the commit quorum only once its own
write is durable, see `RaftNode.advance`).

`PeerMessage.raft` bytes start with a tag: RAFT (a core message, one way) or CLIENT (a JSON
admin request from another node or from `kv raft`: status, and conf - one membership
change - answered in `PeerResult.raw`). Metadata requests are typed (`MetaRequest` in
proto/kvstore/_proto/meta.proto, `PeerMessage.meta` between nodes, the `Meta` gRPC service
for clients): see `handle_meta`. Requests reaching a follower or a non-voting node are
forwarded to the leader. Every metadata command carries a client session, so a forward
retried after a broken call is applied at most once (the state machine answers a repeat
from its session table); a request still unanswered at its deadline is reported as an
unknown outcome (META_UNKNOWN), never as a failure.

Leases: the leader keeps deadlines by its monotonic clock (`core.meta.LeaseClock`),
proposes LeaseExpire when one passes and a LeaseCheckpoint every `lease_checkpoint`
seconds (docs/coordination.md states the resulting bound).

How the member starts (recover, bootstrap a new group, join, or refuse) is decided by
`prepare()` with `raft_start.plan_start`, before the node writes anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from kvstore._proto import internode_pb2 as pb
from kvstore._proto import meta_pb2 as mpb
from kvstore.core.meta import LeaseClock, MetaStateMachine, command, validate_command
from kvstore.core.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Config,
    EntryType,
    Message,
    MessageDecodeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    decode_message,
    encode_message,
)
from kvstore.services.raft_start import (
    RaftStartRefused,
    StartMode,
    StartPlan,
    plan_start,
    way_back,
)
from kvstore.storage.raftlog import CorruptRaftLogError, Files, MemoryFiles, OsFiles, RaftLog
from kvstore.transport.base import Lane, PeerUnreachable, Transport, TransportError

log = logging.getLogger(__name__)

TAG_RAFT = 1
TAG_CLIENT = 2
MAX_HOPS = 3


# `kv raft add --learner` / `promote` / `remove`: single-server changes (core/raft).
CONF_CHANGES = {"add_learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.ADD_VOTER,
                "remove": ConfChangeType.REMOVE}


class MetaError(Exception):
    """A metadata request failed; the message says why and what to do."""


def _conf_hint(change: str, node: str, reason: str) -> str:
    if change == "add_learner" and "already a member" in reason:
        return (f" (a member cannot be added again: `kv raft remove {node}` first if it lost "
                "its state)")
    if change == "promote" and "learner first" in reason:
        return f" (`kv raft add {node} --learner` first)"
    if change == "promote" and "behind" in reason:
        return (f"; is {node} running with --raft-join and reachable? It must catch up "
                "before it votes")
    return ""


def client_request(req: dict) -> bytes:
    """Bytes for PeerMessage.raft carrying a metadata request (used by the CLI too)."""
    return bytes([TAG_CLIENT]) + json.dumps(req, separators=(",", ":")).encode()


class RaftDriver:
    def __init__(
        self,
        node_id: str,
        voters: list[str],
        transport: Transport,
        data_dir: Path | None = None,
        *,
        files: Files | None = None,
        tick_interval: float = 0.05,
        election_tick: int = 10,
        heartbeat_tick: int = 2,
        snapshot_every: int = 1000,
        keep_entries: int = 100,
        request_timeout: float = 5.0,
        rng: random.Random | None = None,
        offload=asyncio.to_thread,
        forward_transport: Lane | None = None,
        bootstrap: bool = False,
        join: bool = False,
        learner_max_lag: int = 64,
        lease_checkpoint: float = 1.0,
        monotonic=time.monotonic,
    ) -> None:
        """`offload(fn, *args)` runs disk work off the event loop (inline in simulations);
        `rng` draws election timeouts and request nonces (seeded in simulations). The raft
        state lives in `files` (default: `<data_dir>/raft`, or in memory without a data
        directory). `voters` (--raft-voters) seeds a new group and tells a node outside it
        where to forward; once there is state, the configuration in the log wins.

        `bootstrap` (--raft-bootstrap) lets a voter with no state create the group;
        `join` (--raft-join) starts a node with no state as a joining member that waits to
        be added as a learner and never votes before its promotion (see raft_start.py).
        A learner is promoted only within `learner_max_lag` entries of the commit index.

        `forward_transport` carries forwarded metadata requests; give it its own per-peer
        queue (e.g. a second `Coalescer` over the same channels). On the shared queue a
        forwarded write, whose answer waits for its commit, would hold back the very
        acknowledgements that commit needs (head-of-line blocking: with one voter down, every
        forwarded write would wait for its timeout)."""
        self.node_id = node_id
        self.offload = offload
        self.forward_transport = forward_transport or transport
        self.voters = sorted(set(voters))
        self.transport = transport
        self.bootstrap = bootstrap
        self.join = join
        self.tick_interval = tick_interval
        self.snapshot_every = snapshot_every
        self.keep_entries = keep_entries
        self.request_timeout = request_timeout
        self.rng = rng or random.Random()
        self.config = Config(node_id, election_tick=election_tick, heartbeat_tick=heartbeat_tick,
                             max_entries_per_msg=256, max_inflight=8,
                             learner_max_lag=learner_max_lag)
        self.where = (str(files.dir) if files is not None and hasattr(files, "dir")
                      else str(Path(data_dir) / "raft") if data_dir else "the in-memory raft state")
        if files is None:
            files = OsFiles(Path(data_dir) / "raft") if data_dir else MemoryFiles()
        self.log = RaftLog(files)
        self.core: RaftNode | None = None
        self.sm = MetaStateMachine()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._sends: set[asyncio.Task] = set()
        self._writes: dict[int, tuple[int, asyncio.Future]] = {}  # index -> (term, future)
        self.leases = LeaseClock()
        self.lease_checkpoint = lease_checkpoint
        self.monotonic = monotonic
        self._was_leader = False
        self._expiring: dict[tuple[int, int], float] = {}
        self._next_checkpoint = 0.0
        self._applied_event = asyncio.Event()
        # peer id -> address (set by the Node from membership): replies name where the
        # leader listens, so clients can skip the forwarding hop.
        self.address_of = None
        self._reads: dict[bytes, tuple[str, asyncio.Future]] = {}
        self._read_waits: list = []
        self._ids = itertools.count(1)
        self._stopped = False
        self._nonce = f"{self.rng.getrandbits(32):08x}"
        self._conf_waits: dict[int, tuple[int, asyncio.Future]] = {}
        self.plan: StartPlan | None = None
        self._joining_on_disk = False
        self._conf_checked = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def prepare(self, prior_life: list[str] = (), data_dir: str = "its data directory"
                ) -> StartPlan:
        """Recover the raft state and decide how this member starts (raft_start.py); raise
        RaftStartRefused (one line) if it must not. Synchronous and done before anything
        else writes to the data directory: a new group's configuration, or the joining
        marker, is durable before this node sends or answers anything. Idempotent."""
        if self.plan is not None:
            return self.plan
        try:
            rec = self.log.recover()
        except CorruptRaftLogError as exc:
            raise RaftStartRefused(
                f"{self.node_id}: the raft state in {self.where} is damaged and may hold "
                f"data this node acknowledged: {exc.detail}. The node must not start from it; "
                f"keep the file for inspection. {way_back(self.node_id)}") from None
        for note in rec.notes:
            log.warning("raft log recovery on %s: %s", self.node_id, note)
        plan = plan_start(self.node_id, self.voters, has_state=rec.has_state,
                          joining=rec.joining, bootstrap=self.bootstrap, join=self.join,
                          prior_life=list(prior_life), raft_dir=self.where, data_dir=data_dir)
        if plan.mode is StartMode.BOOTSTRAP:
            core = RaftNode(self.config, self.rng, bootstrap_voters=self.voters)
            rd = core.ready()
            self.log.save(rd.hard_state, rd.entries, sync=True)
            self._apply(rd)
            core.advance(rd)
            self.core = core
            log.info("raft: %s bootstrapped a new group of %s", self.node_id, self.voters)
        elif plan.mode is StartMode.JOIN:
            self.log.set_joining(True)
            self.core = RaftNode(self.config, self.rng, joining=True)
            log.info("raft: %s is joining: it waits to be added as a learner (`kv raft add %s "
                     "--learner`) and votes only once promoted", self.node_id, self.node_id)
        elif plan.mode is StartMode.RECOVER:
            self.core = RaftNode(self.config, self.rng, hard_state=rec.hard_state,
                                 snapshot=rec.snapshot, entries=rec.entries,
                                 joining=rec.joining)
            if rec.snapshot.index:
                self.sm.restore(rec.snapshot.data, rec.snapshot.index)
        self._joining_on_disk = plan.joining
        self.plan = plan
        return plan

    async def start(self) -> None:
        if self.plan is None:
            await self.offload(self.prepare)
        if self.core is None:
            return  # not a member: metadata requests are forwarded
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ticker()), loop.create_task(self._run())]
        self._kick.set()

    async def stop(self) -> None:
        """Stop ticking and processing (idempotent); the log is closed."""
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for t in list(self._sends):
            t.cancel()
        await self.offload(self.log.close)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            self.core.tick()
            self._lease_tick()
            self._kick.set()

    def _now_ms(self) -> int:
        return int(self.monotonic() * 1000)

    def _lease_tick(self) -> None:
        """On the leader: propose the expiry of leases past their deadline, and a checkpoint
        of the time left every `lease_checkpoint` seconds."""
        core = self.core
        if core is None or core.role is not Role.LEADER:
            return
        now = self._now_ms()
        for lease, refreshed in self.leases.expired(now):
            if self._expiring.get((lease, refreshed), 0) > now:
                continue  # proposed a moment ago
            self._expiring[(lease, refreshed)] = now + 1000
            cmd = command(lease_expire=mpb.LeaseExpire(lease=lease, refreshed=refreshed))
            with contextlib.suppress(NotLeaderError, ProposalDroppedError):
                core.propose(cmd.SerializeToString())
        if self.leases.deadlines and now >= self._next_checkpoint:
            self._next_checkpoint = now + int(self.lease_checkpoint * 1000)
            cp = mpb.LeaseCheckpoint(as_of=self.sm.applied, leases=[
                mpb.LeaseRemaining(lease=i, remaining_ms=r)
                for i, r in self.leases.checkpoint(now)])
            with contextlib.suppress(NotLeaderError, ProposalDroppedError):
                core.propose(command(lease_checkpoint=cp).SerializeToString())

    # ---- the ordering contract ---------------------------------------------------------------

    async def _run(self) -> None:
        core = self.core
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                while core.has_ready():
                    rd = core.ready()
                    if rd.send_first:
                        # A leader's appends leave now and its own write (below) overlaps
                        # with the followers' (thesis 10.2.1); the core counts the leader
                        # toward the commit quorum only at advance(), after the fsync.
                        for m in rd.messages:
                            self._send(m)
                    if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
                        await self.offload(self._persist, rd)  # 1. persist (+fsync)
                    if not rd.send_first:
                        for m in rd.messages:  # 2. send: a follower acks what is durable
                            self._send(m)
                    self._apply(rd)  # 3. apply
                    core.advance(rd)  # 4. advance
                    self._track_leadership(core)
                    if self._joining_on_disk and not core.joining:
                        # Promoted: clear the durable flag before any vote can leave (votes
                        # go out in a later Ready) and before compaction could drop the
                        # entries that show the promotion.
                        await self.offload(self.log.set_joining, False)
                        self._joining_on_disk = False
                        log.info("raft: %s was promoted to voter; it votes from now on",
                                 self.node_id)
                    if self._conf_waits:
                        self._resolve_conf_waits(core)
                    if not self._conf_checked and core.applied >= core.commit:
                        self._conf_checked = True
                        self._check_conf(core)
                    self._serve_reads()
                    if core.applied - core.snapshot.index >= self.snapshot_every:
                        await self._snapshot()
            except Exception:
                log.exception("raft driver on %s failed; stopping it", self.node_id)
                raise

    def _track_leadership(self, core: RaftNode) -> None:
        leader = core.role is Role.LEADER
        if leader and not self._was_leader:
            self.leases.become_leader(self.sm, self._now_ms())
            self._expiring.clear()
            self._next_checkpoint = 0.0
        elif not leader and self._was_leader:
            self.leases.step_down()
        self._was_leader = leader

    def _check_conf(self, core: RaftNode) -> None:
        voters = sorted(core.conf.voters)
        if voters and voters != self.voters:
            log.info("raft: the group's configuration in the log (voters %s, learners %s) "
                     "differs from --raft-voters %s; the log's configuration is the one in "
                     "force", voters, sorted(core.conf.learners), self.voters)

    def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.log.install_snapshot(rd.snapshot, rd.hard_state)
        self.log.save(rd.hard_state, rd.entries, sync=rd.must_sync)

    def _send(self, m: Message) -> None:
        data = bytes([TAG_RAFT]) + encode_message(m)
        task = asyncio.get_running_loop().create_task(self._send_one(m.to, data))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_one(self, peer: str, data: bytes) -> None:
        try:
            await self.transport.call(peer, pb.PeerMessage(raft=data),
                                      timeout=max(0.2, self.tick_interval * 10))
        except TransportError:
            pass  # raft tolerates loss; the core retries
        except Exception:
            log.debug("raft send to %s failed", peer, exc_info=True)

    def _apply(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data, rd.snapshot.index)
        for e in rd.committed:
            res = None
            if e.type is EntryType.NORMAL:
                res = self.sm.apply(e.index, e.data)
            else:
                self.sm.skip(e.index)
            wait = self._writes.pop(e.index, None)
            if wait is not None and not wait[1].done():
                # Another term's entry at our index: ours is in no log (Log Matching), so it
                # was never applied and never will be.
                wait[1].set_result(res if e.term == wait[0] else None)
        if rd.committed or rd.snapshot is not None:
            if self._was_leader:
                self.leases.on_applied(self.sm, self._now_ms())
            self._applied_event.set()
            self._applied_event = asyncio.Event()
        self._read_waits.extend(rd.read_states)

    def _serve_reads(self) -> None:
        still = []
        for rs in self._read_waits:
            if self.sm.applied >= rs.index:
                entry = self._reads.pop(rs.context, None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(self.sm.applied)
            else:
                still.append(rs)
        self._read_waits = still

    async def _snapshot(self) -> None:
        core = self.core
        snap = core.create_snapshot(self.sm.snapshot())
        keep = max(0, snap.index - self.keep_entries)

        def save() -> None:
            self.log.save_snapshot(snap)
            self.log.compact(keep)

        await self.offload(save)
        core.compact(keep)

    # ---- inbound -----------------------------------------------------------------------------

    async def on_message(self, source: str, data: bytes) -> bytes:
        """Handler for PeerMessage.raft (registered with the node)."""
        if not data:
            return b""
        tag, body = data[0], data[1:]
        if tag == TAG_RAFT:
            if self.core is None:
                return b""
            try:
                self.core.step(decode_message(body))
            except MessageDecodeError as exc:
                log.warning("dropping malformed raft message from %s: %s", source, exc)
                return b""
            self._kick.set()
            return b""
        if tag == TAG_CLIENT:
            try:
                req = json.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("request must be an object")
                reply = await self.handle(req)
            except (ValueError, UnicodeDecodeError) as exc:
                reply = {"ok": False, "error": f"bad metadata request: {exc}"}
            except MetaError as exc:
                reply = {"ok": False, "error": str(exc)}
            return json.dumps(reply, separators=(",", ":")).encode()
        return b""

    # ---- the metadata service ----------------------------------------------------------------

    async def handle(self, req: dict) -> dict:
        """Serve an admin request (status, conf) here if this node leads, else forward it.
        Metadata reads and writes go through `handle_meta`."""
        op = req.get("op")
        if op not in ("status", "conf"):
            raise ValueError(f"unknown op {op!r}; use status or conf (metadata requests are "
                             "typed: the Meta service)")
        if op == "conf":
            if req.get("change") not in CONF_CHANGES:
                raise ValueError(f"unknown change {req.get('change')!r}; use "
                                 + ", ".join(CONF_CHANGES))
            node = req.get("node")
            if not isinstance(node, str) or not node or any(
                    c.isspace() or c in "=,@" for c in node):
                raise ValueError(f"node {node!r} must be a node id (no spaces, '=', ',', '@')")
        if op == "status" and not req.get("leader_view", True):
            return self.status()
        core = self.core
        if op == "status" and not (core is not None and core.role is Role.LEADER):
            try:
                return await self._forward(req, wait=min(1.0, self.request_timeout / 2))
            except MetaError:
                return self.status()  # no leader reachable: this node's own view
        if core is not None and core.role is Role.LEADER:
            if op == "status":
                return self.status()
            try:
                return await self._conf_change(req)
            except (NotLeaderError, ProposalDroppedError):
                pass
        return await self._forward(req)

    async def _conf_change(self, req: dict) -> dict:
        """One single-server membership change, answered once the leader applied it (it
        takes effect then). A promotion waits (up to the request timeout) for the learner to
        catch up; a change refused by the core comes back as a one-line error."""
        core = self.core
        node, change = req["node"], req["change"]
        cc = ConfChange(CONF_CHANGES[change], node)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        warning = await self._no_raft_member(node) if change == "add_learner" else None
        while True:
            try:
                index = core.propose_conf_change(cc)
                break
            except (ConfChangeError, ProposalDroppedError) as exc:
                reason = str(exc)
                retry = "behind" in reason or "in progress" in reason or isinstance(
                    exc, ProposalDroppedError)
                if not retry or loop.time() >= deadline:
                    return {"ok": False, "error": reason + _conf_hint(change, node, reason),
                            "leader": self.node_id}
                await asyncio.sleep(self.tick_interval * 2)
                if core.role is not Role.LEADER:
                    raise NotLeaderError(self.node_id, core.lead) from None
        term = core.term
        fut = loop.create_future()
        self._conf_waits[index] = (term, fut)
        self._kick.set()
        await self._await(fut, lambda: self._conf_waits.pop(index, None))
        conf = core.conf
        return {"ok": True, "change": change, "node": node, "index": index,
                "voters": sorted(conf.voters), "learners": sorted(conf.learners),
                "leader": self.node_id, **({"warning": warning} if warning else {})}

    async def _no_raft_member(self, node: str) -> str | None:
        """A warning if `node` answers that it runs no raft member (started without
        --raft-join and not in --raft-voters): added as a learner it would never catch up,
        and its promotion would time out, until it is restarted with --raft-join. Adding it
        first and restarting it after is allowed (etcd's order), so this only warns; a node
        that does not answer (not started yet) gets no warning."""
        if node == self.node_id:
            return None
        probe = pb.PeerMessage(raft=client_request({"op": "status", "leader_view": False}))
        try:
            res = await self.forward_transport.call(node, probe,
                                                    timeout=min(1.0, self.request_timeout / 4))
            view = json.loads(res.raw) if res.WhichOneof("body") == "raw" and res.raw else {}
        except (TransportError, ValueError):
            return None
        if not isinstance(view, dict) or view.get("voter") is not False:
            return None
        return (f"{node} answers but runs no raft member (not in --raft-voters and started "
                f"without --raft-join): it will not catch up, nor can it be promoted, until it "
                f"is restarted with --raft-join (docker compose: `KV_RAFT_JOIN=1 docker compose "
                f"up -d {node}`)")

    def _resolve_conf_waits(self, core: RaftNode) -> None:
        for index in [i for i in self._conf_waits if i <= core.applied]:
            term, fut = self._conf_waits.pop(index)
            if fut.done():
                continue
            if core.term_at(index) == term:
                fut.set_result(index)
            else:
                fut.set_exception(MetaError(
                    "leadership changed before the membership change committed; it was not "
                    "applied - check `kv raft status`, then retry"))

    async def _await(self, fut: asyncio.Future, cleanup) -> Any:
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        except TimeoutError:
            cleanup()
            raise MetaError(f"no answer from the raft group within {self.request_timeout}s "
                            "(a write may still be applied); retry") from None

    async def _forward(self, req: dict, wait: float | None = None) -> dict:
        hops = int(req.get("hops", 0))
        if hops >= MAX_HOPS:
            raise MetaError("no raft leader reachable (forwarded too many times); retry shortly")
        fwd = dict(req, hops=hops + 1)
        wait = self.request_timeout if wait is None else wait
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            targets = []
            core = self.core
            if core is not None and core.lead and core.lead != self.node_id:
                targets = [core.lead]
            elif core is None or core.joining or self.node_id not in core.conf.voters:
                # No leader known and no vote here: ask the voters we know of.
                known = set(self.voters) | (core.conf.voters if core is not None else set())
                targets = sorted(known - {self.node_id})
            for target in targets:
                try:
                    res = await self.forward_transport.call(
                        target, pb.PeerMessage(raft=client_request(fwd)), timeout=wait)
                except PeerUnreachable:
                    continue  # not delivered: safe to try again
                except TransportError as exc:
                    # Delivered or not, we cannot tell (a deadline, or the connection broke
                    # during the call): a membership change has no session, so a retry could
                    # apply it twice.
                    if req.get("op") == "status":
                        continue
                    raise MetaError(f"{exc}; the request may or may not have been applied - "
                                    "check `kv raft status`, then retry") from None
                if res.WhichOneof("body") == "raw" and res.raw:
                    return json.loads(res.raw)
            if asyncio.get_running_loop().time() > deadline:
                raise MetaError("no raft leader known; the group may be electing - retry")
            await asyncio.sleep(self.tick_interval * 2)
            if self.core is not None and self.core.role is Role.LEADER:
                return await self.handle(req)

    # ---- the typed metadata service (issue 11) ------------------------------------------------

    async def handle_meta(self, req: mpb.MetaRequest) -> mpb.MetaReply:
        """Serve a MetaRequest: on the leader, or a serializable read on any member, else
        forwarded to the leader. Never raises for a bad request: the reply says what failed
        (META_BAD_REQUEST), whether it was certainly not applied (META_UNAVAILABLE) or may
        have been (META_UNKNOWN)."""
        kind = req.WhichOneof("body")
        try:
            if kind is None:
                raise ValueError("empty metadata request")
            if kind == "command":
                validate_command(req.command)
                if req.command.WhichOneof("op") in ("lease_expire", "lease_checkpoint"):
                    raise ValueError("lease expiry and checkpoints are proposed by the leader "
                                     "only")
            elif kind == "read" and not req.read.key and not req.read.prefix:
                raise ValueError("a read needs a key (or --prefix)")
            elif kind == "lock_wait" and not (req.lock_wait.name and req.lock_wait.lease):
                raise ValueError("lock wait needs a lock name and a lease")
            elif kind == "watch" and not req.watch.key and not req.watch.prefix:
                raise ValueError("a watch needs a key (or --prefix)")
        except ValueError as exc:
            return _meta_reply(mpb.META_BAD_REQUEST, str(exc))
        core = self.core
        if kind == "read" and req.read.serializable and core is not None:
            return mpb.MetaReply(result=mpb.MetaResult(revision=self.sm.applied),
                                 kvs=self.sm.read(req.read.key, req.read.prefix))
        if kind == "ring_read" and req.ring_read.serializable and core is not None:
            return mpb.MetaReply(result=mpb.MetaResult(revision=self.sm.applied),
                                 ring=self.sm.ring.records(), ring_epoch=self.sm.ring.epoch)
        if core is not None and core.role is Role.LEADER:
            try:
                reply = await self._serve_meta(kind, req)
                if self.address_of is not None:
                    reply.leader_address = self.address_of(self.node_id) or ""
                return reply
            except (NotLeaderError, ProposalDroppedError):
                pass
            except MetaError as exc:
                return _meta_reply(mpb.META_UNKNOWN if kind == "command" else
                                   mpb.META_UNAVAILABLE, str(exc))
        return await self._forward_meta(req)

    async def _serve_meta(self, kind: str, req: mpb.MetaRequest) -> mpb.MetaReply:
        core = self.core
        if kind == "command":
            return await self._propose_meta(req.command)
        await self._read_barrier()
        reply = mpb.MetaReply(result=mpb.MetaResult(revision=self.sm.applied),
                              leader=self.node_id)
        if kind == "read":
            reply.kvs.extend(self.sm.read(req.read.key, req.read.prefix))
        elif kind == "ring_read":
            reply.ring.extend(self.sm.ring.records())
            reply.ring_epoch = self.sm.ring.epoch
        elif kind == "txn_query":
            rec = self.sm.txns.get(req.txn_query.txn_id)
            if rec is None:
                reply.result.code = mpb.META_NOT_FOUND
            else:
                reply.result.txn.CopyFrom(rec)
        elif kind == "lease_query":
            now = self._now_ms()
            ids = [req.lease_query.lease] if req.lease_query.lease else sorted(self.sm.leases)
            for i in ids:
                if i not in self.sm.leases:
                    return _meta_reply(mpb.META_NO_LEASE, f"lease {i} not found (expired, "
                                       "revoked or never granted)", self.sm.applied)
                reply.leases.append(self.sm.lease_info(i, self.leases.remaining(i, now)))
        elif kind == "watch":
            w = req.watch
            loop = asyncio.get_running_loop()
            until = loop.time() + min(max(w.wait_ms, 0) / 1000, self.request_timeout)
            while True:
                found = self.sm.watch(w.key, w.prefix, w.start_revision, w.limit or 1000)
                reply.compact_revision = self.sm.events_from
                if found is None:
                    return _meta_reply(mpb.META_COMPACTED, f"revision {w.start_revision} is "
                                       f"older than the history kept here (from revision "
                                       f"{self.sm.events_from}); read the current state and "
                                       "watch from its revision + 1", self.sm.applied)
                events, upto = found
                left = until - loop.time()
                if events or left <= 0 or core.role is not Role.LEADER:
                    reply.events.extend(events)
                    reply.result.revision = upto
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._applied_event.wait(), left)
        elif kind == "lock_wait":
            w = req.lock_wait
            loop = asyncio.get_running_loop()
            until = loop.time() + min(max(w.wait_ms, 0) / 1000, self.request_timeout)
            while True:
                info = self.sm.lock_info(w.name)
                reply.lock.CopyFrom(info)
                reply.result.revision = self.sm.applied
                if info.holder == w.lease:
                    reply.result.token = info.token
                    break
                if w.lease not in info.waiters:
                    code = (mpb.META_NO_LEASE if w.lease not in self.sm.leases
                            else mpb.META_NOT_HOLDER)
                    reply.result.code = code
                    reply.result.error = (f"lease {w.lease} neither holds nor waits for lock "
                                          f"{w.name!r}" + (" (the lease ended)" if code ==
                                                           mpb.META_NO_LEASE else ""))
                    break
                reply.result.position = list(info.waiters).index(w.lease) + 1
                left = until - loop.time()
                if left <= 0 or core.role is not Role.LEADER:
                    reply.result.code = mpb.META_QUEUED
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._applied_event.wait(), left)
        return reply

    async def _read_barrier(self) -> None:
        """Wait until this leader's state machine reflects everything committed before the
        call (ReadIndex)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        ctx = f"{self._nonce}:{next(self._ids)}".encode()
        self.core.read_index(ctx)
        self._reads[ctx] = ("", fut)
        self._kick.set()
        await self._await(fut, lambda: self._reads.pop(ctx, None))

    async def _propose_meta(self, cmd: mpb.MetaCommand) -> mpb.MetaReply:
        """Propose `cmd` and answer with its result. An entry lost to a leader change was
        never applied: a command with a session is proposed again (a repeat is answered
        from the session table), one without is reported as not applied."""
        core = self.core
        data = cmd.SerializeToString()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        while True:
            if core.role is not Role.LEADER:
                raise NotLeaderError(self.node_id, core.lead)
            index = core.propose(data)
            fut = loop.create_future()
            self._writes[index] = (core.term, fut)
            self._kick.set()
            try:
                res = await asyncio.wait_for(fut, max(0.001, deadline - loop.time()))
            except TimeoutError:
                self._writes.pop(index, None)
                return _meta_reply(mpb.META_UNKNOWN, f"no answer from the raft group within "
                                   f"{self.request_timeout}s: the command may or may not be "
                                   "applied", leader=self.node_id)
            if res is not None:
                return mpb.MetaReply(result=res, leader=self.node_id)
            if not cmd.session.client_id:
                return _meta_reply(mpb.META_UNAVAILABLE, "leadership changed before the "
                                   "command committed; it was not applied - retry")
            if loop.time() >= deadline:
                return _meta_reply(mpb.META_UNKNOWN, "leadership kept changing; the command "
                                   "may or may not be applied")

    async def _forward_meta(self, req: mpb.MetaRequest) -> mpb.MetaReply:
        """Forward to the leader. Every command carries a session (or is a registration,
        harmless twice), so a call that broke after delivery may be sent again: the state
        machine applies it at most once. Only the deadline ends the attempts."""
        if req.hops >= MAX_HOPS:
            return _meta_reply(mpb.META_UNAVAILABLE,
                               "no raft leader reachable (forwarded too many times); retry")
        fwd = mpb.MetaRequest()
        fwd.CopyFrom(req)
        fwd.hops = req.hops + 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        delivered = False
        last = "no raft leader known; the group may be electing"
        while True:
            core = self.core
            targets = []
            if core is not None and core.lead and core.lead != self.node_id:
                targets = [core.lead]
            elif core is None or core.joining or self.node_id not in core.conf.voters:
                known = set(self.voters) | (core.conf.voters if core is not None else set())
                targets = sorted(known - {self.node_id})
            for target in targets:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    res = await self.forward_transport.call(target, pb.PeerMessage(meta=fwd),
                                                            timeout=left)
                except PeerUnreachable as exc:
                    last = str(exc)
                    continue
                except TransportError as exc:
                    delivered, last = True, str(exc)
                    continue
                if res.WhichOneof("body") == "meta":
                    reply = res.meta
                    if reply.result.code == mpb.META_UNAVAILABLE and loop.time() < deadline:
                        last = reply.result.error
                        continue  # that member had no leader either: try again
                    return reply
                last = f"{target}: {res.error.message or 'unexpected answer'}"
            if loop.time() >= deadline:
                code = (mpb.META_UNKNOWN if delivered and req.WhichOneof("body") == "command"
                        else mpb.META_UNAVAILABLE)
                return _meta_reply(code, f"{last} (after {self.request_timeout}s)")
            await asyncio.sleep(self.tick_interval * 2)
            if self.core is not None and self.core.role is Role.LEADER:
                return await self.handle_meta(req)

    def status(self) -> dict:
        """This node's view: term, leader, commit/applied, and (on the leader) progress."""
        if self.core is None:
            return {"node": self.node_id, "voter": False, "voters": self.voters}
        s = self.core.status()
        joining = {"joining": True} if s.joining else {}
        members = []
        for m in sorted(s.conf.members()):
            role = "learner" if m in s.conf.learners else (
                "leader" if m == s.leader else "follower")
            match = s.progress[m][0] if m in s.progress else None
            members.append({"id": m, "role": role, "match_index": match,
                            "lag": None if match is None else max(0, s.last_index - match)})
        return {"node": self.node_id, "term": s.term, "leader": s.leader or None,
                "role": s.role.value, "commit_index": s.commit, "applied_index": s.applied,
                "last_index": s.last_index, "snapshot_index": self.core.snapshot.index,
                "members": members, **joining}


def _meta_reply(code: int, error: str, revision: int = 0, leader: str = "") -> mpb.MetaReply:
    return mpb.MetaReply(result=mpb.MetaResult(code=code, error=error, revision=revision),
                         leader=leader)
