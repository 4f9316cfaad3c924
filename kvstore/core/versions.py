"""Versions of a key: dotted version vectors, siblings and causal contexts.

Each stored value is a *sibling* carrying a dot ``(node, counter)`` that names the write
which made it, and a ``past``: the causal context that write superseded. A sibling is
obsolete when another sibling's past covers its dot. This is the dotted-version-vector
form (Preguiça et al.; adopted by Riak 2.0): because a dot names exactly one write, a
replica never keeps more siblings than there were truly concurrent writes, however many
clients and coordinators took part.

Rules the rest of the system relies on:

* A write is *minted* only at a replica of its key (`update`), which picks a counter
  greater than any counter of its own it has seen for the key, and then replicates its
  whole resulting sibling set. So whoever holds dot ``(n, c)`` also holds (or has seen
  superseded) every earlier dot of ``n`` for that key, and a context entry ``n: c`` may
  safely stand for all of them.
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
) -> list[Sibling]:
    """Mint a write at replica `node`, given what the client saw (`context`).

    Siblings the context covers are replaced; the others stay beside the new one.
    """
    highest = context.get(node, 0)
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
