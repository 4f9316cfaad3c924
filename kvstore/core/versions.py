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
* A context (`Context`) is a version vector plus single dots beyond it. A reader's
  context is the join of what it read. A writer's context after a put is what it had seen
  plus its own new dot: that dot joins the vector only when no sibling the writer had not
  seen sits below it (`context_after_write`); otherwise it stays a single dot, because
  ``n: c`` would also claim the unseen ``(n, c')``, c' < c, and a later write with that
  context would silently supersede a concurrent write. A sibling keeps the single dots
  its write superseded in `seen`, so every replica drops exactly those.
* Fencing (docs/architecture.md, "Fencing"): a guarded write carries its lock and token
  (`Sibling.fence`), and every version carries the highest token per lock its writer had
  seen (`Sibling.fences`, inherited through contexts and the versions it superseded). A
  version is *fenced out* while its key also holds a version that knows a higher token of
  its lock (`fenced_out`): reads do not return it, as they do not return tombstones, and
  contexts cover it, so the next write that read the key supersedes it. `sync` itself is
  unchanged (the plain DVV merge, so it stays commutative, associative and idempotent),
  and whether a version is fenced out is a function of the merged set, so every replica
  that holds the same versions shows the same values. Dropping fenced-out versions inside
  `sync` instead is not associative (a fenced-out version may have superseded another,
  which would come back or not depending on the order of merges;
  tests/property/test_versions_props.py has the example). A version's own token is never
  below what its writer had seen of its lock (`update` refuses it: `StaleFence`), so a
  lower token never supersedes a higher one.

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
MAX_SEEN_DOTS = 64  # single dots a context or a sibling carries beyond its version vector
MAX_FENCE_LOCKS = 64  # locks a version's or a context's `fences` keeps (the highest tokens)
MAX_LOCK_BYTES = 256  # a lock name in a fence, UTF-8
MAX_TOKEN = 2**63 - 1  # stored as a SQLite INTEGER (signed 64-bit)
Clock = dict[str, int]
Dot = tuple[str, int]
Fence = tuple[str, int]  # (lock, token), token >= 1
Fences = dict[str, int]  # lock -> the highest token known


class InvalidContext(ValueError):
    """A causal context given by a client could not be decoded."""


class InvalidFence(ValueError):
    """A fence given by a client is not `LOCK:TOKEN` with a token of 1 or more."""


class StaleFence(ValueError):
    """A guarded write's token is below the highest known for its lock (`update`)."""

    def __init__(self, lock: str, token: int, highest: int) -> None:
        super().__init__(f"lock {lock!r} token {token} is below the highest token seen for "
                         f"it, {highest}")
        self.lock, self.token, self.highest = lock, token, highest


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
    # Single dots this write superseded beyond `past` (from a writer's context that held
    # its own earlier write as a single dot): dropped wherever this sibling is merged.
    seen: frozenset[Dot] = frozenset()
    # A guarded write's (lock, token); None for other writes.
    fence: Fence | None = None
    # The highest token per lock its writer had seen (beyond its own fence).
    fences: Mapping[str, int] = field(default_factory=dict)

    @property
    def dot(self) -> tuple[str, int]:
        return (self.node, self.counter)

    def clock(self) -> Clock:
        """The version vector of this sibling: its past joined with its own dot."""
        out = dict(self.past)
        if out.get(self.node, 0) < self.counter:
            out[self.node] = self.counter
        return out

    def supersedes(self, node: str, counter: int) -> bool:
        """Whether the write that made this sibling had seen the write (node, counter)."""
        return covers(self.past, node, counter) or (node, counter) in self.seen

    def fence_horizon(self) -> Fences:
        """The highest token per lock this version knows: its `fences` and its own fence."""
        if self.fence is None:
            return dict(self.fences)
        out = dict(self.fences)
        lock, token = self.fence
        if out.get(lock, 0) < token:
            out[lock] = token
        return out


@dataclass(frozen=True, slots=True)
class Context:
    """What a client has seen: a version vector, plus single dots beyond it."""

    clock: Mapping[str, int] = field(default_factory=dict)
    dots: frozenset[Dot] = frozenset()
    # The highest token per lock of the versions seen (fenced-out ones included).
    fences: Mapping[str, int] = field(default_factory=dict)

    def covers(self, node: str, counter: int) -> bool:
        return covers(self.clock, node, counter) or (node, counter) in self.dots

    def horizon(self) -> Clock:
        """The highest counter of every actor this context names (dots included)."""
        out = dict(self.clock)
        for node, counter in self.dots:
            if out.get(node, 0) < counter:
                out[node] = counter
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


def horizon(siblings: Sequence[Sibling]) -> Clock:
    """The highest counter of every actor the siblings know of, single dots included.

    Not a context to hand a client (it may cover versions none of the siblings had seen):
    it is what a replica knows was minted, for purge markers and for fresh-dot checks.
    """
    out = context_of(siblings)
    for s in siblings:
        for node, counter in s.seen:
            if out.get(node, 0) < counter:
                out[node] = counter
    return out


def _bounded(dots: Iterable[Dot], clock: Mapping[str, int]) -> frozenset[Dot]:
    """The dots `clock` does not cover, at most MAX_SEEN_DOTS (the highest counters).

    Dropping a dot only makes a write look less known: an extra sibling, never a lost one.
    """
    rest = {d for d in dots if not covers(clock, *d)}
    if len(rest) <= MAX_SEEN_DOTS:
        return frozenset(rest)
    return frozenset(sorted(rest, key=lambda d: (-d[1], d[0]))[:MAX_SEEN_DOTS])


def read_context(siblings: Sequence[Sibling]) -> Context:
    """The context a reader of `siblings` gets: their clocks joined, their single dots,
    and the highest token per lock they know."""
    clock = context_of(siblings)
    return Context(clock, _bounded((d for s in siblings for d in s.seen), clock),
                   bound_fences(fences_of(siblings)))


def context_after_write(seen: Context, siblings: Sequence[Sibling], new: Sibling) -> Context:
    """The context a writer holds after its write: what it had seen, plus the write.

    `siblings` is the key's sibling set at the replica that minted `new` (`new` among
    them). Every earlier dot of the minting node is on that replica, kept or superseded by
    a sibling there, so `new`'s dot can join the version vector exactly when no sibling
    the writer had not seen has a dot of that node below it; otherwise it is carried as a
    single dot. (A superseded dot the vector then also covers is harmless: the sibling
    that superseded it is kept, and drops it anyway.)
    """
    clock = dict(seen.clock)
    fences = bound_fences(join(seen.fences, new.fence_horizon()))
    below = clock.get(new.node, 0)
    unseen_below = any(
        s.node == new.node and below < s.counter < new.counter and not seen.covers(*s.dot)
        for s in siblings
    )
    if unseen_below:
        return Context(clock, _bounded({*seen.dots, new.dot}, clock), fences)
    clock[new.node] = max(below, new.counter)
    return Context(clock, _bounded(seen.dots, clock), fences)


# --- fencing ----------------------------------------------------------------------------


def fences_of(siblings: Iterable[Sibling]) -> Fences:
    """The highest token per lock any of `siblings` knows (own fences and inherited)."""
    out: Fences = {}
    for s in siblings:
        if s.fences:
            for lock, token in s.fences.items():
                if out.get(lock, 0) < token:
                    out[lock] = token
        if s.fence is not None:
            lock, token = s.fence
            if out.get(lock, 0) < token:
                out[lock] = token
    return out


def fenced_out(siblings: Sequence[Sibling]) -> set[Dot]:
    """The dots of the guarded versions whose token is below what another version of the
    same set knows of their lock: hidden from reads until a write supersedes them."""
    if not any(s.fence is not None for s in siblings):
        return set()
    high = fences_of(siblings)
    return {s.dot for s in siblings if s.fence is not None and s.fence[1] < high[s.fence[0]]}


def fence_floor(lock: str, context: Context, local: Iterable[Sibling]) -> int:
    """The highest token of `lock` a write minted with `context` over `local` must reach."""
    return max(context.fences.get(lock, 0), fences_of(local).get(lock, 0))


def bound_fences(fences: Mapping[str, int], limit: int = MAX_FENCE_LOCKS) -> Fences:
    """At most `limit` locks, the highest tokens kept (tokens are Raft revisions: the most
    recent grants). Dropping a lock only weakens what is hidden or refused for it."""
    if len(fences) <= limit:
        return dict(fences)
    return dict(sorted(fences.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])


def check_fence(lock: str, token: int) -> None:
    """Raise InvalidFence unless (lock, token) is a fence a write may carry."""
    if not lock:
        raise InvalidFence("the fence's lock name is empty; give LOCK:TOKEN")
    if len(lock.encode("utf-8")) > MAX_LOCK_BYTES:
        raise InvalidFence(f"the fence's lock name is {len(lock.encode('utf-8'))} bytes; "
                           f"the limit is {MAX_LOCK_BYTES}")
    if not 1 <= token <= MAX_TOKEN:
        raise InvalidFence(f"the fence's token must be 1..{MAX_TOKEN}, not {token}")


def parse_fence(text: str) -> Fence:
    """`LOCK:TOKEN` (the token decimal, after the last colon; the lock may hold colons)."""
    lock, sep, token = text.strip().rpartition(":")
    if not sep or not token.isdigit() or not token.isascii():
        raise InvalidFence(f"fence {text!r} is not LOCK:TOKEN (TOKEN a decimal number, as "
                           "`kv lock` prints it)")
    check_fence(lock, int(token))
    return lock, int(token)


def format_fence(fence: Fence) -> str:
    return f"{fence[0]}:{fence[1]}"


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
            if not any(o is not s and o.supersedes(s.node, s.counter) for o in candidates)
        ),
        key=lambda s: (s.node, s.counter),
    )


