"""The data-path simulator: production `Node`s (coordinators, replicas, gossip, hinted
handoff, read repair, anti-entropy, tombstone purge) over the in-memory network, in
virtual time, driven by a random workload and random faults that one seed derives.

A run: start the cluster; clients issue reads (some at each level), blind writes,
read-modify-writes, deletes and re-creates after deletes (in some seeds many of them
guarded by fencing tokens that clients hold, some stale) while faults come and go
(partitions, one-way cuts, flapping links, loss, duplication, delay and reordering,
crashes, restarts, a disk lost, a record lost or corrupted, per-node clock skew, purges
with a short grace period racing hinted handoff); then every fault stops, crashed nodes
restart, handoff and repeated anti-entropy run until the replicas agree (or a bound
passes), every key is read at ALL through each of its replicas, and `checker.check`
judges the history. Nothing sleeps for real: a run of a simulated minute costs a few
tens of milliseconds of CPU.

Determinism: everything random comes from the seed (scenario, workload, network, each
node's generator), time is the loop's virtual clock (each node's wall clock is it plus
its skew), and `History.digest()` of a run is identical every time the seed runs.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass, field

from simkit import vtime
from simkit.cluster import SimCluster

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import common_pb2
from kvstore.core import versions
from kvstore.storage.engine import CorruptRecordError

from .checker import Report, Violation, check
from .history import FAILED, OK, UNKNOWN, Copy, History, Loss, Op, Refusal

N = 3

# ---- the strict / sloppy choice, in one place ---------------------------------------------
# How a write asks for its quorum, and whether that promises read-your-writes (R + W > N).
# Strict is the default: only the key's own replicas count towards W; `sloppy` (PutRequest
# field 6, DeleteRequest field 5) counts hints on fallback nodes, and so does level ANY.
# (Before strict became the default, "default" counted hints: known bug
# "sloppy_by_default", found by this simulator, fixed.) Whether a hint counted is read from
# the trace (`ReplicaTrace.counted`).
WRITE_MODES: dict[str, dict] = {
    "strict": {"fields": {"strict": True}, "ryw": True},
    "default": {"fields": {}, "ryw": True},   # what the README promises R + W > N for
    "sloppy": {"fields": {"sloppy": True}, "ryw": False},
}
ANY_CHANCE = 0.25  # of a sloppy write: at level ANY (W=1, a hint alone may count)

# ---- fencing ------------------------------------------------------------------------------
# In FENCING_SEEDS of the seeds, a share of the strict and default writes is guarded
# (`--fence LOCK:TOKEN`) by a token its client holds. A client acquires a lock (the next
# token of a counter standing in for the lock service) at its first guarded write and
# again now and then, so the other holders' tokens go stale without their knowing, and
# again after a refusal, sometimes. Drawn from their own generators: the other seeds'
# histories are the same as without fencing.
FENCING_SEEDS = 0.4
FENCE_SHARES = (0.3, 0.6, 0.9)
FENCE_LOCKS = ("L", "L", "L", "M")
REACQUIRE = 0.2           # before a guarded write: take the lock again (a new token)
REACQUIRE_FENCED = 0.5    # after a refusal

READ_LEVELS = (("ONE", cpb.ONE, 0), ("QUORUM", cpb.QUORUM, 0), ("ALL", cpb.ALL, 0),
               ("R=2", 0, 2))
WRITE_LEVELS = (("ONE", cpb.ONE, 0), ("QUORUM", cpb.QUORUM, 0), ("ALL", cpb.ALL, 0),
                ("W=2", 0, 2))
NEED = {"ONE": 1, "QUORUM": N // 2 + 1, "ALL": N, "R=2": 2, "W=2": 2, "ANY": 1}

# crashes are drawn twice as often as the other kinds
FAULT_KINDS = ("partition", "asym", "flap", "crash", "disk_loss", "record_loss", "corrupt",
               "loss", "dup", "delay", "crash")
SETTLE_BOUND_S = 60.0    # after the heal: until every node sees every other up
HINTS_BOUND_S = 30.0     # per repair round: until the hint stores are empty
REPAIR_ROUNDS = 40       # anti-entropy from every node, until the replicas agree ...
STABLE_ROUNDS = 3        # ... or their copies stop changing (and no purge is pending)
VIRTUAL_LIMIT_S = 900.0  # beyond the window: a run that takes longer is stuck (it raises)


@dataclass
class Fault:
    kind: str
    start: int                   # virtual ms
    end: int
    nodes: tuple[str, ...] = ()  # the cut-off group / the crashed node / the damaged replica
    key: str = ""                # record_loss / corrupt
    period: int = 0              # flap
    amount: float = 0.0          # loss / dup probability, delay seconds
    outward: bool = True         # asym: the group cannot send (else: cannot receive)

    def describe(self) -> str:
        who = ",".join(self.nodes)
        extra = ""
        if self.kind == "asym":
            extra = " out" if self.outward else " in"
        if self.period:
            extra += f" every {self.period}ms"
        if self.amount:
            extra += f" {self.amount:g}"
        if self.key:
            extra += f" {self.key}"
        span = f"@{self.start}" if self.start == self.end else f"@{self.start}-{self.end}"
        return f"{self.kind}({who}{extra}){span}"


@dataclass
class Scenario:
    seed: int
    long: bool
    nodes: int
    keys: int
    clients: int
    ops: int
    window_ms: int
    timeout_ms: int
    read_all_chance: float
    hinted_handoff: bool
    purge: bool
    grace_ms: int
    antientropy_s: float
    jitter: float
    skew_ms: tuple[int, ...]
    faults: list[Fault]
    modes: tuple[float, float]   # cumulative chance of strict, of strict-or-default
    think_ms: int
    skew_allowance_ms: int = 60_000          # NodeConfig.max_clock_skew_ms
    hint_max_age_ms: int = 3 * 3600 * 1000   # NodeConfig.hint_max_age_ms
    fencing: float = 0.0                     # share of strict/default writes guarded

    @classmethod
    def from_seed(cls, seed: int, long: bool = False) -> Scenario:
        r = random.Random(f"datapath-{seed}")
        nodes = r.choice((4, 5, 6, 7)) if long else r.choice((3, 4, 4, 5))
        ids = [f"n{i + 1}" for i in range(nodes)]
        keys = r.randint(2, 8) if long else r.randint(1, 4)
        window = r.randrange(30_000, 90_000) if long else r.randrange(6_000, 16_000)
        purge = r.random() < 0.5
        faults = []
        for _ in range(r.randint(2, 12) if long else r.randint(0, 5)):
            kind = r.choice(FAULT_KINDS)
            start = r.randrange(0, window)
            end = min(window, start + r.randrange(300, 8_000))
            f = Fault(kind, start, end)
            if kind in ("partition", "asym", "flap"):
                f.nodes = tuple(sorted(r.sample(ids, r.randint(1, nodes - 1))))
                f.period = r.randrange(100, 1_500) if kind == "flap" else 0
                f.outward = r.random() < 0.5
            elif kind in ("crash", "disk_loss"):
                f.nodes = (r.choice(ids),)
            elif kind in ("record_loss", "corrupt"):
                f.nodes = (r.choice(ids),)
                f.key = f"k{r.randrange(keys)}"
                f.end = f.start
            elif kind == "loss":
                f.amount = r.choice((0.05, 0.2, 0.5))
            elif kind == "dup":
                f.amount = r.choice((0.05, 0.3))
            elif kind == "delay":
                f.amount = r.choice((0.05, 0.2, 0.6))
            faults.append(f)
        faults.sort(key=lambda f: (f.start, f.kind))
        strict = r.choice((0.3, 0.5, 0.7))
        skewed = r.random() < 0.5
        sc = cls(
            seed=seed, long=long, nodes=nodes, keys=keys,
            clients=r.randint(2, 6) if long else r.randint(2, 5),
            ops=r.randint(150, 400) if long else r.randint(40, 100),
            window_ms=window,
            timeout_ms=r.choice((300, 500, 1000)),
            read_all_chance=r.choice((0.0, 0.1, 1.0)),
            hinted_handoff=r.random() < 0.85,
            purge=purge,
            grace_ms=r.choice((1_000, 3_000, 8_000)) if purge else 10 * 24 * 3600 * 1000,
            antientropy_s=r.choice((1.0, 2.0, 5.0)) if purge else r.choice((0.0, 3.0, 10.0)),
            jitter=r.choice((0.0, 0.002, 0.02)),
            skew_ms=tuple(r.choice((0, 0, 100, -100, 2_000, -2_000, 20_000, -20_000))
                          if skewed else 0 for _ in ids),
            faults=faults,
            modes=(strict, strict + (1 - strict) * r.choice((0.3, 0.6))),
            think_ms=0,  # set below: the operations spread over the window
        )
        # each client's mean pause is what spreads its share of the operations (an RMW
        # counts two) over the window; bursty: uniform from 1 ms to twice the mean
        sc.think_ms = max(2, int(sc.window_ms * sc.clients / sc.ops * 1.3 * 2))
        if purge:
            # Settings the node accepts (tombstones.check_settings): the skew allowance
            # below half the grace period, hints expiring before grace minus the allowance,
            # and the clocks within the allowance of each other. (Drawn apart, so that the
            # rest of a seed's scenario does not depend on them.)
            p = random.Random(f"datapath-{seed}-settings")
            sc.skew_allowance_ms = p.choice((sc.grace_ms // 8, sc.grace_ms // 4))
            sc.hint_max_age_ms = p.randrange(sc.grace_ms // 4, sc.grace_ms - sc.skew_allowance_ms)
            bound = sc.skew_allowance_ms // 2
            sc.skew_ms = tuple(max(-bound, min(bound, s)) for s in sc.skew_ms)
        f = random.Random(f"datapath-{seed}-fencing")
        if f.random() < FENCING_SEEDS:
            sc.fencing = f.choice(FENCE_SHARES)
        return sc

    def describe(self) -> str:
        skew = ",".join(f"n{i + 1}{s:+d}" for i, s in enumerate(self.skew_ms) if s)
        purge = (f"purge(grace={self.grace_ms}ms skew_allowance={self.skew_allowance_ms}ms "
                 f"hint_age={self.hint_max_age_ms}ms)" if self.purge else "no-purge")
        return (
            f"seed={self.seed}{' long' if self.long else ''} nodes={self.nodes} N={N} "
            f"keys={self.keys} clients={self.clients} ops={self.ops} "
            f"window={self.window_ms}ms timeout={self.timeout_ms}ms "
            f"read_all={self.read_all_chance} handoff={'on' if self.hinted_handoff else 'off'} "
            f"{purge} antientropy={self.antientropy_s:g}s jitter={self.jitter * 1000:g}ms "
            f"skew=[{skew}] modes(strict<{self.modes[0]:.2f},default<{self.modes[1]:.2f}) "
            + (f"fencing={self.fencing:g} " if self.fencing else "")
            + f"think<={self.think_ms}ms faults=[{' '.join(f.describe() for f in self.faults)}]"
        )


@dataclass
class Result:
    scenario: Scenario
    history: History
    report: Report
    reused_dots: dict[str, int]            # key -> dots minted more than once
    explained: list[tuple[Violation, str | None]]  # each violation and its known cause
    digest: str
    virtual_ms: int
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok


# ---- known bugs --------------------------------------------------------------------------
# Causes of violations the simulator found, and how it recognises each (evidence the run
# collects beside the history; the checker itself knows nothing of them). All four were
# found on the code before per-key actor epochs and purge markers; test_datapath_sim's
# KNOWN_BUGS lists those still open:
#   doomstone           a replica minted a dot it had minted before for the key (after a
#                       purge, a lost disk or a dropped corrupted record; Riak KV679)
#   sloppy_by_default   read-your-writes broken for a write that set no flag, whose W was
#                       reached with a hint (hints count unless `strict` is set)
#   guard_refuses_live  the purge-watermark guard refused a live version nobody deleted
#   corrupt_tombstone_stuck
#                       a replica's corrupted record of a key whose good copies are only
#                       tombstones past their grace period, or nothing (purged), is never
#                       replaced: a merge of nothing leaves the damage in place (before purge
#                       markers, merges also refused such tombstones for a key "not held",
#                       and every anti-entropy session of that pair failed on it)
KNOWN_CAUSES = ("doomstone", "sloppy_by_default", "guard_refuses_live",
                "corrupt_tombstone_stuck")

CORRUPTED = "<corrupted record>"
# what a re-minted dot does: the new write counts as seen where the old one was superseded
DOOMSTONE_EFFECTS = ("lost_write", "read_your_writes", "resurrection", "siblings",
                     "convergence", "final_read")


def explain(history: History, report: Report, reused: dict[str, int]
            ) -> list[tuple[Violation, str | None]]:
    ops = {op.index: op for op in history.ops}
    guard_keys = {v.key for v in report.violations if v.invariant == "guard"}
    stuck = {k for k, copies in history.final.items()
             if any(c.signature == CORRUPTED for c in copies.values())
             and not any(c.ids for c in copies.values())}
    out: list[tuple[Violation, str | None]] = []
    for v in report.violations:
        cause: str | None = None
        if v.invariant == "guard":
            cause = "guard_refuses_live"
        elif v.key in reused and v.invariant in DOOMSTONE_EFFECTS:
            cause = "doomstone"
        elif v.invariant == "read_your_writes" and ops[v.ops[0]].mode == "default" \
                and ops[v.ops[0]].hinted:
            cause = "sloppy_by_default"
        elif v.key in guard_keys:  # a replica that refused a version misses what follows
            cause = "guard_refuses_live"
        elif v.invariant == "convergence" and stuck and (
                v.key in stuck or not any(c.ids for c in history.final[v.key].values())):
            cause = "corrupt_tombstone_stuck"
        out.append((v, cause))
    return out


# ---- the run -----------------------------------------------------------------------------


class Simulation:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(f"workload-{sc.seed}")
        self.keys = [f"k{i}" for i in range(sc.keys)]
        self.ops: list[Op] = []
        self.losses: list[Loss] = []
        self.refusals: list[Refusal] = []
        self.errors: list[tuple[int, str]] = []
        self.mints: dict[tuple[str, tuple], int] = defaultdict(int)
        self.next_id = 0
        self.issued = 0
        self.kills: dict[str, int] = defaultdict(int)
        self.calls: dict[str, dict[asyncio.Task, None]] = defaultdict(dict)  # ordered
        self.crash_depth: dict[str, int] = defaultdict(int)
        self.lose_disk: dict[str, bool] = defaultdict(bool)
        self.active: dict[int, Fault] = {}
        self.flap_on: set[int] = set()
        self.stats: dict[str, int] = defaultdict(int)
        self.tasks: set[asyncio.Task] = set()
        self.t0 = self.heal_at = 0  # virtual ms: the workload's start, the heal
        # fencing: its own generator; the lock service's last token per lock, and the
        # token each client holds (it may be stale)
        self.frng = random.Random(f"fencing-{sc.seed}")
        self.grants: dict[str, int] = defaultdict(int)
        self.held: dict[tuple[int, str], int] = {}
        # hot and cold keys: cold ones stay deleted long enough for tombstones to be purged
        self.weights = [1 / (i + 1) for i in range(sc.keys)]
        self.c: SimCluster

    # -- clock and ids ---------------------------------------------------------------------
    def now(self) -> int:
        return round(asyncio.get_running_loop().time() * 1000)

    def rel(self) -> int:
        """Virtual ms since the workload started: the history's time scale."""
        return self.now() - self.t0

    def new_id(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id}"

    # -- observers -------------------------------------------------------------------------
    def on_mint(self, node: str, key: bytes, sibling: versions.Sibling) -> None:
        self.mints[(key.decode(), sibling.dot)] += 1

    def on_hint_dropped(self, node: str, key: bytes, reason: str) -> None:
        # the fallback's copy of a sloppy write is gone (hints expire, by design)
        self.losses.append(Loss(self.rel(), node, f"hint_{reason}", key.decode()))

    def on_refused(self, node: str, key: bytes, refused: list[versions.Sibling]) -> None:
        ids = tuple(s.value.decode() for s in refused if not s.tombstone)
        if ids:
            self.refusals.append(Refusal(self.rel(), node, key.decode(), ids))

    # -- main ------------------------------------------------------------------------------
    async def main(self) -> History:
        sc = self.sc
        c = SimCluster(
            sc.nodes, seed=sc.seed, replication_factor=N, timeout_ms=sc.timeout_ms, vnodes=8,
            read_all_chance=sc.read_all_chance, hinted_handoff=sc.hinted_handoff,
            antientropy_interval=sc.antientropy_s, tombstone_grace_ms=sc.grace_ms,
            max_clock_skew_ms=sc.skew_allowance_ms, hint_max_age_ms=sc.hint_max_age_ms,
        )
        self.c = c
        c.network.faults.jitter = sc.jitter
        for i, skew in enumerate(sc.skew_ms):
            c.skew_ms[f"n{i + 1}"] = skew
        c.on_mint, c.on_refused = self.on_mint, self.on_refused
        c.on_hint_dropped = self.on_hint_dropped
        await c.start()
        self.t0 = self.now()
        try:
            faults = asyncio.ensure_future(self.run_faults())
            clients = [asyncio.ensure_future(self.client(i)) for i in range(sc.clients)]
            await asyncio.gather(*clients)
            await faults
            converged = await self.heal_and_repair()
            final = self.snapshot()
            await self.final_reads()
        finally:
            for node in sorted(c.down):
                await c.revive(node)
            for node in c.ids:
                self.collect(node)
            await c.stop()
        replicas = {k: tuple(c.replicas(k.encode())) for k in self.keys}
        return History(n=N, replicas=replicas, ops=self.ops, losses=self.losses,
                       refusals=self.refusals, final=final, converged=converged,
                       errors=self.errors)

    # -- faults ----------------------------------------------------------------------------
    async def run_faults(self) -> None:
        events: list[tuple[int, int, int, bool]] = []  # (time, order, fault index, on)
        for i, f in enumerate(self.sc.faults):
            events.append((f.start, 1, i, True))
            if f.end > f.start:
                events.append((f.end, 0, i, False))
        events.sort()
        for at, _, i, on in events:
            delay = (self.t0 + at - self.now()) / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            await (self.fault_on(i) if on else self.fault_off(i))

    async def fault_on(self, i: int) -> None:
        f = self.sc.faults[i]
        c = self.c
        if f.kind in ("crash", "disk_loss"):
            node = f.nodes[0]
            self.crash_depth[node] += 1
            if f.kind == "disk_loss":
                self.lose_disk[node] = True
                self.losses.append(Loss(self.rel(), node, "disk_loss"))
            if node not in c.down:
                self.kill(node)
            return
        if f.kind in ("record_loss", "corrupt"):
            node = f.nodes[0]
            if node in c.down:
                return
            key = f.key.encode()
            done = (c.lose_record(node, key) if f.kind == "record_loss"
                    else c.corrupt_record(node, key))
            if done:
                self.losses.append(Loss(self.rel(), node, f.kind, f.key))
            return
        self.active[i] = f
        if f.kind == "flap":
            self.flap_on.add(i)
            self.tasks.add(asyncio.ensure_future(self.flap(i)))
        self.apply_network()

    async def flap(self, i: int) -> None:
        f = self.sc.faults[i]
        while True:
            await asyncio.sleep(f.period / 1000)
            if i not in self.active:
                return
            self.flap_on ^= {i}
            self.apply_network()

    async def fault_off(self, i: int) -> None:
        f = self.sc.faults[i]
        if f.kind in ("crash", "disk_loss"):
            node = f.nodes[0]
            self.crash_depth[node] -= 1
            if self.crash_depth[node] == 0 and node in self.c.down:
                await self.revive(node)
            return
        self.active.pop(i, None)
        self.flap_on.discard(i)
        self.apply_network()

    def apply_network(self) -> None:
        faults = self.c.network.faults
        ids = self.c.ids
        blocked: set[tuple[str, str]] = set()
        drop = dup = 0.0
        delay, jitter = 0.0005, self.sc.jitter
        for i, f in self.active.items():
            if f.kind in ("partition", "flap", "asym"):
                if f.kind == "flap" and i not in self.flap_on:
                    continue
                rest = [n for n in ids if n not in f.nodes]
                for a in f.nodes:
                    for b in rest:
                        if f.kind != "asym" or f.outward:
                            blocked.add((a, b))
                        if f.kind != "asym" or not f.outward:
                            blocked.add((b, a))
            elif f.kind == "loss":
                drop = max(drop, f.amount)
            elif f.kind == "dup":
                dup = max(dup, f.amount)
            elif f.kind == "delay":
                delay, jitter = max(delay, f.amount / 4), max(jitter, f.amount)
        faults.blocked = blocked
        faults.drop, faults.duplicate, faults.delay, faults.jitter = drop, dup, delay, jitter

    def collect(self, node: str) -> None:
        """Add a node's counters to the run's (before it is replaced)."""
        n = self.c.nodes[node]
        for name, metrics in (("purged", n.antientropy.metrics["tombstones_purged"]),
                              ("hints", n.handoff.metrics["stored"]),
                              ("handed_off", n.handoff.metrics["delivered"])):
            self.stats[name] += metrics

    def kill(self, node: str) -> None:
        self.collect(node)
        self.kills[node] += 1
        self.stats["crashes"] += 1
        for task in list(self.calls[node]):
            task.cancel()
        self.c.kill(node)

    async def revive(self, node: str) -> None:
        lose = self.lose_disk.pop(node, False)
        await self.c.revive(node, lose_disk=lose)

    # -- clients ---------------------------------------------------------------------------
    def live_nodes(self) -> list[str]:
        return [n for n in self.c.ids if n not in self.c.down]

    async def client(self, cid: int) -> None:
        r = self.rng
        sc = self.sc
        recreate: str | None = None
        while self.issued < sc.ops and self.now() - self.t0 < sc.window_ms:
            await asyncio.sleep(r.randrange(1, sc.think_ms + 1) / 1000)
            key = recreate or r.choices(self.keys, self.weights)[0]
            roll = r.random()
            if recreate is not None:
                kind = "rmw" if roll < 0.5 else "blind"
                recreate = None
            elif roll < 0.35:
                kind = "get"
            elif roll < 0.5:
                kind = "blind"
            elif roll < 0.8:
                kind = "rmw"
            else:
                kind = "delete"
            if kind == "get":
                await self.read(cid, key, self.read_level())
                continue
            if kind == "blind":
                await self.write(cid, key, (), b"", self.write_level(), self.mode())
                continue
            got = await self.read(cid, key, self.read_level())
            if got is None:
                continue
            ids, context = got
            if r.random() < 0.3:  # a slow read-modify-write: others may write meanwhile
                await asyncio.sleep(r.randrange(0, 1500) / 1000)
            if kind == "rmw":
                await self.write(cid, key, ids, context, self.write_level(), self.mode())
            elif ids or r.random() < 0.3:
                ok = await self.write(cid, key, ids, context, self.write_level(), self.mode(),
                                      delete=True)
                if ok and r.random() < 0.6:
                    # re-create it later: soon, or once its tombstone may have been purged
                    recreate = key
                    later = sc.grace_ms + 3000 if sc.purge else 3000
                    await asyncio.sleep(r.randrange(0, later) / 1000)

    def fence(self, cid: int, mode: str) -> tuple[str, int]:
        """The (lock, token) to guard a write with; ("", 0): not guarded. Only strict and
        default writes are guarded (a guarded write is always strict)."""
        if not self.sc.fencing or mode == "sloppy" or self.frng.random() >= self.sc.fencing:
            return "", 0
        lock = self.frng.choice(FENCE_LOCKS)
        if (cid, lock) not in self.held or self.frng.random() < REACQUIRE:
            self.grants[lock] += self.frng.randint(1, 3)   # a new grant: a higher token
            self.held[cid, lock] = self.grants[lock]
        self.stats["fenced_writes"] += 1
        return lock, self.held[cid, lock]

    def read_level(self) -> tuple[str, int, int]:
        return self.rng.choice(READ_LEVELS)

    def write_level(self) -> tuple[str, int, int]:
        return self.rng.choice(WRITE_LEVELS)

    def mode(self) -> str:
        x = self.rng.random()
        return "strict" if x < self.sc.modes[0] else "default" if x < self.sc.modes[1] \
            else "sloppy"

    async def call(self, node: str, request: cpb.ClientRequest) -> cpb.ClientReply | None:
        """One request through `node`; None when the node crashed while handling it."""
        kills = self.kills[node]
        task = asyncio.ensure_future(self.c.request(node, request))
        self.calls[node][task] = None
        try:
            reply = await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return None
        finally:
            self.calls[node].pop(task, None)
        return reply if self.kills[node] == kills else None

    async def read(self, cid: int, key: str, level: tuple[str, int, int], *,
                   via: str | None = None, final: bool = False
                   ) -> tuple[tuple[str, ...], bytes] | None:
        nodes = self.live_nodes()
        if not nodes:
            return None
        node = via or self.rng.choice(nodes)
        name, lvl, count = level
        self.issued += 1
        start = self.now()
        reply = await self.call(node, cpb.ClientRequest(get=cpb.GetRequest(
            key=key.encode(), quorum=cpb.Quorum(level=lvl, count=count))))
        end = self.now()
        base = dict(index=len(self.ops), client=cid, kind="get", key=key, node=node,
                    start=start - self.t0, end=end - self.t0, need=NEED[name], level=name,
                    final=final)
        if reply is None or not reply.HasField("get"):
            error = "coordinator crashed" if reply is None else reply.error.message
            self.ops.append(Op(**base, result=UNKNOWN if reply is None else FAILED,
                               error=error))
            return None
        ids = tuple(s.value.decode() for s in reply.get.siblings)
        self.ops.append(Op(**base, returned=ids))
        return ids, reply.get.context

    async def write(self, cid: int, key: str, seen: tuple[str, ...], context: bytes,
                    level: tuple[str, int, int], mode: str, *, delete: bool = False) -> bool:
        nodes = self.live_nodes()
        if not nodes:
            return False
        node = self.rng.choice(nodes)
        if mode == "sloppy" and self.rng.random() < ANY_CHANCE:
            level = ("ANY", cpb.ANY, 0)
        name, lvl, count = level
        wid = self.new_id("d" if delete else "w")
        quorum = cpb.Quorum(level=lvl, count=count)
        flags = dict(WRITE_MODES[mode]["fields"])
        lock, token = self.fence(cid, mode)
        if token:
            flags["fence"] = common_pb2.Fence(lock=lock, token=token)
        if delete:
            request = cpb.ClientRequest(delete=cpb.DeleteRequest(
                key=key.encode(), context=context, quorum=quorum, **flags), trace=True)
        else:
            request = cpb.ClientRequest(put=cpb.PutRequest(
                key=key.encode(), value=wid.encode(), context=context, quorum=quorum,
                **flags), trace=True)
        self.issued += 1
        start = self.now()
        reply = await self.call(node, request)
        end = self.now()
        base = dict(index=len(self.ops), client=cid, kind="delete" if delete else "put",
                    key=key, node=node, start=start - self.t0, end=end - self.t0,
                    need=NEED[name], level=name, id=wid, seen=seen, mode=mode,
                    ryw=WRITE_MODES[mode]["ryw"] and name != "ANY", lock=lock, token=token)
        if reply is None:
            self.ops.append(Op(**base, result=UNKNOWN, error="coordinator crashed"))
            return False
        if reply.HasField("error"):
            self.ops.append(Op(**base, result=_write_outcome(reply.error),
                               error=reply.error.message))
            if reply.error.code == common_pb2.FENCED:
                self.stats["fenced_refused"] += 1
                if self.frng.random() < REACQUIRE_FENCED:
                    self.held.pop((cid, lock), None)  # it lost the lock: take it again
            return False
        holders: list[str] = []
        hints: list[str] = []
        hinted = False
        for rep in reply.trace.replicas:
            if rep.ok:
                if rep.node not in holders:
                    holders.append(rep.node)
                if rep.hint_for:
                    hints.append(rep.node)
                    hinted = hinted or rep.counted
        self.ops.append(Op(**base, holders=tuple(holders), hinted=hinted,
                           hint_holders=tuple(hints)))
        return True

    # -- the end: heal, repair, read everything ---------------------------------------------
    async def heal_and_repair(self) -> bool:
        c = self.c
        loop = asyncio.get_running_loop()
        self.active.clear()
        self.flap_on.clear()
        self.apply_network()
        for node in sorted(c.down):
            await self.revive(node)
        self.heal_at = self.now()
        deadline = loop.time() + SETTLE_BOUND_S
        while loop.time() < deadline and not all(
                c.nodes[a].membership.ready and c.nodes[a].membership.is_up(b)
                for a in c.ids for b in c.ids):
            await asyncio.sleep(0.25)
        # Repair until the replicas agree. A tombstone some replicas purged waits on the
        # others until their clocks (skewed) pass its grace period: allow for that.
        bound = loop.time() + SETTLE_BOUND_S + max(map(abs, self.sc.skew_ms)) / 1000 + (
            self.sc.grace_ms / 1000 if self.sc.purge else 0)
        last, stable = None, 0
        for _ in range(REPAIR_ROUNDS):
            deadline = loop.time() + HINTS_BOUND_S
            while loop.time() < deadline and self.hints_pending():
                await asyncio.sleep(0.25)
            for node in c.ids:
                try:
                    await c.nodes[node].antientropy.repair()
                except Exception as exc:  # repair reports failures in its result, never raises
                    self.errors.append((self.rel(), f"{node}: antientropy.repair() "
                                        f"raised {type(exc).__name__}: {exc}"))
            await c.settle()
            self.stats["repair_rounds"] += 1
            if not self.hints_pending() and self.agreed():
                return True
            state = self.snapshot()
            stable = stable + 1 if state == last else 0
            last = state
            if loop.time() > bound or (stable >= STABLE_ROUNDS and not self.purging(state)):
                return False
            await asyncio.sleep(1.0)
        return False

    def purging(self, state: dict[str, dict[str, Copy]]) -> bool:
        """Whether some key's replicas differ only in tombstones: some purged them, or hold
        a purge marker, that others have not (yet, by their own skewed clocks)."""
        return any(len({c.signature for c in copies.values()}) > 1
                   and len({tuple(sorted(c.ids)) for c in copies.values()}) == 1
                   for copies in state.values())

    def hints_pending(self) -> int:
        return sum(h.count() for h in self.c.hints.values())

    def copy(self, node: str, key: str) -> Copy:
        try:
            siblings = versions.decode(self.c.engines[node].get(key.encode()))
        except CorruptRecordError:
            return Copy(CORRUPTED, ())
        sig = repr(sorted((s.node, s.counter, s.tombstone, s.value) for s in siblings))
        shown = {s.dot for s in versions.live(siblings)}
        return Copy(sig, tuple(s.value.decode() for s in siblings if s.dot in shown),
                    tuple(s.value.decode() for s in siblings
                          if not s.tombstone and s.dot not in shown))

    def agreed(self) -> bool:
        for key in self.keys:
            sigs = {self.copy(n, key).signature for n in self.c.replicas(key.encode())}
            if len(sigs) > 1:
                return False
        return True

    def snapshot(self) -> dict[str, dict[str, Copy]]:
        return {k: {n: self.copy(n, k) for n in self.c.replicas(k.encode())} for k in self.keys}

    async def final_reads(self) -> None:
        for key in self.keys:
            for node in self.c.replicas(key.encode()):
                await self.read(-1, key, ("ALL", cpb.ALL, 0), via=node, final=True)


