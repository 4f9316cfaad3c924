"""Leases and locks in the Raft simulator (issue 11).

In a share of the seeds some clients are lock clients: each grants itself a lease, queues
for lock "L", waits (polling a linearizable read) until it holds it, keeps its lease alive
for a while - or pauses, as a stopped process does, and loses it - then releases it. The
leaders run the lease clock (`core.meta.LeaseClock`: expiry and checkpoints) on the
simulated clock, through the leader changes the faults cause.

Checked at the end:
* the lock/lease history is linearizable against a sequential model of a FIFO lock on
  leases with growing fencing tokens (Wing & Gong / Lowe, the register checker's search);
* a lease never ends early from its holder's point of view: every lease end is applied no
  earlier than (send time of any acknowledged grant or keepalive) + TTL.
"""

from __future__ import annotations

from typing import Any

from kvstore._proto import meta_pb2 as mpb
from kvstore.core.meta import LeaseClock, command
from kvstore.core.raft import NotLeaderError, ProposalDroppedError

from .linearizability import Op

LOCK = "L"
LOCK_KEY = "lock:L"
TTL_MS = 120
CHECKPOINT_MS = 40
LOCK_KINDS = ("grant", "keepalive", "acquire", "wait", "release", "lease_end")


# ---- the sequential model ----------------------------------------------------------------

# state: (alive leases, holder, holder's token or None if not seen yet, waiters, last token)
INIT = (frozenset(), 0, None, (), 0)


def _pass_on(alive, waiters):
    for i, w in enumerate(waiters):
        if w in alive:
            return w, None, tuple(waiters[i + 1:])
    return 0, None, ()


def lock_step(state: Any, op: Op) -> tuple[bool, Any]:
    alive, holder, htok, waiters, last = state
    k, res, known = op.kind, op.result, op.known
    if k == "grant":
        if not known:
            return True, state  # nobody uses a lease whose grant was not answered
        return res not in alive, (alive | {res}, holder, htok, waiters, last)
    if k == "lease_end":
        (lease,) = op.arg
        if lease not in alive:
            return True, state  # granted by an unanswered grant
        alive = alive - {lease}
        waiters = tuple(w for w in waiters if w != lease)
        if holder == lease:
            holder, htok, waiters = _pass_on(alive, waiters)
        return True, (alive, holder, htok, waiters, last)
    (lease, *rest) = op.arg
    if k == "keepalive":
        return (not known or res == ("ok" if lease in alive else "no_lease")), state
    if k == "acquire":
        if lease not in alive:
            return (not known or res == ("no_lease",)), state
        if holder == lease:
            if not known:
                return True, state
            if res[0] != "granted" or res[1] != (htok if htok is not None else res[1]) or (
                    htok is None and res[1] <= last):
                return False, state
            return True, (alive, holder, res[1], waiters, max(last, res[1]))
        if holder == 0:
            if not known:
                return True, (alive, lease, None, waiters, last)
            if res[0] != "granted" or res[1] <= last:
                return False, state
            return True, (alive, lease, res[1], waiters, res[1])
        new = state if lease in waiters else (alive, holder, htok, (*waiters, lease), last)
        return (not known or res == ("queued",)), new
    if k == "wait":
        if not known:
            return True, state
        if holder == lease:
            if res[0] != "granted":
                return False, state
            if htok is None:
                return res[1] > last, (alive, holder, res[1], waiters, res[1])
            return res[1] == htok, state
        return res == (("queued",) if lease in waiters else ("gone",)), state
    if k == "release":
        (token,) = rest
        if holder == lease and htok is not None and token in (0, htok):
            h, t, w = _pass_on(alive, waiters)
            return (not known or res == "ok"), (alive, h, t, w, last)
        if lease in waiters:
            return (not known or res == "ok"), (alive, holder, htok,
                                                tuple(w for w in waiters if w != lease), last)
        return (not known or res == "not_holder"), state
    raise ValueError(f"unknown lock op {k}")