def update(
    local: Sequence[Sibling],
    context: Mapping[str, int] | Context,
    node: str,
    value: bytes,
    *,
    tombstone: bool = False,
    now_ms: int = 0,
    floor: int = 0,
    fence: Fence | None = None,
) -> list[Sibling]:
    """Mint a write under actor `node`, given what the client saw (`context`).

    The counter exceeds every counter of `node` in `local` (single dots included), in
    `context` and `floor` (the highest this replica ever minted under `node`). Siblings
    the context covers are replaced; the others stay beside the new one, which is last in
    the returned list. A guarded write (`fence`) whose token is below what the context or
    `local` knows of its lock raises StaleFence. The new version inherits the highest
    tokens of the context and of the versions it supersedes.
    """
    seen = context if isinstance(context, Context) else Context(context)
    if fence is not None:
        highest = fence_floor(fence[0], seen, local)
        if fence[1] < highest:
            raise StaleFence(fence[0], fence[1], highest)
    highest = max([seen.clock.get(node, 0), floor, *(c for n, c in seen.dots if n == node)])
    for s in local:
        highest = max(highest, s.past.get(node, 0), s.counter if s.node == node else 0)
        for n, c in s.seen:
            if n == node and c > highest:
                highest = c
    past = prune(seen.clock)
    kept, superseded = [], []
    for s in local:
        (superseded if seen.covers(s.node, s.counter) else kept).append(s)
    inherited = join(seen.fences, fences_of(superseded))
    if fence is not None:
        assert inherited.get(fence[0], 0) <= fence[1], "a guarded write is not stale"
        inherited.pop(fence[0], None)  # its own fence says it
    new = Sibling(
        node=node,
        counter=highest + 1,
        past=past,
        value=value,
        tombstone=tombstone,
        written_at_ms=now_ms,
        seen=_bounded(seen.dots, past),
        fence=fence,
        fences=bound_fences(inherited),
    )
    assert not any(covers(s.clock(), node, new.counter) or s.supersedes(*new.dot)
                   for s in local), "a minted dot is fresh: no local version has seen it"
    return [*kept, new]