def _write_outcome(error: common_pb2.Error) -> str:
    """Failed (certainly not applied) or unknown (may have been applied)."""
    if error.code in (common_pb2.NOT_READY, common_pb2.INVALID_ARGUMENT, common_pb2.CORRUPTION):
        return FAILED  # refused before anything was minted
    if "nothing was written" in error.message:
        return FAILED
    return UNKNOWN


def run_seed(seed: int, long: bool = False) -> Result:
    """Run one seed and judge its history (violations are in the result, not raised)."""
    sc = Scenario.from_seed(seed, long)
    sim = Simulation(sc)
    limit = sc.window_ms / 1000 + VIRTUAL_LIMIT_S
    history = vtime.run(lambda: asyncio.wait_for(sim.main(), limit))
    report = check(history)
    reused: dict[str, int] = defaultdict(int)
    for (key, _dot), count in sim.mints.items():
        if count > 1:
            reused[key] += 1
    ops = [o for o in history.ops if not o.final]
    stats = dict(sim.stats)
    stats["fenced_out_final"] = sum(len(c.hidden) for copies in history.final.values()
                                    for c in copies.values())
    stats.update(ops=len(ops), writes=sum(1 for o in ops if o.kind != "get"),
                 acked=sum(1 for o in ops if o.kind != "get" and o.result == OK),
                 refusals=len(history.refusals), losses=len(history.losses))
    return Result(sc, history, report, dict(reused), explain(history, report, reused),
                  history.digest(), sim.heal_at - sim.t0, stats)
