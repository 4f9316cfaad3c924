"""The Raft state machine: one synchronous object, no I/O (see the package docstring)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from kvstore.core.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageDecodeError,
    MsgType,
    Snapshot,
    decode_conf_change,
    encode_conf_change,
)
from kvstore.core.raft.progress import Progress, ProgressState

TRANSFER_CONTEXT = b"\x00transfer"


class RaftError(Exception):
    """Base class of errors raised to the local caller of the core."""


class NotLeaderError(RaftError):
    """Only the leader may do this; `leader` is the best known leader id ('' if unknown)."""

    def __init__(self, node: str, leader: str) -> None:
        hint = f"; try {leader}" if leader else "; no leader known yet, retry shortly"
        super().__init__(f"{node} is not the raft leader{hint}")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader refuses proposals for now (a leadership transfer is in progress)."""


class ConfChangeError(RaftError):
    """A membership change is not allowed now (one change at a time, learners first)."""


class RaftUsageError(RaftError):
    """The caller broke the core's contract (e.g. ready() twice without advance())."""


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass
class Config:
    """Tunables; times are in ticks. Election timeouts are drawn from
    [election_tick, 2*election_tick) with the injected random.Random."""

    id: str
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 64
    max_inflight: int = 16
    # Lease reads answer ReadIndex without a heartbeat round. Correct only if clocks (tick
    # rates) of the nodes drift by less than the gap between election_tick and the
    # randomized timeouts of followers: the leader assumes nobody can be elected within
    # election_tick ticks of its last quorum contact. Off by default.
    lease_reads: bool = False
    # A learner is promoted only once its match index is within this many entries of the
    # leader's commit index.
    learner_max_lag: int = 0

    def validate(self) -> None:
        if not self.id:
            raise ValueError("raft node id must not be empty")
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")
        if self.max_entries_per_msg < 1 or self.max_inflight < 1:
            raise ValueError("max_entries_per_msg and max_inflight must be >= 1")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads requires check_quorum")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index reaches `index`."""

    index: int
    context: bytes