def live(siblings: Sequence[Sibling]) -> list[Sibling]:
    """The siblings a reader sees as values: tombstones and fenced-out versions hidden."""
    hidden = fenced_out(siblings)
    return [s for s in siblings if not s.tombstone and s.dot not in hidden]


# --- wire codec -------------------------------------------------------------------------


# The codecs fill repeated fields in place (`add`) rather than building submessages and
# handing lists to constructors: with upb each constructor argument is a copy, which made
# `to_pb` of one version ~2.5x slower than this (docs/benchmarks.md, "Where the CPU goes").


def _fill_clock(field, clock: Mapping[str, int]) -> None:
    add = field.add
    for n, c in sorted(clock.items()):
        add(node=n, counter=c)


def _clock_to_pb(clock: Mapping[str, int]) -> list[pb.ClockEntry]:
    return [pb.ClockEntry(node=n, counter=c) for n, c in sorted(clock.items())]


def _clock_from_pb(entries: Iterable[pb.ClockEntry]) -> Clock:
    return {e.node: e.counter for e in entries}


def _dots_to_pb(dots: Iterable[Dot]) -> list[pb.ClockEntry]:
    return [pb.ClockEntry(node=n, counter=c) for n, c in sorted(dots)]


def fences_to_pb(fences: Mapping[str, int]) -> list[pb.Fence]:
    return [pb.Fence(lock=lock, token=token) for lock, token in sorted(fences.items())]


