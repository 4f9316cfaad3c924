"""Gossip membership state: a pure, sans-IO core of Cassandra-style gossip.

Every node holds one `EndpointState` per member it has heard of: address, generation
(the member's start epoch, which the caller supplies and must grow across restarts),
heartbeat, status, tokens and load. All of a member's versions (heartbeat, meta, load)
come from one counter that restarts with each generation, so a single number per
member (`max_version`) says how much of its state a node holds, and a digest
(id, generation, max_version) says who is behind.

One gossip round is a three-way exchange (see docs/gossip.md):

    initiator                                   receiver
    make_syn()            -- SYN(digests) -->   receive() -> ACK bytes
    receive(ACK) -> ACK2  <-- ACK(states the initiator lacks + requests) --
                          -- ACK2(states the receiver asked for) -->  receive() -> None

Only state newer than what the other side holds travels. A higher generation replaces a
member's whole state (it restarted); a lower one is ignored. Remote claims about the local
node are never applied.

Pure: no sockets, no clock, no threads. `now` (wall-clock seconds, only used to refuse
generations too far in the future) and `rng` (a seeded random.Random) are arguments.
Every received message is validated completely before anything is applied: a malformed
or hostile message raises `GossipError` and leaves the state exactly as it was.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from kvstore._proto import gossip_pb2 as pb

__all__ = [
    "RING_STATUSES",
    "Change",
    "Digest",
    "EndpointState",
    "GossipError",
    "Gossiper",
    "Limits",
    "Received",
    "Status",
    "choose_targets",
    "ring_tokens",
]

DEFAULT_CLUSTER: Final = "kvstore"


class GossipError(Exception):
    """A received gossip message was malformed, hostile or not for this cluster.

    It was rejected as a whole: nothing of it was applied. The peer is at fault, not us.
    """


class Status(IntEnum):
    """A member's lifecycle; the values are the wire enum's (MemberStatus)."""

    JOINING = 1
    NORMAL = 2
    LEAVING = 3
    LEFT = 4


# Members whose tokens are on the ring. A LEAVING node still owns its ranges until it LEFT.
RING_STATUSES: Final = frozenset({Status.NORMAL, Status.LEAVING})


@dataclass(frozen=True)
class Limits:
    """What a received message may contain; anything beyond is rejected as hostile."""

    max_message_bytes: int = 8 * 1024 * 1024
    max_endpoints: int = 4096  # digests or states in one message
    max_members: int = 4096  # members held; a message that would exceed it is refused
    max_tokens: int = 4096  # per node
    max_id_chars: int = 128
    max_address_chars: int = 256
    max_generation_ahead_s: int = 86_400  # a generation this far past the receiver's now
    max_version: int = 2**62
    max_load: int = 2**62


class EndpointState(NamedTuple):
    """What is known of one member. Immutable (a NamedTuple: cheap to build, which the hot
    path does for every newer heartbeat); updates build a new value."""

    node_id: str
    address: str
    generation: int
    heartbeat: int
    status: Status
    tokens: tuple[int, ...]
    load: int
    meta_version: int  # version of (address, status, tokens)
    load_version: int

    @property
    def max_version(self) -> int:
        return max(self.heartbeat, self.meta_version, self.load_version)


class Digest(NamedTuple):
    """(id, generation, max_version): how much of a member's state someone holds."""

    node_id: str
    generation: int
    max_version: int


@dataclass(frozen=True)
class Change:
    """What one received message changed about one member.

    `heartbeat` is True whenever newer heartbeat information arrived (also for new and
    restarted members): that is the event to feed the failure detector.
    """

    node_id: str
    state: EndpointState
    previous: EndpointState | None
    new: bool = False
    restarted: bool = False
    heartbeat: bool = False
    meta: bool = False
    load: bool = False


@dataclass(frozen=True)
class Received:
    """The outcome of `Gossiper.receive`: the reply to send back (ACK for a SYN; ACK2 for an
    ACK, or None if the peer asked for nothing; None for an ACK2), what changed, and who
    sent it."""

    kind: str  # "syn" | "ack" | "ack2"
    sender: str
    reply: bytes | None
    changes: list[Change]


# -- validation -----------------------------------------------------------------------------