@dataclass
class Ready:
    """Everything the driver must do, in this order: persist (snapshot, entries - replacing
    any stored entries at or after entries[0].index - and hard_state; fsync if must_sync),
    then send messages, then apply committed entries / install snapshot, then advance().

    `send_first`: the messages may leave before (or while) this Ready is persisted - it is
    a leader's Ready whose term and vote are durable already, so its messages are appends,
    heartbeats and the like that depend on no write in it (the leader writes to its disk in
    parallel with its followers, Ongaro's thesis 10.2.1). Committed entries are still
    applied only after the persist, and the leader counts its own entries toward the commit
    quorum only once advance() reports them durable."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    messages: list[Message]
    committed: list[Entry]
    read_states: list[ReadState]
    must_sync: bool
    leader: str = ""
    role: Role = Role.FOLLOWER
    send_first: bool = False

    @property
    def truncate_from(self) -> int:
        """Stored entries at or after this index must be discarded (0: none)."""
        return self.entries[0].index if self.entries else 0


@dataclass
class Status:
    id: str
    term: int
    vote: str
    role: Role
    leader: str
    commit: int
    applied: int
    first_index: int
    last_index: int
    conf: ConfState
    progress: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    joining: bool = False


@dataclass
class _PendingRead:
    index: int
    context: bytes
    acks: set[str]


def _quorum(n: int) -> int:
    return n // 2 + 1


class RaftNode:
    """One member of a Raft group. See the package docstring for the driving contract."""

    def __init__(
        self,
        config: Config,
        rng: random.Random,
        *,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
        bootstrap_voters: list[str] | None = None,
        joining: bool = False,
    ) -> None:
        """Start from recovered durable state (all empty for a node that is joining), or
        bootstrap a brand-new group with `bootstrap_voters` (every initial voter must pass
        the same list; it becomes configuration entries 1..n, already committed).

        `joining`: this node lost its state (or never had any) and is coming (back) through
        a membership change. Until it applies its own promotion from learner to voter it
        neither votes nor campaigns, whatever configuration its log shows: a configuration
        naming it a voter may come from before it lost its state, and a vote from it then
        could elect a leader missing entries it once acknowledged, or repeat a vote it gave
        in the same term. Being a learner proves that removal happened (a member cannot be
        added as a learner), so the promotion that follows is a configuration made for the
        node as it is now. The driver persists the flag until `joining` turns False."""
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = rng
        self.joining = joining
        hs = hard_state or HardState()
        snap = snapshot or Snapshot()
        self.term = hs.term
        self.vote = hs.vote
        self._snapshot = snap
        self._offset = snap.index
        self._offset_term = snap.term
        self._ents: list[Entry] = []
        self.conf = snap.conf
        self._conf_index = snap.index
        self.commit = max(hs.commit, snap.index)
        self.applied = snap.index
        self._unstable = snap.index + 1
        self._pending_snapshot: Snapshot | None = None
        self._prev_hs = hs
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._outstanding: Ready | None = None
        self._need_bcast = False
        if bootstrap_voters:
            if hard_state or snapshot or entries:
                raise RaftUsageError("bootstrap only a node with no durable state")
            voters = sorted(set(bootstrap_voters))
            if self.id not in voters:
                raise RaftUsageError("a bootstrapping node must be one of the voters")
            for i, v in enumerate(voters, 1):
                data = encode_conf_change(ConfChange(ConfChangeType.ADD_VOTER, v))
                self._ents.append(Entry(i, 1, EntryType.CONF_CHANGE, data))
            self.term = 1
            self.commit = len(voters)
            self.conf = ConfState(frozenset(voters), frozenset())
            self._prev_hs = HardState()
        elif entries:
            ents = [e for e in entries if e.index > snap.index]
            for i, e in enumerate(ents):
                if e.index != snap.index + 1 + i:
                    raise RaftUsageError(f"recovered entries are not contiguous at {e.index}")
            self._ents = ents
            self._unstable = self.last_index() + 1
        if self.commit > self.last_index():
            raise RaftUsageError(f"commit {self.commit} beyond last index {self.last_index()}")
        self.role = Role.FOLLOWER
        self.lead = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_tick
        self._votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self._pending_conf_index = 0
        self._lead_transferee = ""
        self._reads: list[_PendingRead] = []
        self._reads_waiting_commit: list[bytes] = []
        self._reset_randomized_timeout()

    # ---- log helpers ----------------------------------------------------------------------

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._offset + len(self._ents)

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if compacted or beyond the log."""
        if index == self._offset:
            return self._offset_term
        if index < self._offset or index > self._offset + len(self._ents):
            return None
        return self._ents[index - self._offset - 1].term

    def stable_index(self) -> int:
        """The last index known durable here (persisted by a Ready that was advanced)."""
        return min(self._unstable - 1, self.last_index())

    def last_term(self) -> int:
        t = self.term_at(self.last_index())
        return t if t is not None else 0

    def entries_from(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (must not be compacted)."""
        return self._ents[lo - self._offset - 1 : hi - self._offset]

    def _match_term(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def _up_to_date(self, index: int, term: int) -> bool:
        lt = self.last_term()
        return term > lt or (term == lt and index >= self.last_index())

    def _append(self, entries: list[Entry]) -> None:
        """Append, truncating any conflicting suffix first."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.commit:
            raise AssertionError(f"raft safety: truncating committed entry {first}")
        del self._ents[first - self._offset - 1 :]
        self._ents.extend(entries)
        self._unstable = min(self._unstable, first)

    def _find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= `term` (the fast back-off hint)."""
        index = min(index, self.last_index())
        while index > self._offset:
            t = self.term_at(index)
            if t is None or t <= term:
                break
            index -= 1
        return index

    # ---- public driving API ---------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command; return its log index (it is committed once applied)."""
        self._check_can_propose()
        return self._leader_append(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a one-server membership change; return its log index."""
        self._check_can_propose()
        if self._pending_conf_index > self.applied:
            raise ConfChangeError("a membership change is already in progress; retry after it")
        voters, learners = self.conf.voters, self.conf.learners
        node = cc.node
        if cc.type is ConfChangeType.ADD_LEARNER:
            if node in voters or node in learners:
                raise ConfChangeError(f"{node} is already a member")
        elif cc.type is ConfChangeType.ADD_VOTER:
            if node in voters:
                raise ConfChangeError(f"{node} is already a voter")
            if node not in learners:
                raise ConfChangeError(f"add {node} as a learner first, promote it once caught up")
            pr = self.progress.get(node)
            lag = self.commit - (pr.match if pr else 0)
            if lag > self.cfg.learner_max_lag:
                raise ConfChangeError(f"learner {node} is {lag} entries behind; retry later")
        elif cc.type is ConfChangeType.REMOVE:
            if node not in voters and node not in learners:
                raise ConfChangeError(f"{node} is not a member")
            if voters == {node}:
                raise ConfChangeError("cannot remove the last voter")
        index = self._leader_append(EntryType.CONF_CHANGE, encode_conf_change(cc))
        self._pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a ReadState with this (unique) context appears in a
        later Ready. Pending reads are dropped if leadership is lost (caller times out)."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.lead)
        if self.cfg.lease_reads:
            if self._committed_in_term():
                self._read_states.append(ReadState(self.commit, context))
            else:
                self._reads_waiting_commit.append(context)
            return
        if not self._committed_in_term():
            self._reads_waiting_commit.append(context)
            return
        self._start_read(context)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter `to` (catch it up, then TimeoutNow); aborted after an
        election timeout. Proposals are refused meanwhile."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.lead)
        if to == self.id:
            return
        if to not in self.conf.voters:
            raise RaftError(f"cannot transfer leadership to {to}: not a voter")
        if self._lead_transferee == to:
            return
        self._lead_transferee = to
        self._election_elapsed = 0
        if self.progress[to].match == self.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def step(self, m: Message) -> None:
        """Feed one message from the network (already decoded and validated)."""
        if not isinstance(m, Message):
            raise MessageDecodeError(f"expected a Message, got {type(m).__name__}")
        if m.to != self.id:
            raise MessageDecodeError(f"message for {m.to!r} delivered to {self.id!r}")
        if m.frm == self.id:
            raise MessageDecodeError("message claims to come from this node")
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != ""
                    and self._election_elapsed < self.cfg.election_tick
                )
                if in_lease and not force:
                    return  # a healthy leader exists: do not let a rejoining node depose it
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, "")
        elif m.term < self.term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT) and (
                self.cfg.check_quorum or self.cfg.pre_vote
            ):
                # Tell a stale leader about the newer term so it steps down.
                self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term))
            elif m.type is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
            return
        if self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        hs = self._prev_hs
        return bool(
            self._need_bcast
            or self._msgs
            or self._read_states
            or self._pending_snapshot is not None
            or self._unstable <= self._offset + len(self._ents)
            or self.commit > self.applied
            or self.term != hs.term
            or self.vote != hs.vote
            or self.commit != hs.commit
        )

    def ready(self) -> Ready:
        """Collect what the driver must do now; call advance() when it is done."""
        if self._outstanding is not None:
            raise RaftUsageError("ready() called again before advance()")
        if self._need_bcast and self.role is Role.LEADER:
            self._bcast_append()
        self._need_bcast = False
        hs = self._hard_state()
        snap = self._pending_snapshot
        entries = self.entries_from(self._unstable, self.last_index()) if (
            self._unstable <= self.last_index()) else []
        lo = max(self.applied, snap.index if snap else 0) + 1
        committed = self.entries_from(lo, self.commit) if self.commit >= lo else []
        changed = hs != self._prev_hs
        term_or_vote = hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote
        must_sync = bool(entries) or snap is not None or (changed and term_or_vote)
        rd = Ready(
            hard_state=hs if changed else None,
            entries=entries,
            snapshot=snap,
            messages=self._msgs,
            committed=committed,
            read_states=self._read_states,
            must_sync=must_sync,
            leader=self.lead,
            role=self.role,
            # A leader's messages depend on no write in this Ready when its term and vote
            # are durable already (always, except for a group of one that just elected
            # itself): they may leave while its own entries are being written.
            send_first=self.role is Role.LEADER and snap is None and not term_or_vote,
        )
        self._msgs = []
        self._read_states = []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that `rd` was persisted, sent and applied."""
        if rd is not self._outstanding:
            raise RaftUsageError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if self._pending_snapshot is rd.snapshot:
                self._pending_snapshot = None
            self.applied = max(self.applied, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            if self.term_at(last.index) == last.term:
                self._unstable = max(self._unstable, last.index + 1)
            me = self.progress.get(self.id) if self.role is Role.LEADER else None
            if me is not None and me.maybe_update(self.stable_index()):
                # The leader's own write is durable: only now does it count itself.
                self._maybe_commit()
        for e in rd.committed:
            if e.index <= self.applied:
                continue
            self.applied = e.index
            if e.type is EntryType.CONF_CHANGE and e.index > self._conf_index:
                self._apply_conf_change(e)

    def create_snapshot(self, data: bytes) -> Snapshot:
        """Record a state-machine image taken at the applied index; returns it for the
        driver to persist. Follow with compact() to free log memory."""
        if self._outstanding is not None:
            raise RaftUsageError("create_snapshot() between ready() and advance()")
        term = self.term_at(self.applied)
        if term is None or self.applied <= self._snapshot.index:
            return self._snapshot
        self._snapshot = Snapshot(self.applied, term, self.conf, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop in-memory entries up to `index` (<= the latest snapshot's index)."""
        index = min(index, self._snapshot.index, self.applied)
        if index <= self._offset:
            return
        t = self.term_at(index)
        assert t is not None
        del self._ents[: index - self._offset]
        self._offset, self._offset_term = index, t

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def status(self) -> Status:
        prog = {}
        if self.role is Role.LEADER:
            prog = {n: (p.match, p.next, p.state.value) for n, p in self.progress.items()}
        return Status(self.id, self.term, self.vote, self.role, self.lead, self.commit,
                      self.applied, self.first_index(), self.last_index(), self.conf, prog,
                      self.joining)

    # ---- internals --------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _promotable(self) -> bool:
        return self.id in self.conf.voters and not self.joining

    def _reset_randomized_timeout(self) -> None:
        et = self.cfg.election_tick
        self._randomized_timeout = et + self.rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.lead = ""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._lead_transferee = ""
        self._reads = []
        self._reads_waiting_commit = []
        self.progress = {}

    def _become_follower(self, term: int, lead: str) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.last_index()
        for n in self.conf.members():
            self.progress[n] = Progress(last + 1, self.cfg.max_inflight)
        me = self.progress.get(self.id)
        if me is not None:
            # Count only what is durable here: in a group of one, entries of a Ready still
            # being written when the node elected itself are counted at its advance().
            me.match = self.stable_index()
            me.become_replicate()
        self._pending_conf_index = last  # conservatively: an unapplied change may be there
        self._leader_append(EntryType.NORMAL, b"")  # commits earlier terms' entries

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            term = self.term + 1
            mtype = MsgType.PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            term = self.term
            mtype = MsgType.VOTE
        self._votes[self.id] = True
        if self._tally() == 1:
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = TRANSFER_CONTEXT if transfer else b""
        for v in sorted(self.conf.voters):
            if v != self.id:
                self._send(Message(mtype, v, self.id, term, log_term=self.last_term(),
                                   index=self.last_index(), context=ctx))

    def _tally(self) -> int:
        """1 if the campaign is won, -1 if lost, 0 while undecided."""
        voters = self.conf.voters
        q = _quorum(len(voters))
        yes = sum(1 for v in voters if self._votes.get(v) is True)
        no = sum(1 for v in voters if self._votes.get(v) is False)
        if yes >= q:
            return 1
        if no > len(voters) - q:
            return -1
        return 0

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        if self.joining:  # may hold a vote it forgot, or lack entries it acknowledged
            resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))
            return
        can_vote = (
            self.vote == m.frm
            or (self.vote == "" and self.lead == "")
            or (pre and m.term > self.term)
        )
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if can_vote and self._up_to_date(m.index, m.log_term):
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APP:
            self._become_follower(self.term, m.frm)
            self._handle_append(m)
        elif t is MsgType.HEARTBEAT:
            self._become_follower(self.term, m.frm)
            self._handle_heartbeat(m)
        elif t is MsgType.SNAP:
            self._become_follower(self.term, m.frm)
            self._handle_snapshot(m)
        elif (t is MsgType.PRE_VOTE_RESP and self.role is Role.PRE_CANDIDATE) or (
            t is MsgType.VOTE_RESP and self.role is Role.CANDIDATE
        ):
            if t is MsgType.PRE_VOTE_RESP and not m.reject and m.term != self.term + 1:
                return  # an answer to an older pre-campaign
            self._votes.setdefault(m.frm, not m.reject)
            result = self._tally()
            if result == 1:
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif result == -1:
                self._become_follower(self.term, "")

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self._election_elapsed = 0
            self.lead = m.frm
            if t is MsgType.APP:
                self._handle_append(m)
            elif t is MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW and self._promotable():
            self._hup(transfer=True)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.commit:
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.commit))
            return
        if self._match_term(m.index, m.log_term):
            last_new = m.index + len(m.entries)
            for e in m.entries:
                if self.term_at(e.index) != e.term:
                    self._append(m.entries[e.index - m.index - 1 :])
                    break
            self._commit_to(min(m.commit, last_new))
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        hint = self._find_conflict_by_term(min(m.index, self.last_index()), m.log_term)
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=m.index,
                           reject=True, reject_hint=hint, log_term=self.term_at(hint) or 0))

    def _handle_heartbeat(self, m: Message) -> None:
        self._commit_to(min(m.commit, self.last_index()))
        self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        assert s is not None
        if s.index <= self.commit:
            pass
        elif self._match_term(s.index, s.term):
            self._commit_to(s.index)
        else:
            self._ents = []
            self._offset, self._offset_term = s.index, s.term
            self._snapshot = s
            self._pending_snapshot = s
            self.commit = s.index
            self._unstable = s.index + 1
            if self.joining and self.id in self.conf.learners and self.id in s.conf.voters:
                self.joining = False  # promoted, and the promotion was compacted away
            self.conf = s.conf
            self._conf_index = s.index
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=self.last_index()
                           if self._pending_snapshot is s else self.commit))

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            self.commit = index

    # -- leader

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.lead)
        if self._lead_transferee:
            raise ProposalDroppedError(f"leadership is moving to {self._lead_transferee}")
        if self.id not in self.conf.voters:
            raise NotLeaderError(self.id, "")

    def _leader_append(self, etype: EntryType, data: bytes) -> int:
        index = self.last_index() + 1
        self._ents.append(Entry(index, self.term, etype, data))
        self._unstable = min(self._unstable, index)
        # The leader's own match index does not move here: the entry is not durable yet. It
        # moves in advance(), once the Ready carrying the entry has been persisted; the
        # followers get the entry meanwhile (Ready.send_first).
        self._need_bcast = True  # sent at the next ready(): one batch per follower
        return index

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        for n, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT and n != self.id:
                pr.snapshot_ticks += 1
        if self._election_elapsed >= self.cfg.election_tick:
            self._election_elapsed = 0
            if self.cfg.check_quorum:
                active = sum(
                    1 for v in self.conf.voters
                    if v == self.id or (v in self.progress and self.progress[v].recent_active)
                )
                for n, pr in self.progress.items():
                    pr.recent_active = n == self.id
                if active < _quorum(len(self.conf.voters)):
                    self._become_follower(self.term, "")
                    return
            self._lead_transferee = ""
        if self._heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads[-1].context if self._reads else b"")

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for n, pr in sorted(self.progress.items()):
            if n != self.id:
                self._send(Message(MsgType.HEARTBEAT, n, self.id, self.term,
                                   commit=min(pr.match, self.commit), context=ctx))

    def _bcast_append(self) -> None:
        self._need_bcast = False
        for n in sorted(self.progress):
            if n != self.id and self._send_append(n):
                while self._send_append(n, send_if_empty=False):
                    pass  # pipeline further batches up to max_inflight

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None:
            snap = self._snapshot
            if snap.index == 0 or snap.index < pr.match:
                return False
            pr.become_snapshot(snap.index)
            self._send(Message(MsgType.SNAP, to, self.id, self.term, snapshot=snap))
            return True
        last = self.last_index()
        hi = min(last, prev + self.cfg.max_entries_per_msg)
        ents = self.entries_from(pr.next, hi) if hi >= pr.next else []
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APP, to, self.id, self.term, log_term=prev_term, index=prev,
                           commit=self.commit, entries=ents))
        if pr.state is ProgressState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _maybe_commit(self) -> bool:
        me = self.progress.get(self.id)
        if me is not None and me.match > self.stable_index():
            raise AssertionError(
                f"raft safety: leader {self.id} counts itself up to {me.match} toward the "
                f"commit quorum, but only {self.stable_index()} is durable")
        matches = sorted(
            (self.progress[v].match if v in self.progress else 0 for v in self.conf.voters),
            reverse=True,
        )
        if not matches:
            return False
        mci = matches[_quorum(len(matches)) - 1]
        if mci > self.commit and self.term_at(mci) == self.term:
            first_in_term = not self._committed_in_term()
            self.commit = mci
            if first_in_term:
                waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
                for ctx in waiting:
                    if self.cfg.lease_reads:
                        self._read_states.append(ReadState(self.commit, ctx))
                    else:
                        self._start_read(ctx)
            self._bcast_append()
            return True
        return False

    def _committed_in_term(self) -> bool:
        return self.term_at(self.commit) == self.term

    def _start_read(self, ctx: bytes) -> None:
        if len(self.conf.voters) == 1 and self.id in self.conf.voters:
            self._read_states.append(ReadState(self.commit, ctx))
            return
        self._reads.append(_PendingRead(self.commit, ctx, {self.id}))
        self._bcast_heartbeat(ctx)

    def _on_read_ack(self, frm: str, ctx: bytes) -> None:
        for i, r in enumerate(self._reads):
            if r.context == ctx:
                r.acks.add(frm)
                if sum(1 for v in self.conf.voters if v in r.acks) >= _quorum(
                        len(self.conf.voters)):
                    done, self._reads = self._reads[: i + 1], self._reads[i + 1 :]
                    self._read_states.extend(ReadState(d.index, d.context) for d in done)
                return

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type is MsgType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self._find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr(m.index, hint):
                    if pr.state is ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            was_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state is ProgressState.PROBE or (
                    pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
                ):
                    pr.become_replicate()
                elif pr.state is ProgressState.REPLICATE:
                    pr.free_upto(m.index)
                if not self._maybe_commit() and was_paused:
                    self._send_append(m.frm)
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self._lead_transferee and pr.match == self.last_index():
                    self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self.id, self.term))
            elif pr.state is ProgressState.REPLICATE:
                pr.free_upto(m.index)
        elif m.type is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.SNAPSHOT and pr.snapshot_ticks >= self.cfg.election_tick:
                pr.become_probe()  # the snapshot was probably lost: try again
            if pr.state is ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()  # a batch was probably lost: let one more through
            if pr.match < self.last_index():
                self._send_append(m.frm)
            if m.context:
                self._on_read_ack(m.frm, m.context)

    def _apply_conf_change(self, e: Entry) -> None:
        cc = decode_conf_change(e.data)
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        if (self.joining and cc.node == self.id and cc.type is ConfChangeType.ADD_VOTER
                and self.id in learners):
            self.joining = False  # promoted from learner: a voter made for this node as it is
        if cc.type is ConfChangeType.ADD_VOTER:
            learners.discard(cc.node)
            voters.add(cc.node)
        elif cc.type is ConfChangeType.ADD_LEARNER:
            if cc.node not in voters:
                learners.add(cc.node)
        else:
            voters.discard(cc.node)
            learners.discard(cc.node)
        self.conf = ConfState(frozenset(voters), frozenset(learners))
        self._conf_index = e.index
        if self.role is not Role.LEADER:
            return
        if self.id not in voters:
            self._become_follower(self.term, "")
            return
        members = self.conf.members()
        for n in list(self.progress):
            if n not in members:
                del self.progress[n]
        for n in members:
            if n not in self.progress:
                self.progress[n] = Progress(self.last_index() + 1, self.cfg.max_inflight)
        if self._lead_transferee and self._lead_transferee not in voters:
            self._lead_transferee = ""
        if not self._maybe_commit():
            self._bcast_append()
