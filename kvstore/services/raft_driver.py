"""The asyncio driver of the Raft core inside a node, and the metadata service on top.

It runs the ordering contract of `kvstore.core.raft` (persist, then send, then apply, then
advance) over the node's `Transport`: raft messages ride in `PeerMessage.raft`, so the
transport's per-peer coalescing batches them, and the core pipelines AppendEntries (up to
`max_inflight` per follower). Persistence runs in a worker thread; messages keep being
stepped into the core meanwhile (the contract allows it).

`PeerMessage.raft` bytes start with a tag: RAFT (a core message, one way) or CLIENT (a JSON
metadata request from another node or from `kv meta` / `kv raft status`, answered in
`PeerResult.raw`). Requests reaching a follower or a non-voting node are forwarded to the
leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from pathlib import Path
from typing import Any

from kvstore._proto import internode_pb2 as pb
from kvstore.core.meta import MetaStateMachine, encode_cas, encode_put
from kvstore.core.raft import (
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
from kvstore.storage.raftlog import Files, MemoryFiles, OsFiles, RaftLog
from kvstore.transport.base import Lane, PeerTimeout, Transport, TransportError

log = logging.getLogger(__name__)

TAG_RAFT = 1
TAG_CLIENT = 2
MAX_HOPS = 3


class MetaError(Exception):
    """A metadata request failed; the message says why and what to do."""


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
    ) -> None:
        """`offload(fn, *args)` runs disk work off the event loop (inline in simulations);
        `rng` draws election timeouts and request nonces (seeded in simulations). The raft
        state lives in `files` (default: `<data_dir>/raft`, or in memory without a data
        directory).

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
        self.is_voter = node_id in self.voters
        self.tick_interval = tick_interval
        self.snapshot_every = snapshot_every
        self.keep_entries = keep_entries
        self.request_timeout = request_timeout
        self.rng = rng or random.Random()
        self.config = Config(node_id, election_tick=election_tick, heartbeat_tick=heartbeat_tick,
                             max_entries_per_msg=256, max_inflight=8)
        if files is None:
            files = OsFiles(Path(data_dir) / "raft") if data_dir else MemoryFiles()
        self.log = RaftLog(files)
        self.core: RaftNode | None = None
        self.sm = MetaStateMachine()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._sends: set[asyncio.Task] = set()
        self._writes: dict[str, asyncio.Future] = {}
        self._reads: dict[bytes, tuple[str, asyncio.Future]] = {}
        self._read_waits: list = []
        self._ids = itertools.count(1)
        self._stopped = False
        self._nonce = f"{self.rng.getrandbits(32):08x}"

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.is_voter:
            return
        rec = await self.offload(self.log.recover)
        for note in rec.notes:
            log.warning("raft log recovery on %s: %s", self.node_id, note)
        if rec.records == 0 and rec.snapshot.index == 0:
            self.core = RaftNode(self.config, self.rng, bootstrap_voters=self.voters)
        else:
            self.core = RaftNode(self.config, self.rng, hard_state=rec.hard_state,
                                 snapshot=rec.snapshot, entries=rec.entries)
        if rec.snapshot.index:
            self.sm.restore(rec.snapshot.data, rec.snapshot.index)
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
            self._kick.set()

    # ---- the ordering contract ---------------------------------------------------------------

    async def _run(self) -> None:
        core = self.core
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                while core.has_ready():
                    rd = core.ready()
                    if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
                        await self.offload(self._persist, rd)  # 1. persist (+fsync)
                    for m in rd.messages:  # 2. send
                        self._send(m)
                    self._apply(rd)  # 3. apply
                    core.advance(rd)  # 4. advance
                    self._serve_reads()
                    if core.applied - core.snapshot.index >= self.snapshot_every:
                        await self._snapshot()
            except Exception:
                log.exception("raft driver on %s failed; stopping it", self.node_id)
                raise

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
            if e.type is EntryType.NORMAL:
                res = self.sm.apply(e.index, e.data)
                if res is not None:
                    fut = self._writes.pop(res.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(res)
            else:
                self.sm.skip(e.index)
        self._read_waits.extend(rd.read_states)

    def _serve_reads(self) -> None:
        still = []
        for rs in self._read_waits:
            if self.sm.applied >= rs.index:
                entry = self._reads.pop(rs.context, None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(self.sm.get(entry[0]))
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
        """Serve a metadata request here if this node leads, else forward it."""
        op = req.get("op")
        if op not in ("get", "put", "cas", "status"):
            raise ValueError(f"unknown op {op!r}; use get, put, cas or status")
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
                return await self._local(req)
            except (NotLeaderError, ProposalDroppedError):
                pass
        return await self._forward(req)

    async def _local(self, req: dict) -> dict:
        core = self.core
        key = req.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if req["op"] == "get":
            ctx = f"{self._nonce}:{next(self._ids)}".encode()
            core.read_index(ctx)
            self._reads[ctx] = (key, fut)
            self._kick.set()
            value = await self._await(fut, lambda: self._reads.pop(ctx, None))
            return {"ok": True, "value": value, "found": value is not None,
                    "leader": self.node_id}
        # The term makes ids unique across restarts (a restarted node proposes only in a
        # later term), so a replayed entry can never answer a request of this incarnation.
        rid = f"{self.node_id}:{self._nonce}:{core.term}:{next(self._ids)}"
        if req["op"] == "put":
            cmd = encode_put(key, str(req.get("value", "")), rid)
        else:
            cmd = encode_cas(key, req.get("expected"), req.get("value"), rid)
        core.propose(cmd)
        self._writes[rid] = fut
        self._kick.set()
        res = await self._await(fut, lambda: self._writes.pop(rid, None))
        return {"ok": res.ok, "previous": res.value, "error": res.error,
                "leader": self.node_id}

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
            if self.core is not None and self.core.lead and self.core.lead != self.node_id:
                targets = [self.core.lead]
            elif self.core is None:
                targets = [v for v in self.voters if v != self.node_id]
            for target in targets:
                try:
                    res = await self.forward_transport.call(
                        target, pb.PeerMessage(raft=client_request(fwd)), timeout=wait)
                except PeerTimeout:
                    # Delivered or not, we cannot tell: retrying could apply a write twice.
                    raise MetaError(f"{target} did not answer within {wait:.1f}s; the request "
                                    "may or may not have been applied - check, then retry"
                                    ) from None
                except TransportError:
                    continue  # not delivered: safe to try again
                if res.WhichOneof("body") == "raw" and res.raw:
                    return json.loads(res.raw)
            if asyncio.get_running_loop().time() > deadline:
                raise MetaError("no raft leader known; the group may be electing - retry")
            await asyncio.sleep(self.tick_interval * 2)
            if self.core is not None and self.core.role is Role.LEADER:
                return await self.handle(req)

    def status(self) -> dict:
        """This node's view: term, leader, commit/applied, and (on the leader) progress."""
        if self.core is None:
            return {"node": self.node_id, "voter": False, "voters": self.voters}
        s = self.core.status()
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
                "members": members}