def fences_from_pb(entries: Iterable[pb.Fence]) -> Fences:
    out: Fences = {}
    for e in entries:
        if e.token and out.get(e.lock, 0) < e.token:
            out[e.lock] = e.token
    return out


def fence_from_pb(f: pb.Fence) -> Fence | None:
    """A fence field: None when unset (token 0)."""
    return (f.lock, f.token) if f.token else None


def fill_version(v: pb.Version, s: Sibling) -> pb.Version:
    """Write sibling `s` into the empty Version `v` (a fresh one or a repeated field's)."""
    dot = v.dot
    dot.node, dot.counter = s.node, s.counter
    if s.past:
        _fill_clock(v.past, s.past)
    if s.value:
        v.value = s.value
    if s.tombstone:
        v.tombstone = True
    if s.written_at_ms:
        v.written_at_ms = s.written_at_ms
    if s.seen:
        add = v.seen.add
        for n, c in sorted(s.seen):
            add(node=n, counter=c)
    if s.fence is not None:
        v.fence.lock, v.fence.token = s.fence
    if s.fences:
        add = v.fences.add
        for lock, token in sorted(s.fences.items()):
            add(lock=lock, token=token)
    return v


def sibling_to_pb(s: Sibling) -> pb.Version:
    return fill_version(pb.Version(), s)


_NO_DOTS: frozenset[Dot] = frozenset()


def sibling_from_pb(v: pb.Version) -> Sibling:
    dot, fence = v.dot, v.fence
    return Sibling(
        dot.node,
        dot.counter,
        {e.node: e.counter for e in v.past},
        v.value,
        v.tombstone,
        v.written_at_ms,
        frozenset([(e.node, e.counter) for e in v.seen]) if len(v.seen) else _NO_DOTS,
        (fence.lock, fence.token) if fence.token else None,
        fences_from_pb(v.fences) if len(v.fences) else {},
    )


def to_pb(siblings: Iterable[Sibling]) -> pb.VersionSet:
    state = pb.VersionSet()
    add = state.versions.add
    for s in siblings:
        fill_version(add(), s)
    return state


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
        """Every event this record has seen: its siblings' clocks and single dots, and its
        marker."""
        return join(horizon(self.siblings), self.purged)


