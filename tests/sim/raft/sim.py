"""The Raft simulator: real `RaftNode`s, real `RaftLog`s on simulated disks, a simulated
network and clock, all derived from one seed.

Time is an integer number of virtual milliseconds; nothing sleeps. One seed derives the
scenario (cluster size, loss, duplication, delays, partitions, crashes, membership changes,
snapshot frequency, clock drift) and every random choice made while running it, so a seed
replays exactly. Invariants are checked as the run goes (see checkers.py); at the end all
faults heal, a leader must appear within a bound, the members must converge, and the client
history must be linearizable.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import random
from dataclasses import dataclass, field

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.meta import MetaStateMachine, command, encode_cas, encode_put
from kvstore.core.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Config,
    EntryType,
    Message,
    MsgType,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RaftNode,
    Ready,
    Role,
    decode_message,
    encode_message,
)
from kvstore.services.raft_start import RaftStartRefused, StartMode, plan_start
from kvstore.storage.raftlog import LOG_FILE, RaftLog

from .checkers import InvariantChecker, SimFailure
from .disk import MemFiles
from .linearizability import Op, check_history
from .locks import INIT as LOCK_INIT
from .locks import LOCK_KEY, LOCK_KINDS, LockWorkload, lock_step

ELECTION_TICK = 10
HEARTBEAT_TICK = 2
TICK_MS = 10
ELECTION_MS = ELECTION_TICK * TICK_MS
OP_TIMEOUT_MS = 400
# After the last fault heals a leader must be in place within this many election timeouts.
LIVENESS_BOUND_TIMEOUTS = 15

FAULT_KINDS = ("partition", "asym", "flap", "crash", "power_loss", "isolate_leader",
               "transfer")


@dataclass
class Fault:
    kind: str
    start: int
    end: int
    nodes: tuple[str, ...] = ()  # the cut-off group / the crashed node
    period: int = 0  # flapping period

    def describe(self) -> str:
        who = ",".join(self.nodes) or "leader"
        extra = f" every {self.period}ms" if self.period else ""
        return f"{self.kind}({who})@{self.start}-{self.end}{extra}"


@dataclass
class Scenario:
    seed: int
    n_nodes: int
    spare: bool
    loss: float
    dup: float
    max_delay: int
    long_delay_p: float
    faults: list[Fault]
    heal_at: int
    snap_every: int
    keep_entries: int
    clients: int
    keys: int
    drift: tuple[int, ...]
    retries: int = 0  # times a client re-sends a write (same session seq) before giving up
    dup_cmd: float = 0.0  # chance a write is proposed twice (a forward re-sent mid-call)
    lock_clients: int = 0  # clients holding leases and locks (tests/sim/raft/locks.py)
    # An fsync takes 1..fsync_ms ms. A leader sends its appends before its own fsync
    # (Ready.send_first), so a slow disk lets followers acknowledge, and the group commit,
    # before the leader's copy is durable; a crash then loses the leader's unsynced tail.
    fsync_ms: int = 3

    @classmethod
    def from_seed(cls, seed: int, long: bool = False, wipe: bool = False) -> Scenario:
        """`wipe`: also one voter loses its whole disk (crash, then an empty directory) and
        must come back through remove / join / learner / promote (no spare then)."""
        r = random.Random(f"scenario-{seed}")
        n = r.choice((3, 3, 5))
        spare = n == 3 and r.random() < 0.3 and not wipe
        ids = [f"n{i}" for i in range(1, n + 1)]
        window = r.randrange(3000, 10000) if long else r.randrange(250, 1000)
        faults = []
        for _ in range(r.randint(1, 6 if long else 3)):
            kind = r.choice(FAULT_KINDS)
            start = r.randrange(50, window - 40)
            end = min(window, start + r.randrange(40, 900))
            group: tuple[str, ...] = ()
            period = 0
            if kind in ("crash", "power_loss"):
                group = (r.choice(ids),)
            elif kind in ("partition", "asym", "flap"):
                size = r.randint(1, (n - 1) // 2 if r.random() < 0.7 else n - 1)
                group = tuple(sorted(r.sample(ids, size)))
                if kind == "flap":
                    period = r.randrange(20, 150)
            faults.append(Fault(kind, start, end, group, period))
        loss = r.choice((0.0, 0.01, 0.05, 0.1, 0.2))
        if wipe:
            # Until the wiped voter is back, the group needs every other voter: with 20% loss
            # a 3-node group's elections then miss the liveness bound by chance (~1%).
            loss = min(loss, 0.1)
            w = random.Random(f"wipe-{seed}")
            start = w.randrange(50, window - 40)
            faults.append(Fault("wipe", start, min(window, start + w.randrange(40, 900)),
                                (w.choice(ids),)))
        return cls(
            seed=seed,
            n_nodes=n,
            spare=spare,
            loss=loss,
            dup=r.choice((0.0, 0.01, 0.05)),
            max_delay=r.choice((3, 8, 20)),
            long_delay_p=r.choice((0.0, 0.005, 0.02)),
            faults=faults,
            heal_at=max(f.end for f in faults),
            snap_every=r.choice((8, 20, 60)),
            keep_entries=r.choice((0, 3, 10)),
            clients=r.randint(2, 3),
            keys=r.randint(1, 3),
            drift=tuple(r.choice((0, 0, 1, -1)) for _ in range(n + 1)),
            retries=r.choice((0, 2, 4)),
            dup_cmd=r.choice((0.0, 0.1, 0.3)),
            lock_clients=r.choice((0, 0, 2, 3)),
            # drawn apart, so the scenarios of existing seeds stay as they were
            fsync_ms=random.Random(f"fsync-{seed}").choice((3, 3, 10, 30)),
        )

    def describe(self) -> str:
        return (
            f"seed={self.seed} nodes={self.n_nodes}{'+spare' if self.spare else ''} "
            f"loss={self.loss} dup={self.dup} delay<={self.max_delay}ms "
            f"long_delay_p={self.long_delay_p} snap_every={self.snap_every} "
            f"keep={self.keep_entries} clients={self.clients} keys={self.keys} "
            f"drift={self.drift} retries={self.retries} dup_cmd={self.dup_cmd} "
            f"lock_clients={self.lock_clients} fsync<={self.fsync_ms}ms "
            f"heal_at={self.heal_at}ms "
            f"faults=[{' '.join(f.describe() for f in self.faults)}]"
        )


@dataclass
class Client:
    id: int
    hint: str = ""
    op: Op | None = None
    seq: int = 0
    cmd: bytes = b""
    rid: str = ""
    client_id: int = 0  # its session, once registered
    lock: bool = False  # a lock client (locks.py)
    registering: bool = False
    attempts: int = 0


@dataclass
class Result:
    scenario: Scenario
    ops: int
    indeterminate: int
    elect_after_heal_ms: int  # -1: a leader was already in place at heal time
    end_ms: int
    events: int
    elections: int
    max_term: int
    messages: int
    crashes: int
    snapshots_sent: int
    notes: list[str] = field(default_factory=list)
    refusals: int = 0  # starts a wiped voter refused
    retries: int = 0  # writes re-sent with the same session seq
    duplicates_answered: int = 0  # applications answered from the session table


class SimNode:
    sm_factory = MetaStateMachine  # tests swap in a broken one to show the checker fails

    def __init__(self, node_id: str, seed: int, drift: int) -> None:
        self.id = node_id
        self.files = MemFiles()
        self.rng = random.Random(f"node-{seed}-{node_id}")
        self.tick_ms = TICK_MS + drift
        self.up = False
        self.gen = 0
        self.raft: RaftNode
        self.log: RaftLog
        self.sm = self.sm_factory()
        self.pending: Ready | None = None
        self.ops: dict[int, tuple[int, object]] = {}  # index -> (term, Op or Client)
        self.reads: dict[bytes, Op] = {}
        self.read_waits: list = []
        self.leader_term_checked = -1
        self.joining_on_disk = False
        self.wiped = False  # lost its disk; comes back only through --raft-join
        self.durable_last = 0  # last log index fsynced here (what a power loss keeps)
        self.disk_lost = False  # wiped once: its old acknowledgements promise nothing
        self.commit_checked = (0, 0)  # (term, commit) last checked as leader

    def boot(self, voters: list[str], *, create: bool = False, join: bool = False
             ) -> list[str]:
        """Start from the disk as a real node does (kvstore/services/raft_start.py):
        `create` (--raft-bootstrap) only when the cluster is created, `join` (--raft-join)
        for a node that is to be added. Raises RaftStartRefused (the node stays down)."""
        self.log = RaftLog(self.files)
        rec = self.log.recover()
        cfg = Config(self.id, election_tick=ELECTION_TICK, heartbeat_tick=HEARTBEAT_TICK,
                     max_entries_per_msg=16, max_inflight=4)
        plan = plan_start(self.id, voters, has_state=rec.has_state, joining=rec.joining,
                          bootstrap=create, join=join, prior_life=[], raft_dir="its disk",
                          data_dir="its disk")
        if plan.mode is StartMode.BOOTSTRAP:
            self.raft = RaftNode(cfg, self.rng, bootstrap_voters=voters)
        elif plan.mode is StartMode.JOIN:
            self.log.set_joining(True)
            self.raft = RaftNode(cfg, self.rng, joining=True)
        else:
            self.raft = RaftNode(cfg, self.rng, hard_state=rec.hard_state,
                                 snapshot=rec.snapshot, entries=rec.entries,
                                 joining=rec.joining)
        self.joining_on_disk = plan.joining
        self.sm = self.sm_factory()
        if rec.snapshot.index:
            self.sm.restore(rec.snapshot.data, rec.snapshot.index)
        self.durable_last = self.raft.last_index()  # what it recovered is on its disk now
        self.up = True
        self.gen += 1
        self.pending = None
        self.ops, self.reads, self.read_waits = {}, {}, []
        self.leader_term_checked = -1
        return rec.notes


# event kinds
TICK, DELIVER, FSYNC, FAULT_ON, FAULT_OFF, CLIENT, OP_TIMEOUT, ADMIN, CHECK = range(9)


class Simulation:
    check_leader_match = True  # tests turn it off to show the commit check alone suffices

    def __init__(self, sc: Scenario, encode: bool = True, unsafe_rebootstrap: bool = False
                 ) -> None:
        """`unsafe_rebootstrap`: a wiped voter bootstraps a fresh copy of the group again
        (the behaviour issue 10 removed), to show the checkers catch what it breaks."""
        self.sc = sc
        self.unsafe_rebootstrap = unsafe_rebootstrap
        self.encode = encode
        self.rng = random.Random(f"run-{sc.seed}")
        self.now = 0
        self._q: list = []
        self._seq = 0
        self.voters = [f"n{i}" for i in range(1, sc.n_nodes + 1)]
        self.spare = f"n{sc.n_nodes + 1}" if sc.spare else ""
        ids = self.voters + ([self.spare] if self.spare else [])
        self.nodes = {nid: SimNode(nid, sc.seed, sc.drift[i]) for i, nid in enumerate(ids)}
        self.checker = InvariantChecker()
        self.history: list[Op] = []
        self.clients = [Client(i) for i in range(sc.clients)]
        self.clients += [Client(sc.clients + i, lock=True) for i in range(sc.lock_clients)]
        self.locks = LockWorkload(self) if sc.lock_clients else None
        self.blocked: set[tuple[str, str]] = set()
        self.active: dict[int, set[tuple[str, str]]] = {}
        self.victim = ""
        self.admin_done = not sc.spare
        self.rejoin = ""  # a wiped voter on its way back
        self.rejoin_done = True
        self.refusals = 0
        self.elect_after_heal = -2
        self.retries = 0
        self.duplicates_answered = 0
        self.first_applied: dict[tuple[int, int], int] = {}  # (client, seq) -> index
        self.messages = self.crashes = self.snapshots_sent = self.events = 0
        self.notes: list[str] = []
        self.ops_end = sc.heal_at + 200
        self.deadline = sc.heal_at + 60 * ELECTION_MS
        self.done = False

    # ---- scheduling -------------------------------------------------------------------

    def at(self, t: int, kind: int, a=None, b=None) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, kind, a, b))

    def run(self) -> Result:
        for nid, node in self.nodes.items():
            node.boot(self.voters, create=nid in self.voters, join=nid not in self.voters)
            self.at(self.rng.randrange(node.tick_ms), TICK, nid, node.gen)
            self.drive(node)
        for i, f in enumerate(self.sc.faults):
            self.at(f.start, FAULT_ON, i)
            self.at(f.end, FAULT_OFF, i)
        for c in self.clients:
            self.at(self.rng.randrange(30), CLIENT, c.id)
        if self.spare:
            self.victim = self.rng.choice(self.voters)
            self.at(self.rng.randrange(100, max(101, self.sc.heal_at)), ADMIN)
        self.at(self.sc.heal_at, CHECK)
        while self._q and not self.done:
            t, _, kind, a, b = heapq.heappop(self._q)
            self.now = t
            self.events += 1
            self.handle(kind, a, b)
            if self.now > self.deadline:
                self.fail(self.stuck_report())
        if not self.done:
            self.fail("event queue drained before convergence")
        return self.finish()

    def fail(self, msg: str) -> None:
        raise SimFailure(f"t={self.now}ms: {msg}")

    def handle(self, kind: int, a, b) -> None:
        if kind == TICK:
            node = self.nodes[a]
            if node.up and node.gen == b:
                node.raft.tick()
                self.drive(node)
                if self.locks is not None and node.pending is None:
                    self.locks.tick(node)
                    self.drive(node)
                self.at(self.now + node.tick_ms, TICK, a, b)
        elif kind == DELIVER:
            node = self.nodes[a]
            frm, payload = b
            if not node.up or (frm, a) in self.blocked:
                return
            m = decode_message(payload) if self.encode else payload
            node.raft.step(m)
            self.drive(node)
        elif kind == FSYNC:
            node = self.nodes[a]
            if node.up and node.gen == b and node.pending is not None:
                node.files.sync(LOG_FILE)
                rd, node.pending = node.pending, None
                if rd.snapshot is not None:
                    node.durable_last = rd.snapshot.index
                if rd.entries:
                    node.durable_last = rd.entries[-1].index
                self.complete(node, rd)
                self.drive(node)
        elif kind == FAULT_ON:
            self.fault_on(a)
        elif kind == FAULT_OFF:
            self.fault_off(a)
        elif kind == CLIENT:
            self.client_step(self.clients[a])
        elif kind == OP_TIMEOUT:
            client, op = a, b
            if op == "register":
                if not client.client_id:
                    client.registering = False
                    self.at(self.now, CLIENT, client.id)
            elif client.op is op:
                if op.kind not in ("get", "wait") and client.attempts < self.sc.retries:
                    # Retry with the same session seq: applied at most once, and the answer
                    # is the first application's result.
                    client.attempts += 1
                    self.retries += 1
                    self.at(self.now + OP_TIMEOUT_MS, OP_TIMEOUT, client, op)
                    self.at(self.now, CLIENT, client.id)
                    return
                client.op = None  # indeterminate: ret stays at +inf
                if self.locks is not None and op.kind in LOCK_KINDS:
                    self.locks.gave_up(op)
                self.schedule_client(client)
        elif kind == ADMIN:
            if a == "rejoin":
                self.rejoin_step()
            else:
                self.admin_step()
        elif kind == CHECK:
            self.check_progress()

    # ---- the node driver (the ordering contract) --------------------------------------------

    def drive(self, node: SimNode) -> None:
        raft = node.raft
        if node.up and raft.role is Role.LEADER:
            self.check_commit_durable(node, [raft.conf.voters])  # a commit made by step()
        while node.up and node.pending is None and raft.has_ready():
            rd = raft.ready()
            self.checker.on_ready(node.id, raft, rd)
            if raft.joining:  # still joining: so it was when it made every message here
                for m in rd.messages:
                    if m.type in (MsgType.VOTE, MsgType.PRE_VOTE) or (
                            m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP)
                            and not m.reject):
                        self.fail(f"{node.id} is joining but sent {m.type.name} to {m.to}")
            if rd.snapshot is not None:
                node.log.install_snapshot(rd.snapshot, rd.hard_state)
            node.log.save(rd.hard_state, rd.entries, sync=False)  # written, not yet durable
            if rd.send_first:  # a leader's appends leave while its own fsync runs
                if rd.role is not Role.LEADER:
                    self.fail(f"{node.id}: a {rd.role.value}'s Ready may not send first")
                for m in rd.messages:
                    self.send(node.id, m)
            if rd.must_sync:
                node.pending = rd
                delay = 1 + node.rng.randrange(self.sc.fsync_ms)
                self.at(self.now + delay, FSYNC, node.id, node.gen)
                break
            self.complete(node, rd)
        if raft.role is Role.LEADER:
            me = raft.progress.get(node.id)
            if self.check_leader_match and me is not None and me.match > node.durable_last:
                self.fail(f"leader {node.id} counts itself up to {me.match} toward the commit "
                          f"quorum but has fsynced only up to {node.durable_last}")
            if node.leader_term_checked != raft.term:
                node.leader_term_checked = raft.term
                self.checker.on_leader(node.id, raft)

    def check_commit_durable(self, lead: SimNode, confs: list[frozenset[str]]) -> None:
        """The leader's commit index is on the disks of a quorum of voters: the followers
        that acknowledged it (they fsync before acknowledging) and the leader itself only
        once its own fsync completed (it sends before it syncs). `confs`: the voter sets
        the new commit index may have been computed with (advance() applies a membership
        change after counting the leader's own write)."""
        raft, c = lead.raft, lead.raft.commit
        if (raft.term, c) <= lead.commit_checked:
            return
        lead.commit_checked = (raft.term, c)
        if raft.term_at(c) != raft.term:
            return  # commits of earlier terms' entries come with one of this term
        held = []
        for v in sorted(set().union(*confs)):
            node = self.nodes.get(v)
            if node is None:
                continue
            if v == lead.id:
                ok = node.durable_last >= c
            else:
                pr = raft.progress.get(v)
                ok = pr is not None and pr.match >= c and (
                    node.durable_last >= c or node.disk_lost)
            if ok:
                held.append(v)
        if not any(sum(1 for v in held if v in conf) >= len(conf) // 2 + 1 for conf in confs):
            self.fail(f"leader {lead.id} committed {c} (term {raft.term}) but only {held} "
                      f"of voters {[sorted(conf) for conf in confs]} hold it durably")

    def complete(self, node: SimNode, rd: Ready) -> None:
        """The Ready is durable: send (unless sent already), apply, advance."""
        if not rd.send_first:
            for m in rd.messages:
                self.send(node.id, m)
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data, rd.snapshot.index)
            self.checker.on_install(node.id, rd.snapshot)
        for e in rd.committed:
            self.checker.on_apply(node.id, e)
            if e.type is EntryType.NORMAL:
                before = set(node.sm.leases) if self.locks is not None else set()
                res = node.sm.apply(e.index, e.data)
                if self.locks is not None:
                    self.locks.on_apply(node, e, res, before)
                self.on_result(node, e, res)
            else:
                node.sm.skip(e.index)
        node.read_waits.extend(rd.read_states)
        conf_before = node.raft.conf.voters
        node.raft.advance(rd)
        if node.raft.role is Role.LEADER:  # a commit made by advance(): own write counted
            self.check_commit_durable(node, [conf_before, node.raft.conf.voters])
        if self.locks is not None:
            self.locks.after_apply(node)
        if node.joining_on_disk and not node.raft.joining:
            node.log.set_joining(False)  # promoted: before any vote and any compaction
            node.joining_on_disk = False
        if node.read_waits:
            still = []
            for rs in node.read_waits:
                if node.sm.applied >= rs.index:
                    op = node.reads.pop(rs.context, None)
                    if op is not None and op.kind == "wait":
                        if self.clients[op.client].op is op and not op.known:
                            self.resolve(op, self.locks.wait_result(node.sm, op))
                    elif op is not None:
                        self.resolve(op, node.sm.get(op.key))
                else:
                    still.append(rs)
            node.read_waits = still
        raft = node.raft
        if raft.applied - raft.snapshot.index >= self.sc.snap_every:
            snap = raft.create_snapshot(node.sm.snapshot())
            node.log.save_snapshot(snap)
            keep = snap.index - self.sc.keep_entries
            raft.compact(keep)
            node.log.compact(keep)

    def send(self, frm: str, m: Message) -> None:
        self.messages += 1
        r = self.rng
        if (frm, m.to) in self.blocked or r.random() < self.sc.loss:
            return
        if m.snapshot is not None:
            self.snapshots_sent += 1
        payload = encode_message(m) if self.encode else m
        copies = 2 if r.random() < self.sc.dup else 1
        for _ in range(copies):
            delay = 1 + r.randrange(self.sc.max_delay)
            if r.random() < self.sc.long_delay_p:
                delay += r.randrange(50, 400)
            self.at(self.now + delay, DELIVER, m.to, (frm, payload))

    # ---- faults ------------------------------------------------------------------------------

    def leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            if n.up and n.raft.role is Role.LEADER and (
                best is None or n.raft.term > best.raft.term
            ):
                best = n
        return best

    def _cut(self, group: tuple[str, ...], both: bool) -> set[tuple[str, str]]:
        out = set()
        for a in group:
            for b in self.nodes:
                if b not in group:
                    out.add((a, b))
                    if both:
                        out.add((b, a))
        return out

    def _recompute(self) -> None:
        self.blocked = set().union(*self.active.values()) if self.active else set()

    def fault_on(self, i: int) -> None:
        f = self.sc.faults[i]
        if f.kind == "wipe":  # the node dies and its directory is removed
            node = self.nodes[f.nodes[0]]
            if node.up:
                node.up = False
                node.gen += 1
                self.crashes += 1
            node.files = MemFiles()
            node.wiped = True
            node.disk_lost = True
            self.rejoin, self.rejoin_done = node.id, False
            return
        if f.kind in ("crash", "power_loss"):
            node = self.nodes[f.nodes[0]]
            if node.up:
                node.up = False
                node.gen += 1
                self.crashes += 1
                node.files.crash(node.rng, lose_unsynced=f.kind == "power_loss")
            return
        if f.kind == "transfer":  # not a fault: a leadership transfer in the middle of it all
            lead = self.leader()
            if lead is not None:
                others = sorted(lead.raft.conf.voters - {lead.id})
                if others:
                    with contextlib.suppress(RaftError):
                        lead.raft.transfer_leadership(self.rng.choice(others))
                    self.drive(lead)
            return
        if f.kind == "isolate_leader":
            lead = self.leader()
            group = (lead.id,) if lead else (self.rng.choice(self.voters),)
            self.active[i] = self._cut(group, True)
        elif f.kind == "flap":
            on = i in self.active
            if on:
                del self.active[i]
            else:
                self.active[i] = self._cut(f.nodes, True)
            if self.now + f.period < f.end:
                self.at(self.now + f.period, FAULT_ON, i)
        else:
            self.active[i] = self._cut(f.nodes, f.kind == "partition")
        self._recompute()

    def fault_off(self, i: int) -> None:
        f = self.sc.faults[i]
        if f.kind == "transfer":
            return
        if f.kind == "wipe":  # restarted as a voter, it must refuse; then the way back
            node = self.nodes[f.nodes[0]]
            if self.unsafe_rebootstrap:  # what an empty voter did before issue 10
                node.wiped = False
                node.boot(self.voters, create=True)
                self.checker.on_restart(node.id, node.raft)
                self.at(self.now + self.rng.randrange(node.tick_ms), TICK, node.id, node.gen)
                self.drive(node)
                self.rejoin_done = True
                return
            if not node.up:
                self.restart(node)
                if node.up:
                    self.fail(f"{node.id} lost its disk and still started as a voter")
            self.at(self.now, ADMIN, "rejoin")
            return
        if f.kind in ("crash", "power_loss"):
            node = self.nodes[f.nodes[0]]
            if not node.up and not any(
                g.kind in ("crash", "power_loss") and g.nodes == f.nodes and g.start < self.now
                < g.end for g in self.sc.faults
            ):
                self.restart(node)
            return
        self.active.pop(i, None)
        self._recompute()

    def restart(self, node: SimNode, join: bool = False) -> None:
        try:
            notes = node.boot(self.voters, join=join or node.id == self.spare)
        except RaftStartRefused as exc:
            if not node.wiped:
                self.fail(f"{node.id} refused to start although it kept its disk: {exc}")
            self.refusals += 1
            return
        self.notes.extend(f"{node.id}: {n}" for n in notes)
        self.checker.on_restart(node.id, node.raft)
        if self.locks is not None:
            self.locks.on_restart(node)
        self.at(self.now + self.rng.randrange(node.tick_ms), TICK, node.id, node.gen)
        self.drive(node)

    # ---- clients -----------------------------------------------------------------------------

    def schedule_client(self, c: Client) -> None:
        if self.now < self.ops_end:
            self.at(self.now + self.rng.randrange(1, 25), CLIENT, c.id)

    def session(self, c: Client) -> tuple[int, int, int]:
        # One command outstanding per client: everything before this seq was answered or
        # given up (a given-up command's result may be forgotten: a late copy of it is then
        # refused, never applied).
        return (c.client_id, c.seq, c.seq - 1)

    def register_step(self, c: Client) -> None:
        if c.registering or self.now >= self.ops_end:
            return
        target = self.nodes.get(c.hint) if c.hint else None
        if target is None or not target.up:
            target = self.nodes[self.rng.choice(sorted(self.nodes))]
        if not target.up:
            self.at(self.now + 10, CLIENT, c.id)
            return
        try:
            index = target.raft.propose(command(register=mpb.RegisterClient())
                                        .SerializeToString())
        except NotLeaderError as exc:
            c.hint = exc.leader
            self.at(self.now + 5, CLIENT, c.id)
            return
        except ProposalDroppedError:
            self.at(self.now + 10, CLIENT, c.id)
            return
        target.ops[index] = (target.raft.term, c)
        c.registering = True
        self.at(self.now + OP_TIMEOUT_MS, OP_TIMEOUT, c, "register")
        self.drive(target)

    def on_result(self, node: SimNode, e, res) -> None:
        """A committed command was applied on `node`: check exactly-once, answer a waiter."""
        if res is not None and e.data:
            cmd = mpb.MetaCommand.FromString(e.data)
            key = (cmd.session.client_id, cmd.session.seq)
            if cmd.session.client_id and res.code != mpb.META_SESSION_EXPIRED:
                first = self.first_applied.setdefault(key, e.index)
                if res.duplicate:
                    self.duplicates_answered += 1
                    if first >= e.index:
                        self.fail(f"{node.id}: command {key} answered as a duplicate at "
                                  f"{e.index} but first applied at {first}")
                elif first != e.index:
                    self.fail(f"{node.id}: command {key} applied twice: at {first} and "
                              f"{e.index}")
        w = node.ops.pop(e.index, None)
        if w is None or res is None or e.term != w[0]:
            return  # not ours, or our entry was replaced by another term's (never applied)
        who = w[1]
        if isinstance(who, Client):
            if not who.client_id:
                who.client_id = res.client_id
                who.registering = False
                self.schedule_client(who)
            return
        op = who
        if res.code == mpb.META_SESSION_EXPIRED:
            return  # outcome unknown: stays indeterminate (the client times out)
        if op.kind in LOCK_KINDS:
            if self.clients[op.client].op is op and not op.known:
                self.resolve(op, self.locks.result(op, res))
            return
        self.resolve(op, res.code == mpb.META_OK if op.kind == "cas" else None)

    def client_step(self, c: Client) -> None:
        if not c.client_id:
            self.register_step(c)
            return
        if c.op is None and c.lock:
            if self.now >= self.ops_end:
                return
            c.seq += 1
            nxt = self.locks.next_op(c)
            if nxt is None:
                self.at(self.now + 10, CLIENT, c.id)
                return
            c.attempts = 0
            c.rid = f"c{c.id}-{c.seq}"
            c.op, c.cmd = nxt
            self.history.append(c.op)
            self.locks.sent(c, c.op)
            self.at(self.now + OP_TIMEOUT_MS, OP_TIMEOUT, c, c.op)
        if c.op is None:
            if self.now >= self.ops_end:
                return
            c.attempts = 0
            r = self.rng
            key = f"k{r.randrange(self.sc.keys)}"
            c.seq += 1
            c.rid = f"c{c.id}-{c.seq}"
            roll = r.random()
            if roll < 0.3:
                op = Op(c.id, key, "get", (), self.now)
                c.cmd = b""
            elif roll < 0.6:
                val = f"v{c.id}.{c.seq}"
                op = Op(c.id, key, "put", (val,), self.now)
                c.cmd = encode_put(key, val, self.session(c))
            else:
                seen = [o.arg[0] for o in self.history[-8:] if o.kind == "put" and o.key == key]
                exp = r.choice([*seen, None])
                new = f"v{c.id}.{c.seq}"
                op = Op(c.id, key, "cas", (exp, new), self.now)
                c.cmd = encode_cas(key, exp, new, self.session(c))
            c.op = op
            self.history.append(op)
            self.at(self.now + OP_TIMEOUT_MS, OP_TIMEOUT, c, op)
        op = c.op
        target = self.nodes.get(c.hint) if c.hint else None
        if target is None or not target.up:
            target = self.nodes[self.rng.choice(sorted(self.nodes))]
        if not target.up:
            self.at(self.now + 10, CLIENT, c.id)
            return
        try:
            if op.kind in ("get", "wait"):
                ctx = c.rid.encode()
                target.raft.read_index(ctx)
                target.reads[ctx] = op
            else:
                index = target.raft.propose(c.cmd)
                target.ops[index] = (target.raft.term, op)
                if self.rng.random() < self.sc.dup_cmd:  # the same command a second time
                    index = target.raft.propose(c.cmd)
                    target.ops[index] = (target.raft.term, op)
            c.hint = target.id
        except NotLeaderError as exc:
            c.hint = exc.leader
            self.at(self.now + 5, CLIENT, c.id)
            return
        except ProposalDroppedError:
            self.at(self.now + 10, CLIENT, c.id)
            return
        self.drive(target)

    def resolve(self, op: Op, result) -> None:
        if op.known or op.ret != math.inf:
            return
        client = self.clients[op.client]
        if client.op is not op:
            return  # it timed out already: stays indeterminate
        op.ret = self.now
        op.result = result
        op.known = True
        client.op = None
        self.schedule_client(client)

    # ---- membership --------------------------------------------------------------------------

    def admin_step(self) -> None:
        lead = self.leader()
        if lead is None:
            self.at(self.now + 50, ADMIN)
            return
        conf = lead.raft.conf
        if self.spare not in conf.members():
            cc = ConfChange(ConfChangeType.ADD_LEARNER, self.spare)
        elif self.spare in conf.learners:
            cc = ConfChange(ConfChangeType.ADD_VOTER, self.spare)
        elif self.victim in conf.members():
            cc = ConfChange(ConfChangeType.REMOVE, self.victim)
        else:
            self.admin_done = True
            return
        try:
            lead.raft.propose_conf_change(cc)
        except (ConfChangeError, NotLeaderError, ProposalDroppedError):
            pass
        self.drive(lead)
        self.at(self.now + 50, ADMIN)

    def rejoin_step(self) -> None:
        """The way back for the wiped voter: remove it, start it with --raft-join, add it
        as a learner, promote it (one change at a time, retried every 50 ms)."""
        node = self.nodes[self.rejoin]
        lead = self.leader()
        if lead is None:
            self.at(self.now + 50, ADMIN, "rejoin")
            return
        conf = lead.raft.conf  # the leader's applied configuration
        cc = None
        if node.wiped and node.id in conf.members():
            cc = ConfChange(ConfChangeType.REMOVE, node.id)
        elif node.wiped:  # removed: start it as a joining member
            node.wiped = False
            self.restart(node, join=True)
            if not node.up or not node.raft.joining:
                self.fail(f"{node.id} did not start as a joining member")
        elif node.id not in conf.members():
            cc = ConfChange(ConfChangeType.ADD_LEARNER, node.id)
        elif node.id in conf.learners:
            cc = ConfChange(ConfChangeType.ADD_VOTER, node.id)
        elif node.up and not node.raft.joining:
            self.rejoin_done = True
            return
        if cc is not None:
            with contextlib.suppress(ConfChangeError, NotLeaderError, ProposalDroppedError):
                lead.raft.propose_conf_change(cc)
            self.drive(lead)
        self.at(self.now + 50, ADMIN, "rejoin")

    # ---- liveness and convergence ------------------------------------------------------------

    def stable_leader(self) -> SimNode | None:
        lead = self.leader()
        if lead is None or not lead.raft._committed_in_term():
            return None
        voters = lead.raft.conf.voters
        following = sum(1 for v in voters if v in self.nodes and self.nodes[v].up
                        and self.nodes[v].raft.term == lead.raft.term
                        and self.nodes[v].raft.lead == lead.id)
        return lead if following >= len(voters) // 2 + 1 else None

    def check_progress(self) -> None:
        if self.now == self.sc.heal_at:
            for node in self.nodes.values():  # make sure every node is up after the heal
                if not node.up:
                    self.restart(node)
        lead = self.stable_leader()
        if self.elect_after_heal == -2:
            if lead is not None:
                self.elect_after_heal = self.now - self.sc.heal_at
            elif self.now - self.sc.heal_at > LIVENESS_BOUND_TIMEOUTS * ELECTION_MS:
                self.fail(f"no stable leader {LIVENESS_BOUND_TIMEOUTS} election timeouts "
                          f"after the heal; {self.stuck_report()}")
        if (
            lead is not None
            and self.now >= self.ops_end
            and self.admin_done
            and self.rejoin_done
            and all(c.op is None for c in self.clients)
        ):
            members = lead.raft.conf.members()
            target = lead.raft.commit
            if all(
                self.nodes[m].up and self.nodes[m].sm.applied == target
                and self.nodes[m].pending is None for m in members if m in self.nodes
            ):
                datas = {m: self.nodes[m].sm.data for m in members if m in self.nodes}
                first = next(iter(datas.values()))
                for m, d in datas.items():
                    if d != first:
                        self.fail(f"replicas diverged: {lead.id}={first} {m}={d}")
                self.done = True
                return
        self.at(self.now + 10, CHECK)

    def stuck_report(self) -> str:
        parts = []
        for n in self.nodes.values():
            s = n.raft.status()
            parts.append(f"{n.id}:{'up' if n.up else 'down'} {s.role.value} t={s.term} "
                         f"lead={s.leader} commit={s.commit} applied={s.applied} "
                         f"last={s.last_index} voters={sorted(s.conf.voters)}")
        return "; ".join(parts)

    def finish(self) -> Result:
        ok, key = check_history(self.history, {LOCK_KEY: (lock_step, LOCK_INIT)})
        if ok and self.locks is not None and (why := self.locks.check()):
            raise SimFailure(why)
        if not ok:
            ops = [o.describe() for o in self.history if o.key == key]
            raise SimFailure(f"history for key {key} is not linearizable:\n  " + "\n  ".join(ops))
        return Result(
            scenario=self.sc,
            ops=len(self.history),
            indeterminate=sum(1 for o in self.history if not o.known),
            elect_after_heal_ms=self.elect_after_heal if self.elect_after_heal > 0 else -1
            if self.elect_after_heal == 0 else self.elect_after_heal,
            end_ms=self.now,
            events=self.events,
            elections=len(self.checker.leaders),
            max_term=max(n.raft.term for n in self.nodes.values()),
            messages=self.messages,
            crashes=self.crashes,
            snapshots_sent=self.snapshots_sent,
            notes=self.notes,
            refusals=self.refusals,
            retries=self.retries,
            duplicates_answered=self.duplicates_answered,
        )


def run_seed(seed: int, long: bool = False, encode: bool = True, wipe: bool = False
             ) -> Result:
    """Run one seed; raise SimFailure (with the scenario) if anything is violated."""
    sc = Scenario.from_seed(seed, long, wipe)
    try:
        return Simulation(sc, encode=encode).run()
    except SimFailure as exc:
        raise SimFailure(f"{exc}\nscenario: {sc.describe()}") from None
