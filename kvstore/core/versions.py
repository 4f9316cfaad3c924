"""Versions of a key: dotted version vectors, siblings and causal contexts.

Each stored value is a *sibling* carrying a dot ``(node, counter)`` that names the write
which made it, and a ``past``: the causal context that write superseded. A sibling is
obsolete when another sibling's past covers its dot. This is the dotted-version-vector
form (Preguiça et al.; adopted by Riak 2.0): because a dot names exactly one write, a
replica never keeps more siblings than there were truly concurrent writes, however many
clients and coordinators took part.

Rules the rest of the system relies on:

* A write is *minted* only at a replica of its key (`update`), under an *actor*
  ``node@epoch`` (`actor`) that this replica uses for this key only while its record of
  the key is continuous, with a counter greater than any it has minted or seen for that
  actor; it then replicates its whole resulting sibling set. So whoever holds dot
  ``(a, c)`` also holds (or has seen superseded) every earlier dot of ``a`` for that key,
  and a context entry ``a: c`` may safely stand for all of them.
* A dot names one event for ever. A replica with no continuous record of a key (first
  write there, purged tombstone, dropped corrupted record, lost or restored disk) mints
  under a fresh epoch that no replica can have seen (storage/epochs.py), never
  ``(node, 1)`` again: Riak lost acknowledged writes that way (KV679).
* Replicas merge with `sync`, which is commutative, associative and idempotent.
* Clocks are bounded (`MAX_CLOCK_ENTRIES`); pruning drops the smallest counters. Pruning
  only ever makes a version look *less* known, so it can create extra siblings but can
  never drop a write.

Pure: no I/O, no clock reads (the caller passes the time).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from kvstore._proto import common_pb2 as pb

MAX_CLOCK_ENTRIES = 64
Clock = dict[str, int]


class InvalidContext(ValueError):
    """A causal context given by a client could not be decoded."""


ACTOR_SEPARATOR = "@"  # node ids may not contain it (NodeConfig.validate)


def actor(node_id: str, epoch: int) -> str:
    """The actor name a replica mints under: its node id and an epoch (base 36)."""
    if epoch <= 0:
        raise ValueError(f"an actor epoch is positive, not {epoch}")
    return f"{node_id}{ACTOR_SEPARATOR}{_base36(epoch)}"


def actor_epoch(name: str, node_id: str) -> int:
    """The epoch of `name` if it is one of `node_id`'s actors, else 0."""
    node, sep, epoch = name.rpartition(ACTOR_SEPARATOR)
    if not sep or node != node_id:
        return 0
    try:
        return int(epoch, 36)
    except ValueError:
        return 0


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


class Order(enum.Enum):
    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class Sibling:
    """One version of a key: the value written by the write named by the dot."""

    node: str
    counter: int
    past: Mapping[str, int] = field(default_factory=dict)
    value: bytes = b""
    tombstone: bool = False
    written_at_ms: int = 0

    @property
    def dot(self) -> tuple[str, int]:
        return (self.node, self.counter)

    def clock(self) -> Clock:
        """The version vector of this sibling: its past joined with its own dot."""
        out = dict(self.past)
        if out.get(self.node, 0) < self.counter:
            out[self.node] = self.counter
        return out


def covers(clock: Mapping[str, int], node: str, counter: int) -> bool:
    """Whether `clock` has seen the write named by dot (node, counter)."""
    return clock.get(node, 0) >= counter


def join(*clocks: Mapping[str, int]) -> Clock:
    """The least clock that covers all given clocks (pointwise maximum)."""
    out: Clock = {}
    for clock in clocks:
        for node, counter in clock.items():
            if out.get(node, 0) < counter:
                out[node] = counter
    return out


