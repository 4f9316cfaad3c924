"""An in-memory harness that wires RaftNodes together (like h11's ConnectionPair and
etcd's raft network tests): it follows the driving contract exactly, keeps each node's
"durable" state in memory so nodes can be restarted, and lets tests cut links, drop or hold
messages, and step time. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.core.raft.messages import (
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    decode_message,
    encode_message,
)
from kvstore.core.raft.raft import Config, RaftNode, ReadState, Role


@dataclass
class MemDurable:
    """What one node has persisted (survives restart())."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)

    def save(self, snap: Snapshot | None, hs: HardState | None, entries: list[Entry]) -> None:
        if snap is not None:
            self.snapshot = snap
            self.entries = []
        if entries:
            first = entries[0].index
            keep = [e for e in self.entries if e.index < first]
            self.entries = keep + list(entries)
        if hs is not None:
            self.hard_state = hs


class MemCluster:
    """A group of RaftNodes connected by a perfect (unless told otherwise) network."""

    def __init__(self, ids: list[str], seed: int = 0, *, learners: list[str] | None = None,
                 **cfg) -> None:
        self.cfg = cfg
        self.seed = seed
        self.nodes: dict[str, RaftNode] = {}
        self.durable: dict[str, MemDurable] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.inflight: list[Message] = []
        self.cut: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.sent: list[Message] = []  # every message that left a node, for assertions
        self.drop: Callable[[Message], bool] | None = None
        self.joining: set[str] = set()  # nodes started with joining=True (durable flag)
        for nid in ids:
            self._start(nid, bootstrap=ids)
        for nid in learners or []:
            self._start(nid, bootstrap=None)

    def config(self, nid: str) -> Config:
        return Config(nid, **self.cfg)

    def _start(self, nid: str, bootstrap: list[str] | None) -> None:
        rng = random.Random(f"{self.seed}-{nid}-{len(self.applied.get(nid, []))}")
        d = self.durable.get(nid)
        if d is None:
            d = self.durable[nid] = MemDurable()
            self.applied[nid] = []
        if bootstrap is not None and not d.entries and not d.snapshot.index:
            node = RaftNode(self.config(nid), rng, bootstrap_voters=bootstrap)
        else:
            node = RaftNode(self.config(nid), rng, hard_state=d.hard_state, snapshot=d.snapshot,
                            entries=list(d.entries), joining=nid in self.joining)
            self.applied[nid] = [e for e in self.applied[nid] if e.index <= d.snapshot.index]
        self.nodes[nid] = node
        self.read_states[nid] = []

    def add_node(self, nid: str, joining: bool = False) -> RaftNode:
        """A brand-new, empty node (to be added as a learner); `joining` as a node that
        lost its state comes back (it votes only once promoted from learner)."""
        if joining:
            self.joining.add(nid)
        self._start(nid, bootstrap=None)
        return self.nodes[nid]

    def wipe(self, nid: str) -> None:
        """Lose everything `nid` persisted (a removed or wiped data directory)."""
        self.down.add(nid)
        self.durable.pop(nid, None)
        self.applied.pop(nid, None)
        self.inflight = [m for m in self.inflight if m.to != nid]

    # ---- the driver -------------------------------------------------------------------------

    def process(self, nid: str) -> None:
        """Run the ordering contract for one node until it has nothing ready."""
        node = self.nodes[nid]
        while nid not in self.down and node.has_ready():
            rd = node.ready()
            if rd.send_first:  # a leader's appends may leave before its own write
                self._send_all(rd.messages)
            self.durable[nid].save(rd.snapshot, rd.hard_state, rd.entries)  # 1. persist
            if not rd.send_first:
                self._send_all(rd.messages)  # 2. send
            if rd.snapshot is not None:  # 3. apply
                self.applied[nid] = _decode_image(rd.snapshot.data)
            self.applied[nid].extend(e for e in rd.committed if e.type is EntryType.NORMAL)
            self.read_states[nid].extend(rd.read_states)
            node.advance(rd)  # 4. advance
            if nid in self.joining and not node.joining:
                self.joining.discard(nid)  # promoted: the driver clears the durable flag

    def _send_all(self, messages: list[Message]) -> None:
        for m in messages:  # through the codec, as on a real network
            m2 = decode_message(encode_message(m))
            self.sent.append(m2)
            if (m.frm, m.to) in self.cut or (self.drop and self.drop(m2)):
                continue
            self.inflight.append(m2)

    def deliver(self, filt: Callable[[Message], bool] | None = None) -> int:
        """Deliver in-flight messages (those matching `filt`, default all); return count."""
        batch = [m for m in self.inflight if filt is None or filt(m)]
        self.inflight = [m for m in self.inflight if not (filt is None or filt(m))]
        for m in batch:
            if m.to in self.down or m.to not in self.nodes or (m.frm, m.to) in self.cut:
                continue
            self.nodes[m.to].step(m)
            self.process(m.to)
        return len(batch)

    def stabilize(self, rounds: int = 200) -> None:
        for nid in self.nodes:
            self.process(nid)
        for _ in range(rounds):
            if not self.deliver():
                return

    def tick(self, nid: str | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i in [nid] if nid else list(self.nodes):
                if i not in self.down:
                    self.nodes[i].tick()
                    self.process(i)
            self.stabilize()

    def elect(self, nid: str) -> RaftNode:
        """Make `nid` campaign now, as on TimeoutNow (skipping pre-vote and leases)."""
        self.nodes[nid]._hup(transfer=True)
        self.stabilize()
        assert self.nodes[nid].role is Role.LEADER, self.nodes[nid].status()
        return self.nodes[nid]

    def propose(self, nid: str, data: bytes) -> int:
        idx = self.nodes[nid].propose(data)
        self.stabilize()
        return idx

    # ---- faults -----------------------------------------------------------------------------

    def isolate(self, nid: str) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut |= {(nid, other), (other, nid)}

    def partition(self, *groups: list[str]) -> None:
        for g in groups:
            for a in g:
                for b in self.nodes:
                    if b not in g:
                        self.cut |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid: str) -> None:
        self.down.add(nid)

    def restart(self, nid: str) -> RaftNode:
        self.down.discard(nid)
        self._start(nid, bootstrap=None)
        self.process(nid)
        return self.nodes[nid]

    def snapshot(self, nid: str, keep: int = 0) -> Snapshot:
        """Take a snapshot of `nid`'s applied state and compact its log (keeping `keep`)."""
        node = self.nodes[nid]
        snap = node.create_snapshot(_encode_image(self.applied[nid]))
        self.durable[nid].snapshot = snap
        node.compact(snap.index - keep)
        self.durable[nid].entries = [e for e in self.durable[nid].entries
                                     if e.index > snap.index - keep]
        return snap

    def leaders(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.role is Role.LEADER and n not in self.down]

    def data(self, nid: str) -> list[bytes]:
        return [e.data for e in self.applied[nid] if e.data]


def _encode_image(applied: list[Entry]) -> bytes:
    return json.dumps([[e.index, e.term, e.data.hex()] for e in applied]).encode()


def _decode_image(data: bytes) -> list[Entry]:
    return [Entry(i, t, EntryType.NORMAL, bytes.fromhex(h)) for i, t, h in json.loads(data)]