def decode_record(record: bytes | None) -> Record:
    if not record:
        return Record()
    state = pb.VersionSet()
    state.ParseFromString(record)
    return Record(from_pb(state), state.actor_epoch, state.actor_counter,
                  _clock_from_pb(state.purged), state.purged_at_ms)


def marker_to_pb(state: pb.VersionSet, purged: Mapping[str, int], purged_at_ms: int) -> None:
    """Add a purge marker to a VersionSet sent to a peer (anti-entropy spreads purges)."""
    if purged:
        _fill_clock(state.purged, purged)
    if purged_at_ms:
        state.purged_at_ms = purged_at_ms


def marker_from_pb(state: pb.VersionSet) -> tuple[Clock, int]:
    """The purge marker a peer sent ({} when none) and when it was first collected."""
    return _clock_from_pb(state.purged), state.purged_at_ms


def encode_record(rec: Record, wire: list[pb.VersionSet] | None = None) -> bytes:
    """The stored bytes of a record. `wire`: also append the record's versions as a peer
    gets them (a VersionSet without this replica's own bookkeeping or marker), built in the
    same pass rather than encoded again."""
    state = to_pb(rec.siblings)
    state.actor_epoch = rec.epoch
    state.actor_counter = rec.counter
    marker_to_pb(state, rec.purged, rec.purged_at_ms)
    record = state.SerializeToString(deterministic=True)
    if wire is not None:
        for name in ("actor_epoch", "actor_counter", "purged", "purged_at_ms"):
            state.ClearField(name)
        wire.append(state)
    return record


def encode_context(context: Mapping[str, int] | Context) -> bytes:
    """The opaque context handed to clients."""
    msg = pb.Context()
    if isinstance(context, Context):
        _fill_clock(msg.clock, context.clock)
        if context.dots:
            add = msg.dots.add
            for n, c in sorted(context.dots):
                add(node=n, counter=c)
        if context.fences:
            add = msg.fences.add
            for lock, token in sorted(context.fences.items()):
                add(lock=lock, token=token)
    else:
        _fill_clock(msg.clock, context)
    return msg.SerializeToString(deterministic=True)


def parse_context(data: bytes) -> Context:
    """A context from a client: its version vector and its single dots."""
    if not data:
        return Context()
    msg = pb.Context()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidContext(
            "the causal context is not one this store issued; pass the context returned by get"
        ) from exc
    clock = _clock_from_pb(msg.clock)
    dots = frozenset((e.node, e.counter) for e in msg.dots)
    if any(not node or counter <= 0 for node, counter in (*clock.items(), *dots)):
        raise InvalidContext("the causal context has an empty node id or a zero counter")
    if len(clock) > 4 * MAX_CLOCK_ENTRIES or len(dots) > 4 * MAX_SEEN_DOTS \
            or len(msg.fences) > 4 * MAX_FENCE_LOCKS:
        raise InvalidContext(f"the causal context has {len(clock)} entries, {len(dots)} "
                             f"single dots and {len(msg.fences)} fences; at most "
                             f"{4 * MAX_CLOCK_ENTRIES}, {4 * MAX_SEEN_DOTS} and "
                             f"{4 * MAX_FENCE_LOCKS} are allowed")
    return Context(clock, dots, fences_from_pb(msg.fences))


def decode_context(data: bytes) -> Clock:
    """The version-vector part of a client's context (see `parse_context` for all of it)."""
    return dict(parse_context(data).clock)


def context_to_text(data: bytes) -> str:
    """A printable form of an opaque context (for the CLI and JSON)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def context_from_text(text: str) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidContext("the context is not the base64 text `kv get --json` prints") from exc
    parse_context(data)  # reject what is not a context now, with the same clear message
    return data


def format_clock(clock: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{n}:{c}" for n, c in sorted(clock.items())) + "}"