def descends(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """Whether `a` has seen everything `b` has."""
    return all(a.get(node, 0) >= counter for node, counter in b.items())


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> Order:
    a_ge_b, b_ge_a = descends(a, b), descends(b, a)
    if a_ge_b and b_ge_a:
        return Order.EQUAL
    if a_ge_b:
        return Order.AFTER
    if b_ge_a:
        return Order.BEFORE
    return Order.CONCURRENT


def prune(clock: Mapping[str, int], limit: int = MAX_CLOCK_ENTRIES) -> Clock:
    """Bound a clock's size by dropping its smallest counters (ties by node id).

    Safe direction: a pruned past covers fewer dots, so at worst a sibling survives that
    could have been discarded; no write is lost.
    """
    if len(clock) <= limit:
        return dict(clock)
    keep = sorted(clock.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return dict(keep)


def context_of(siblings: Iterable[Sibling]) -> Clock:
    """The causal context a reader gets: everything the siblings (tombstones included) saw."""
    return join(*(s.clock() for s in siblings))


def sync(ours: Sequence[Sibling], theirs: Sequence[Sibling]) -> list[Sibling]:
    """Merge two replicas' sibling sets; keep every sibling no other sibling supersedes."""
    by_dot: dict[tuple[str, int], Sibling] = {}
    for s in (*ours, *theirs):
        by_dot.setdefault(s.dot, s)
    candidates = list(by_dot.values())
    return sorted(
        (
            s
            for s in candidates
            if not any(o is not s and covers(o.past, s.node, s.counter) for o in candidates)
        ),
        key=lambda s: (s.node, s.counter),
    )


def update(
    local: Sequence[Sibling],
    context: Mapping[str, int],
    node: str,
    value: bytes,
    *,
    tombstone: bool = False,
    now_ms: int = 0,
    floor: int = 0,
) -> list[Sibling]:
    """Mint a write under actor `node`, given what the client saw (`context`).

    The counter exceeds every counter of `node` in `local`, in `context` and `floor` (the
    highest this replica ever minted under `node`). Siblings the context covers are
    replaced; the others stay beside the new one.
    """
    highest = max(context.get(node, 0), floor)
    for s in local:
        highest = max(highest, s.past.get(node, 0), s.counter if s.node == node else 0)
    new = Sibling(
        node=node,
        counter=highest + 1,
        past=prune(context),
        value=value,
        tombstone=tombstone,
        written_at_ms=now_ms,
    )
    assert not any(covers(s.clock(), node, new.counter) for s in local), \
        "a minted dot is fresh: no local version has seen it"
    kept = [s for s in local if not covers(context, s.node, s.counter)]
    return [*kept, new]


def live(siblings: Iterable[Sibling]) -> list[Sibling]:
    """The siblings a reader sees as values (tombstones hidden)."""
    return [s for s in siblings if not s.tombstone]


# --- wire codec -------------------------------------------------------------------------


def _clock_to_pb(clock: Mapping[str, int]) -> list[pb.ClockEntry]:
    return [pb.ClockEntry(node=n, counter=c) for n, c in sorted(clock.items())]


def _clock_from_pb(entries: Iterable[pb.ClockEntry]) -> Clock:
    return {e.node: e.counter for e in entries}


def sibling_to_pb(s: Sibling) -> pb.Version:
    return pb.Version(
        dot=pb.ClockEntry(node=s.node, counter=s.counter),
        past=_clock_to_pb(s.past),
        value=s.value,
        tombstone=s.tombstone,
        written_at_ms=s.written_at_ms,
    )


def sibling_from_pb(v: pb.Version) -> Sibling:
    return Sibling(
        node=v.dot.node,
        counter=v.dot.counter,
        past=_clock_from_pb(v.past),
        value=v.value,
        tombstone=v.tombstone,
        written_at_ms=v.written_at_ms,
    )


def to_pb(siblings: Iterable[Sibling]) -> pb.VersionSet:
    return pb.VersionSet(versions=[sibling_to_pb(s) for s in siblings])


def from_pb(state: pb.VersionSet) -> list[Sibling]:
    return [sibling_from_pb(v) for v in state.versions]


def encode(siblings: Iterable[Sibling]) -> bytes:
    """The stored record of a key."""
    return to_pb(siblings).SerializeToString(deterministic=True)


def decode(record: bytes | None) -> list[Sibling]:
    if not record:
        return []
    state = pb.VersionSet()
    state.ParseFromString(record)
    return from_pb(state)


@dataclass(slots=True)
class Record:
    """A replica's stored record of one key: its siblings plus what only it knows.

    `epoch` / `counter`: the actor epoch this replica mints the key's writes under, and
    the highest counter it minted under it (0 / 0: none yet). `purged`: a purge marker,
    the clock of tombstones collected here, which refuses every copy they covered until
    it expires (`purged_at_ms`, local clock). None of it is ever sent to peers.
    """

    siblings: list[Sibling] = field(default_factory=list)
    epoch: int = 0
    counter: int = 0
    purged: Clock = field(default_factory=dict)
    purged_at_ms: int = 0

    def knows(self) -> Clock:
        """Every event this record has seen: its siblings' clocks and its marker."""
        return join(context_of(self.siblings), self.purged)


def decode_record(record: bytes | None) -> Record:
    if not record:
        return Record()
    state = pb.VersionSet()
    state.ParseFromString(record)
    return Record(from_pb(state), state.actor_epoch, state.actor_counter,
                  _clock_from_pb(state.purged), state.purged_at_ms)


def marker_to_pb(state: pb.VersionSet, purged: Mapping[str, int], purged_at_ms: int) -> None:
    """Add a purge marker to a VersionSet sent to a peer (anti-entropy spreads purges)."""
    state.purged.extend(_clock_to_pb(purged))
    state.purged_at_ms = purged_at_ms


def marker_from_pb(state: pb.VersionSet) -> tuple[Clock, int]:
    """The purge marker a peer sent ({} when none) and when it was first collected."""
    return _clock_from_pb(state.purged), state.purged_at_ms


def encode_record(rec: Record) -> bytes:
    state = to_pb(rec.siblings)
    state.actor_epoch = rec.epoch
    state.actor_counter = rec.counter
    marker_to_pb(state, rec.purged, rec.purged_at_ms)
    return state.SerializeToString(deterministic=True)


def encode_context(clock: Mapping[str, int]) -> bytes:
    """The opaque context handed to clients."""
    return pb.Context(clock=_clock_to_pb(clock)).SerializeToString(deterministic=True)


def decode_context(data: bytes) -> Clock:
    if not data:
        return {}
    msg = pb.Context()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidContext(
            "the causal context is not one this store issued; pass the context returned by get"
        ) from exc
    clock = _clock_from_pb(msg.clock)
    if any(not node or counter <= 0 for node, counter in clock.items()):
        raise InvalidContext("the causal context has an empty node id or a zero counter")
    if len(clock) > 4 * MAX_CLOCK_ENTRIES:
        raise InvalidContext(f"the causal context has {len(clock)} entries; at most "
                             f"{4 * MAX_CLOCK_ENTRIES} are allowed")
    return clock


def context_to_text(data: bytes) -> str:
    """A printable form of an opaque context (for the CLI and JSON)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def context_from_text(text: str) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidContext("the context is not the base64 text `kv get --json` prints") from exc
    decode_context(data)  # reject what is not a context now, with the same clear message
    return data


def format_clock(clock: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{n}:{c}" for n, c in sorted(clock.items())) + "}"