# ---- the workload ---------------------------------------------------------------------------

class LockWorkload:
    """Drives the lock clients of a Simulation (see sim.py's hooks)."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.clocks: dict[str, LeaseClock] = {}
        self.was_leader: dict[str, bool] = {}
        self.next_cp: dict[str, int] = {}
        self.expire_proposed: dict[int, int] = {}  # lease -> first time any leader proposed
        self.end_applied: dict[int, int] = {}  # lease -> time its end was first applied
        self.refreshes: dict[int, list[tuple[int, int]]] = {}  # lease -> [(sent, ttl)] acked
        self.state: dict[int, dict] = {}
        self.grants = self.ends = self.tokens = 0

    # -- leader side --

    def after_apply(self, node) -> None:
        raft = node.raft
        leader = raft.role.value == "leader"
        clock = self.clocks.setdefault(node.id, LeaseClock())
        if leader and not self.was_leader.get(node.id):
            clock.become_leader(node.sm, self.sim.now)
            self.next_cp[node.id] = 0
        elif not leader and self.was_leader.get(node.id):
            clock.step_down()
        self.was_leader[node.id] = leader
        if leader:
            clock.on_applied(node.sm, self.sim.now)

    def on_restart(self, node) -> None:
        self.was_leader[node.id] = False
        self.clocks[node.id] = LeaseClock()

    def tick(self, node) -> None:
        """A leader proposes expiries and checkpoints (as RaftDriver._lease_tick does)."""
        if node.raft.role.value != "leader" or not self.was_leader.get(node.id):
            return
        clock, now = self.clocks[node.id], self.sim.now
        for lease, refreshed in clock.expired(now):
            self.expire_proposed.setdefault(lease, now)
            self._propose(node, command(lease_expire=mpb.LeaseExpire(
                lease=lease, refreshed=refreshed)))
        if clock.deadlines and now >= self.next_cp.get(node.id, 0):
            self.next_cp[node.id] = now + CHECKPOINT_MS
            self._propose(node, command(lease_checkpoint=mpb.LeaseCheckpoint(
                as_of=node.sm.applied, leases=[mpb.LeaseRemaining(lease=i, remaining_ms=r)
                                               for i, r in clock.checkpoint(now)])))

    def _propose(self, node, cmd) -> None:
        try:
            node.raft.propose(cmd.SerializeToString())
        except (NotLeaderError, ProposalDroppedError):  # next tick
            pass

    def on_apply(self, node, e, res, leases_before: set[int]) -> None:
        """Record when a lease first ended (in any member's log order: the same entry)."""
        for lease in leases_before - set(node.sm.leases):
            if lease not in self.end_applied:
                self.end_applied[lease] = self.sim.now
                self.ends += 1
                self.sim.history.append(Op(-1, LOCK_KEY, "lease_end", (lease,),
                                           self.expire_proposed.get(lease, 0), self.sim.now,
                                           None, True))

    # -- client side --

    def next_op(self, c) -> tuple[Op, bytes] | None:
        """The lock client's next operation (None: nothing now, step again later)."""
        st = self.state.setdefault(c.id, {"lease": 0, "token": 0, "phase": "grant",
                                          "hold_until": 0, "ka_sent": 0, "pause_until": 0})
        sim, now, r = self.sim, self.sim.now, self.sim.rng
        if now < st["pause_until"]:
            return None
        lease = st["lease"]

        def cmd(**op):
            return command(sim.session(c), **op).SerializeToString()

        phase = st["phase"]
        if phase == "grant":
            return Op(c.id, LOCK_KEY, "grant", (), now), cmd(lease_grant=mpb.LeaseGrant(
                ttl_ms=TTL_MS))
        if phase in ("wait", "hold") and now - st["ka_sent"] >= TTL_MS // 3:
            return (Op(c.id, LOCK_KEY, "keepalive", (lease,), now),
                    cmd(lease_keepalive=mpb.LeaseKeepAlive(lease=lease)))
        if phase == "acquire":
            return (Op(c.id, LOCK_KEY, "acquire", (lease,), now),
                    cmd(lock_acquire=mpb.LockAcquire(name=LOCK, lease=lease)))
        if phase == "wait":
            return Op(c.id, LOCK_KEY, "wait", (lease,), now), b""
        if phase == "hold" and now >= st["hold_until"]:
            if r.random() < 0.25:  # a holder that stops, like a SIGSTOPped process
                st["pause_until"] = now + 2 * TTL_MS + r.randrange(200)
                st["phase"] = "keepalive_after_pause"
                return None
            return (Op(c.id, LOCK_KEY, "release", (lease, st["token"]), now),
                    cmd(lock_release=mpb.LockRelease(name=LOCK, lease=lease,
                                                      token=st["token"])))
        if phase == "keepalive_after_pause":
            return (Op(c.id, LOCK_KEY, "keepalive", (lease,), now),
                    cmd(lease_keepalive=mpb.LeaseKeepAlive(lease=lease)))
        return None

    def sent(self, c, op: Op) -> None:
        if op.kind == "keepalive":
            self.state[c.id]["ka_sent"] = self.sim.now

    def result(self, op: Op, res: mpb.MetaResult):
        """Map the state machine's answer to the model's result; advance the client."""
        st = self.state[op.client]
        code = res.code
        if op.kind == "grant":
            st.update(lease=res.lease.id, phase="acquire", ka_sent=op.call)
            self.grants += 1
            self.refreshes.setdefault(res.lease.id, []).append((op.call, TTL_MS))
            return res.lease.id
        if op.kind == "keepalive":
            if code == mpb.META_OK:
                self.refreshes.setdefault(op.arg[0], []).append((op.call, TTL_MS))
                if st["phase"] == "keepalive_after_pause":
                    st.update(phase="hold", hold_until=self.sim.now)
                return "ok"
            st.update(phase="grant", lease=0, token=0)
            return "no_lease"
        if op.kind == "acquire":
            if code == mpb.META_OK:
                self.tokens += 1
                st.update(token=res.token, phase="hold",
                          hold_until=self.sim.now + self.sim.rng.randrange(10, 150))
                return ("granted", res.token)
            if code == mpb.META_QUEUED:
                st["phase"] = "wait"
                return ("queued",)
            st.update(phase="grant", lease=0)
            return ("no_lease",)
        if op.kind == "release":
            st.update(phase="acquire" if self.sim.rng.random() < 0.7 else "grant", token=0)
            if st["phase"] == "grant":
                st["lease"] = 0  # abandons its lease: it expires on the leader's clock
            return "ok" if code == mpb.META_OK else "not_holder"
        raise ValueError(op.kind)

    def wait_result(self, sm, op: Op):
        st = self.state[op.client]
        (lease,) = op.arg
        info = sm.lock_info(LOCK)
        if info.holder == lease:
            self.tokens += 1
            st.update(token=info.token, phase="hold",
                      hold_until=self.sim.now + self.sim.rng.randrange(10, 150))
            return ("granted", info.token)
        if lease in info.waiters:
            return ("queued",)
        st.update(phase="grant" if lease not in sm.leases else "acquire")
        return ("gone",)

    def gave_up(self, op: Op) -> None:
        """`op` stays unanswered: start over from a fresh lease (the safe choice)."""
        st = self.state[op.client]
        if op.kind in ("grant", "acquire", "release", "keepalive"):
            st.update(phase="grant", lease=0, token=0)

    # -- the checks at the end --

    def check(self) -> str:
        """'' or what is wrong."""
        for lease, ended in self.end_applied.items():
            for sent, ttl in self.refreshes.get(lease, []):
                if ended < sent + ttl:
                    return (f"lease {lease} ended at {ended}ms, before its holder's view "
                            f"allowed ({sent}ms + TTL {ttl}ms)")
        return ""