class _Meta(NamedTuple):
    version: int
    address: str
    status: Status
    tokens: tuple[int, ...]


class _Delta(NamedTuple):
    node_id: str
    generation: int
    heartbeat: int
    meta: _Meta | None
    load: tuple[int, int] | None  # (version, load)


_SPACE: Final = re.compile(r"\s")


def _check_id(value: object, what: str, limits: Limits) -> str:
    if (
        type(value) is str
        and 0 < len(value) <= limits.max_id_chars
        and value.isprintable()
        and not _SPACE.search(value)
    ):
        return value  # the fast path: every valid id
    if type(value) is not str or not value:
        raise GossipError(f"{what} must be a non-empty string")
    if len(value) > limits.max_id_chars:
        raise GossipError(f"{what} is {len(value)} characters (limit {limits.max_id_chars})")
    raise GossipError(f"{what} {value[:40]!r} contains whitespace or unprintable characters")


def _check_address(value: object, what: str, limits: Limits) -> str:
    if type(value) is not str or not value:
        raise GossipError(f"{what}: address must be a non-empty host:port")
    if len(value) > limits.max_address_chars:
        raise GossipError(f"{what}: address is {len(value)} characters")
    host, colon, port = value.rpartition(":")
    if (
        not colon
        or not host
        or not value.isprintable()
        or _SPACE.search(value)
        or not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise GossipError(f"{what}: address {value[:60]!r} is not host:port")
    return value


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise GossipError(f"{what} must be an integer")
    if not low <= value <= high:
        raise GossipError(f"{what} = {value} is outside [{low}, {high}]")
    return value


def _check_generation(value: object, what: str, now: float, limits: Limits, low: int = 1) -> int:
    gen = _check_int(value, what, low, limits.max_version)
    if gen > now + limits.max_generation_ahead_s:
        raise GossipError(
            f"{what} = {gen} is {gen - now:.0f} s ahead of this node's clock (limit"
            f" {limits.max_generation_ahead_s} s): a broken clock or a hostile peer"
        )
    return gen


def _check_tokens(
    tokens: Iterable[int], status: Status, what: str, limits: Limits, *, wire: bool = False
) -> tuple:
    """Tokens as a sorted tuple. `wire`: they came from sfixed64, so each is an int64."""
    out = tuple(tokens)
    if len(out) > limits.max_tokens:
        raise GossipError(f"{what}: {len(out)} tokens (limit {limits.max_tokens} per node)")
    if len(set(out)) != len(out):
        raise GossipError(f"{what}: duplicate tokens")
    if not out and status in RING_STATUSES:
        raise GossipError(f"{what}: status {status.name} with no tokens")
    if not wire and not all(type(t) is int and -(2**63) <= t < 2**63 for t in out):
        raise GossipError(f"{what}: tokens must be signed 64-bit integers")
    return tuple(sorted(out))


def _check_status(value: object, what: str) -> Status:
    if type(value) is not int or value not in Status._value2member_map_:
        raise GossipError(f"{what}: unknown status {value!r}")
    return Status(value)


def _check_digest(
    d: pb.GossipDigest, what: str, now: float, limits: Limits, low_gen: int
) -> Digest:
    node_id = _check_id(d.node_id, f"{what} node id", limits)
    gen, ver = d.generation, d.max_version
    if not (low_gen <= gen <= limits.max_version and gen <= now + limits.max_generation_ahead_s):
        _check_generation(gen, f"{what} {node_id} generation", now, limits, low_gen)
    if not 0 <= ver <= limits.max_version:
        _check_int(ver, f"{what} {node_id} version", 0, limits.max_version)
    return Digest(node_id, gen, ver)


def _check_digests(
    items: Iterable[pb.GossipDigest], what: str, now: float, limits: Limits, low_gen: int
) -> list[Digest]:
    items = list(items)
    if len(items) > limits.max_endpoints:
        raise GossipError(f"{len(items)} {what}s (limit {limits.max_endpoints})")
    out = []
    top, max_id = limits.max_version, limits.max_id_chars
    ahead = now + limits.max_generation_ahead_s
    space = _SPACE.search
    for d in items:  # inlined fast path; _check_digest only runs to raise the right error
        nid, gen, ver = d.node_id, d.generation, d.max_version
        if not (
            0 < len(nid) <= max_id
            and low_gen <= gen <= top
            and gen <= ahead
            and 0 <= ver <= top
            and nid.isprintable()
            and not space(nid)
        ):
            _check_digest(d, what, now, limits, low_gen)
        out.append(Digest(nid, gen, ver))
    if len({d.node_id for d in out}) != len(out):
        raise GossipError(f"duplicate node ids among {what}s")
    return out


def _check_endpoint(e: pb.GossipEndpoint, now: float, limits: Limits) -> _Delta:
    node_id = _check_id(e.node_id, "state node id", limits)
    top = limits.max_version
    gen, hb = e.generation, e.heartbeat
    # Fast path for valid values; the _check_* calls only run to raise the right error.
    if not (1 <= gen <= top and gen <= now + limits.max_generation_ahead_s):
        _check_generation(gen, f"state of {node_id}: generation", now, limits)
    if not 0 <= hb <= top:
        _check_int(hb, f"state of {node_id}: heartbeat", 0, top)
    meta = None
    if e.HasField("meta"):
        m = e.meta
        what = f"state of {node_id}"
        mver = _check_int(m.version, f"{what}: meta version", 1, top)
        address = _check_address(m.address, what, limits)
        status = _check_status(m.status, what)
        tokens = _check_tokens(m.tokens, status, what, limits, wire=True)
        meta = _Meta(mver, address, status, tokens)
    load = None
    if e.HasField("load"):
        lver, lval = e.load.version, e.load.load
        if not (1 <= lver <= top and 0 <= lval <= limits.max_load):
            _check_int(lver, f"state of {node_id}: load version", 1, top)
            _check_int(lval, f"state of {node_id}: load", 0, limits.max_load)
        load = (lver, lval)
    return _Delta(node_id, gen, hb, meta, load)


def _check_states(items: Iterable[pb.GossipEndpoint], now: float, limits: Limits) -> list[_Delta]:
    items = list(items)
    if len(items) > limits.max_endpoints:
        raise GossipError(f"{len(items)} endpoint states (limit {limits.max_endpoints})")
    out = [_check_endpoint(e, now, limits) for e in items]
    if len({d.node_id for d in out}) != len(out):
        raise GossipError("duplicate node ids among endpoint states")
    return out


# -- target selection and ring ------------------------------------------------------------


def choose_targets(
    rng: random.Random,
    live: Collection[str],
    unreachable: Collection[str],
    seeds: Collection[str],
) -> list[str]:
    """Whom to gossip with this round, by Cassandra's rules (ids other than our own).

    1. one random live peer;
    2. one random unreachable peer, with probability unreachable / (live + 1), so dead
       nodes are retried (and a healed partition is noticed) without flooding them;
    3. one random seed, if step 1 did not pick a seed or fewer peers are live than there
       are seeds: always when nothing is live, else with probability
       seeds / (live + unreachable). Seeds keep partitions from staying apart.
    """
    live_l = sorted(live)
    dead_l = sorted(unreachable)
    seeds_l = sorted(seeds)
    out: list[str] = []
    picked_seed = False
    if live_l:
        out.append(rng.choice(live_l))
        picked_seed = out[0] in seeds
    if dead_l and rng.random() < len(dead_l) / (len(live_l) + 1):
        out.append(rng.choice(dead_l))
    want_seed = bool(seeds_l) and (not picked_seed or len(live_l) < len(seeds_l))
    if want_seed and (
        not live_l or rng.random() <= len(seeds_l) / (len(live_l) + len(dead_l))
    ):
        out.append(rng.choice(seeds_l))
    return list(dict.fromkeys(out))


def ring_tokens(states: Iterable[EndpointState]) -> dict[str, tuple[int, ...]]:
    """{id: tokens} of the members that own ranges (NORMAL, LEAVING): feed to Ring.build."""
    return {s.node_id: s.tokens for s in states if s.status in RING_STATUSES and s.tokens}


# -- the gossiper -------------------------------------------------------------------------


class Gossiper:
    """One node's gossip state. Single-threaded; the caller drives it.

    Local changes: `beat()` every gossip interval, `update(...)` when status, tokens,
    address or load change. A round: `targets(rng, down)`, then for each target send
    `make_syn()`, pass the reply to `receive()` and send its `reply` (the ACK2). Inbound
    messages go to `receive()`; its `reply` is the answer (ACK to a SYN) or None.
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        generation: int,
        *,
        tokens: Iterable[int] = (),
        status: Status = Status.JOINING,
        load: int = 0,
        seeds: Iterable[str] = (),
        cluster: str = DEFAULT_CLUSTER,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.node_id = node_id
        self.cluster = cluster
        self.seeds = frozenset(s for s in seeds if s != node_id)
        self._version = 1
        self._states: dict[str, EndpointState] = {}
        self._forgotten: dict[str, int] = {}
        state = EndpointState(
            node_id, address, generation, 1, Status(status), (), 0, 1, 1
        )
        self._states[node_id] = self._checked_local(
            state, tokens=tuple(tokens), address=address, status=Status(status), load=load
        )

    # -- local state ----------------------------------------------------------------------

    @property
    def local(self) -> EndpointState:
        return self._states[self.node_id]

    @property
    def endpoints(self) -> Mapping[str, EndpointState]:
        """Every member known (including this node), read-only."""
        return MappingProxyType(self._states)

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def beat(self) -> None:
        """Advance the local heartbeat (call once per gossip interval)."""
        self._states[self.node_id] = self.local._replace(heartbeat=self._next_version())

    def update(
        self,
        *,
        status: Status | None = None,
        tokens: Iterable[int] | None = None,
        address: str | None = None,
        load: int | None = None,
    ) -> EndpointState:
        """Change local application state; raises ValueError for values peers would reject."""
        cur = self.local
        new = self._checked_local(
            cur,
            tokens=cur.tokens if tokens is None else tuple(tokens),
            address=cur.address if address is None else address,
            status=cur.status if status is None else Status(status),
            load=cur.load if load is None else load,
        )
        if (new.address, new.status, new.tokens) != (cur.address, cur.status, cur.tokens):
            new = new._replace(meta_version=self._next_version())
        if new.load != cur.load:
            new = new._replace(load_version=self._next_version())
        self._states[self.node_id] = new
        return new

    def _checked_local(
        self, cur: EndpointState, *, tokens: tuple, address: str, status: Status, load: int
    ) -> EndpointState:
        lim = self.limits
        try:
            _check_id(cur.node_id, "node id", lim)
            _check_id(self.cluster, "cluster name", lim)
            _check_address(address, "local", lim)
            _check_int(cur.generation, "generation", 1, lim.max_version)
            _check_int(load, "load", 0, lim.max_load)
            toks = _check_tokens(tokens, status, "local", lim)
        except GossipError as exc:
            raise ValueError(str(exc)) from None
        return cur._replace(address=address, status=status, tokens=toks, load=load)

    # -- queries --------------------------------------------------------------------------

    def digests(self) -> list[Digest]:
        return [Digest(s.node_id, s.generation, s.max_version) for s in self._states.values()]

    def ring_tokens(self) -> dict[str, tuple[int, ...]]:
        """{id: tokens} of NORMAL and LEAVING members, for Ring.build."""
        return ring_tokens(self._states.values())

    def targets(self, rng: random.Random, down: Collection[str] = ()) -> list[str]:
        """This round's gossip targets (see choose_targets); `down` is the detector's verdict.

        LEFT members are never chosen; seeds are whatever names the caller gave (node ids,
        or addresses it resolves itself).
        """
        peers = [
            i for i, s in self._states.items() if i != self.node_id and s.status != Status.LEFT
        ]
        down_set = set(down)
        live = [p for p in peers if p not in down_set]
        dead = [p for p in peers if p in down_set]
        return choose_targets(rng, live, dead, self.seeds)

    def speak_for(self, node_id: str, status: Status) -> EndpointState:
        """Change a down member's status on its behalf (a forced removal: it cannot say it
        itself). The new status carries a version above everything that member said, so
        peers take it; a member that is in fact alive would override it by its next status
        change, so callers check it is down first."""
        if node_id == self.node_id:
            raise ValueError("a node speaks for itself with update()")
        cur = self._states.get(node_id)
        if cur is None:
            raise ValueError(f"{node_id} is not a known member")
        new = cur._replace(status=Status(status), meta_version=cur.max_version + 1)
        self._states[node_id] = new
        return new

    def forget(self, node_id: str) -> bool:
        """Drop a member (e.g. LEFT long ago) and ignore it until it shows a newer generation."""
        if node_id == self.node_id or node_id not in self._states:
            return False
        self._forgotten[node_id] = self._states.pop(node_id).generation
        return True

    # -- messages -------------------------------------------------------------------------

    def make_syn(self) -> bytes:
        """The SYN that opens a round: a digest of every member known."""
        digest = pb.GossipDigest
        syn = pb.GossipSyn(
            sender=self.node_id,
            cluster=self.cluster,
            digests=[
                digest(
                    node_id=i,
                    generation=s.generation,
                    max_version=max(s.heartbeat, s.meta_version, s.load_version),
                )
                for i, s in self._states.items()
            ],
        )
        return pb.GossipMessage(syn=syn).SerializeToString()

    def receive(self, data: bytes, now: float) -> Received:
        """Validate and apply one received message; raise GossipError (state untouched) if bad.

        `now` is the receiver's wall clock in seconds (generations are start epochs).
        """
        kind, sender, parsed = self._parse(data, now)
        if kind == "syn":
            digests = parsed
            return Received(kind, sender, self._answer_syn(sender, digests), [])
        if kind == "ack":
            states, requests = parsed
            changes = self._apply(states)
            ack2 = pb.GossipAck2(sender=self.node_id)
            for r in requests:
                s = self._states.get(r.node_id)
                if s is None:
                    continue
                if s.generation > r.generation:
                    ack2.states.append(self._delta(s, 0))
                elif s.generation == r.generation and s.max_version > r.max_version:
                    ack2.states.append(self._delta(s, r.max_version))
            # Nothing requested: no ACK2 at all (saves a message in most steady rounds).
            reply = pb.GossipMessage(ack2=ack2).SerializeToString() if ack2.states else None
            return Received(kind, sender, reply, changes)
        return Received(kind, sender, None, self._apply(parsed))

    def _parse(self, data: bytes, now: float) -> tuple[str, str, object]:
        """Decode and validate everything; nothing is applied here."""
        lim = self.limits
        if not isinstance(data, bytes | bytearray | memoryview):
            raise GossipError(f"gossip message must be bytes, not {type(data).__name__}")
        if len(data) > lim.max_message_bytes:
            raise GossipError(
                f"gossip message of {len(data)} bytes exceeds {lim.max_message_bytes}"
            )
        try:
            msg = pb.GossipMessage()
            msg.ParseFromString(bytes(data))
            kind = msg.WhichOneof("body")
            if kind == "syn":
                sender = self._check_sender(msg.syn.sender)
                if msg.syn.cluster != self.cluster:
                    raise GossipError(
                        f"SYN from {sender} for cluster {msg.syn.cluster[:60]!r}, this node is"
                        f" in {self.cluster!r}: check the seeds and cluster names"
                    )
                return kind, sender, _check_digests(msg.syn.digests, "digest", now, lim, 1)
            if kind == "ack":
                sender = self._check_sender(msg.ack.sender)
                states = self._check_room(_check_states(msg.ack.states, now, lim))
                requests = _check_digests(msg.ack.requests, "request", now, lim, 0)
                return kind, sender, (states, requests)
            if kind == "ack2":
                sender = self._check_sender(msg.ack2.sender)
                return kind, sender, self._check_room(_check_states(msg.ack2.states, now, lim))
            raise GossipError("gossip message has no SYN, ACK or ACK2 body")
        except GossipError:
            raise
        except Exception as exc:  # the decoder's errors (DecodeError, bad UTF-8, ...)
            raise GossipError(f"malformed gossip message: {type(exc).__name__}: {exc}") from None

    def _check_room(self, deltas: list[_Delta]) -> list[_Delta]:
        """Refuse a message that would grow the member table past `max_members`."""
        fresh = sum(1 for d in deltas if d.node_id not in self._states and d.meta is not None)
        if fresh and len(self._states) + fresh > self.limits.max_members:
            raise GossipError(
                f"message introduces {fresh} new members; {len(self._states)} are known and"
                f" the limit is {self.limits.max_members}"
            )
        return deltas

    def _check_sender(self, sender: str) -> str:
        _check_id(sender, "sender", self.limits)
        if sender == self.node_id:
            raise GossipError(f"message claims to come from this node ({sender}): duplicate id?")
        return sender

    def _delta(self, s: EndpointState, known_version: int) -> pb.GossipEndpoint:
        """`s` minus what someone holding `known_version` (same generation) already has."""
        e = pb.GossipEndpoint(node_id=s.node_id, generation=s.generation, heartbeat=s.heartbeat)
        if s.meta_version > known_version:
            e.meta.version = s.meta_version
            e.meta.address = s.address
            e.meta.status = int(s.status)
            e.meta.tokens.extend(s.tokens)
        if s.load_version > known_version:
            e.load.version = s.load_version
            e.load.load = s.load
        return e

    def _answer_syn(self, sender: str, digests: list[Digest]) -> bytes:
        ack = pb.GossipAck(sender=self.node_id)
        seen: set[str] = set()
        for d in digests:
            seen.add(d.node_id)
            local = self._states.get(d.node_id)
            if d.node_id == self.node_id:
                if d.generation < local.generation:
                    ack.states.append(self._delta(local, 0))
                elif d.generation == local.generation and d.max_version < local.max_version:
                    ack.states.append(self._delta(local, d.max_version))
                continue
            if local is None:
                if d.generation > self._forgotten.get(d.node_id, 0):
                    ack.requests.add(node_id=d.node_id, generation=0, max_version=0)
            elif d.generation > local.generation:
                ack.requests.add(node_id=d.node_id, generation=local.generation, max_version=0)
            elif d.generation < local.generation:
                ack.states.append(self._delta(local, 0))
            else:
                held = max(local.heartbeat, local.meta_version, local.load_version)
                if d.max_version > held:
                    ack.requests.add(
                        node_id=d.node_id, generation=local.generation, max_version=held
                    )
                elif d.max_version < held:
                    ack.states.append(self._delta(local, d.max_version))
        # Members the initiator has not heard of at all: send them whole (Cassandra waits for
        # the reverse round; this halves the time a join takes to spread).
        for node_id, local in self._states.items():
            if node_id not in seen and node_id != sender:
                ack.states.append(self._delta(local, 0))
        return pb.GossipMessage(ack=ack).SerializeToString()

    def _apply(self, deltas: list[_Delta]) -> list[Change]:
        changes: list[Change] = []
        for d in deltas:
            if d.node_id == self.node_id:
                continue  # nobody else speaks for this node
            if d.generation <= self._forgotten.get(d.node_id, 0):
                continue
            cur = self._states.get(d.node_id)
            if cur is None or d.generation > cur.generation:
                if d.meta is None:
                    continue  # cannot build a member from a partial state; asked in full later
                lv, lval = d.load or (0, 0)
                new = EndpointState(
                    d.node_id, d.meta.address, d.generation, d.heartbeat, d.meta.status,
                    d.meta.tokens, lval, d.meta.version, lv,
                )
                self._forgotten.pop(d.node_id, None)
                self._states[d.node_id] = new
                changes.append(Change(
                    d.node_id, new, cur, new=cur is None, restarted=cur is not None,
                    heartbeat=True, meta=True, load=d.load is not None,
                ))
                continue
            if d.generation < cur.generation:
                continue  # a stale report of a previous life
            new = cur
            hb = d.heartbeat > cur.heartbeat
            if hb:  # the common case, built directly (dataclasses.replace is slow)
                new = EndpointState(
                    cur.node_id, cur.address, cur.generation, d.heartbeat, cur.status,
                    cur.tokens, cur.load, cur.meta_version, cur.load_version,
                )
            meta = d.meta is not None and d.meta.version > cur.meta_version
            if meta:
                m = d.meta
                new = new._replace(
                    address=m.address, status=m.status, tokens=m.tokens, meta_version=m.version
                )
            load = d.load is not None and d.load[0] > cur.load_version
            if load:
                new = new._replace(load=d.load[1], load_version=d.load[0])
            if new is not cur:
                self._states[d.node_id] = new
                changes.append(Change(d.node_id, new, cur, heartbeat=hb, meta=meta, load=load))
        return changes
