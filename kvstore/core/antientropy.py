"""The Merkle anti-entropy exchange between two replicas of one range, sans-IO.

Two objects speak a request/reply protocol over bytes; neither touches storage or the
network. The *initiator* drives; the *responder* answers each request from its tree (and,
for key requests, from entries its caller scans). Each side asks its caller for storage
entries with a `NeedEntries` action and is told them with `provide_entries`.

Message flow (one range, both trees of the same shape — same range and depth)::

    initiator                                         responder
    HASHES(level l, [(index, hash)] <= max_nodes) -->
                                                 <--  DIFF(bitmap: which of those differ)
    ... level by level, children of differing nodes only, down to the leaves ...
    NeedEntries(token ranges of a batch of differing leaves) -> caller scans storage
    KEYS(leaves, [(key, digest)] of those leaves)  -->
                                                      NeedEntries(same leaves) -> caller scans
                                                 <--  KEYS_REPLY(indices: digest differs,
                                                        indices: responder lacks the key,
                                                        keys the initiator lacks)
    ... next batch of leaves ...
    Done(Result: differing leaves, keys to push, keys to fetch, matched keys, stats)

The initiator then moves the records itself: it sends its version sets of `push` to the
responder and fetches the responder's version sets of `fetch` (keys whose digests differ
are in both lists), merging with `versions.sync` on each side. So the responder keeps no
state between requests: the node may build one `Responder` per request or per peer.

Every message starts with a magic byte, a format version, a type and the tree's shape;
decoding checks every length, index and key (a key must hash into a listed leaf). Bad
bytes raise `ProtocolError` (the peer broke the protocol) and leave the session unchanged,
so the caller may drop the reply and retry or abort. Calling a method out of turn raises
`SessionStateError` (local misuse).

Writes that land during a session may make the two sides disagree about a node they
already compared; at worst a difference is found by the next round, never a wrong repair
(records are merged with `sync`, which only ever adds what the other side holds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvstore.core.merkle import DIGEST_SIZE, MerkleTree, in_range, merge_leaves
from kvstore.core.ring import token_of

MAGIC = 0xAE
FORMAT_VERSION = 1
T_HASHES, T_DIFF, T_KEYS, T_KEYS_REPLY = 1, 2, 3, 4
HASH_SIZE = 8

DEFAULT_MAX_NODES = 512  # hashes per HASHES message: ~5 KiB
DEFAULT_MAX_KEYS = 2048  # (key, digest) entries per KEYS message (whole leaves, see below)
DEFAULT_LEAF_BATCH = 64  # leaves whose entries are held in memory at once
# Hard limits a responder enforces on what it is sent, whatever the sender's settings.
LIMIT_NODES = 1 << 16
LIMIT_ENTRIES = 1 << 18
LIMIT_KEY_BYTES = 65535

TokenRange = tuple[int, int]  # (start exclusive, end inclusive), as Engine.scan takes
Entry = tuple[int, bytes, bytes]  # (token, key, version digest), as a storage scan yields


class ProtocolError(ValueError):
    """The peer sent bytes that are not a valid message for this point of the session."""


class SessionStateError(RuntimeError):
    """The local caller used the session out of turn (a bug in the driver)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send these bytes to the peer (initiator: as a request; responder: as the reply)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedEntries:
    """Scan these token ranges and pass every (token, key, digest) to `provide_entries`."""

    ranges: list[TokenRange]


@dataclass(slots=True)
class Stats:
    """Counters for one or more sessions; `summary()` gives the `kv repair --json` keys."""

    ranges_compared: int = 0
    leaves_differing: int = 0
    keys_sent: int = 0
    keys_received: int = 0
    bytes_transferred: int = 0  # session messages both ways; add record bytes as you move them
    messages: int = 0  # messages both ways
    hashes_exchanged: int = 0
    digests_exchanged: int = 0

    def __add__(self, other: Stats) -> Stats:
        return Stats(*(getattr(self, f) + getattr(other, f) for f in self.__slots__))

    def summary(self) -> dict[str, int]:
        return {
            "ranges_compared": self.ranges_compared,
            "leaves_differing": self.leaves_differing,
            "keys_sent": self.keys_sent,
            "keys_received": self.keys_received,
            "bytes_transferred": self.bytes_transferred,
        }


@dataclass(slots=True)
class Result:
    """What one initiator session found."""

    differing_leaves: list[int] = field(default_factory=list)
    push: list[bytes] = field(default_factory=list)  # initiator must send these keys
    fetch: list[bytes] = field(default_factory=list)  # initiator must get these keys
    matched: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, digest) equal
    stats: Stats = field(default_factory=Stats)


@dataclass(frozen=True, slots=True)
class Done:
    result: Result


Action = Send | NeedEntries | Done


# --- codec ------------------------------------------------------------------------------


class _Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf.append(v)

    def varint(self, v: int) -> None:
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)

    def raw(self, b: bytes) -> None:
        self.buf += b

    def ascending(self, values: list[int]) -> None:
        """A strictly ascending list as a count and deltas (small varints)."""
        self.varint(len(values))
        prev = -1
        for v in values:
            self.varint(v - prev - 1)
            prev = v


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"message truncated at byte {self.pos} (needed {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int = 1 << 64) -> int:
        value = shift = 0
        while True:
            b = self.u8()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ProtocolError(f"varint too long at byte {self.pos}")
        if value > limit:
            raise ProtocolError(f"value {value} exceeds the limit {limit} at byte {self.pos}")
        return value

    def ascending(self, bound: int, limit: int) -> list[int]:
        count = self.varint(limit)
        out: list[int] = []
        prev = -1
        for _ in range(count):
            v = prev + 1 + self.varint(bound)
            if v >= bound:
                raise ProtocolError(f"index {v} out of range (< {bound})")
            out.append(v)
            prev = v
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes after the message")


def _header(w: _Writer, kind: int, tree: MerkleTree) -> None:
    w.u8(MAGIC)
    w.u8(FORMAT_VERSION)
    w.u8(kind)
    w.raw(tree.start.to_bytes(8, "big", signed=True))
    w.raw(tree.end.to_bytes(8, "big", signed=True))
    w.u8(tree.depth)


def _read_header(data: bytes, tree: MerkleTree, kinds: tuple[int, ...]) -> tuple[_Reader, int]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    if r.u8() != MAGIC:
        raise ProtocolError("not an anti-entropy message (bad magic byte)")
    version = r.u8()
    if version != FORMAT_VERSION:
        raise ProtocolError(f"unsupported anti-entropy format {version} (this node speaks "
                            f"{FORMAT_VERSION})")
    kind = r.u8()
    if kind not in kinds:
        raise ProtocolError(f"unexpected message type {kind} here (expected one of {kinds})")
    start = int.from_bytes(r.take(8), "big", signed=True)
    end = int.from_bytes(r.take(8), "big", signed=True)
    depth = r.u8()
    if (start, end, depth) != (tree.start, tree.end, tree.depth):
        raise ProtocolError(
            f"tree shape mismatch: peer has ({start}, {end}] depth {depth}, we have "
            f"({tree.start}, {tree.end}] depth {tree.depth}; both sides must agree on the ring"
        )
    return r, kind


def peek_shape(data: bytes) -> tuple[int, int, int]:
    """(start, end, depth) of the tree a message is about, so a node can pick its tree for
    a `Responder` before decoding the rest. ProtocolError if it is no anti-entropy message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    r = _Reader(bytes(data[:20]))
    if r.u8() != MAGIC:
        raise ProtocolError("not an anti-entropy message (bad magic byte)")
    r.take(2)
    start = int.from_bytes(r.take(8), "big", signed=True)
    end = int.from_bytes(r.take(8), "big", signed=True)
    return start, end, r.u8()


def _bitmap(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _remote_leaf(tree: MerkleTree, key: bytes) -> int | None:
    token = token_of(key)
    return tree.leaf_of(token) if in_range(token, tree.start, tree.end) else None


def _read_entries(r: _Reader, tree: MerkleTree, leaves: set[int]) -> list[tuple[bytes, bytes]]:
    count = r.varint(LIMIT_ENTRIES)
    out: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for _ in range(count):
        key = r.take(r.varint(LIMIT_KEY_BYTES))
        digest = r.take(DIGEST_SIZE)
        if _remote_leaf(tree, key) not in leaves:
            raise ProtocolError(f"key {key[:32]!r} does not belong to the leaves listed")
        if key in seen:
            raise ProtocolError(f"key {key[:32]!r} listed twice")
        seen.add(key)
        out.append((key, digest))
    return out


def _group_local(tree: MerkleTree, entries: Iterable[Entry], leaves: set[int]
                 ) -> dict[int, list[tuple[bytes, bytes]]]:
    by_leaf: dict[int, list[tuple[bytes, bytes]]] = {leaf: [] for leaf in leaves}
    for token, key, digest in entries:
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"digest of key {key[:32]!r} is {len(digest)} bytes, "
                             f"not {DIGEST_SIZE}")
        leaf = tree.leaf_of(token)
        if leaf not in by_leaf:
            raise ValueError(f"entry for key {key[:32]!r} is outside the requested ranges")
        by_leaf[leaf].append((key, digest))
    return by_leaf


# --- initiator --------------------------------------------------------------------------


class Initiator:
    """Drives one exchange: call `next_action()` and do what it says until `Done`.

    `start_level` skips the top of the tree (sending all 2**start_level hashes at once);
    `force_leaves` adds leaves whose keys are compared even if their hashes match (the
    tombstone sweep uses this to get per-key confirmations in `Result.matched`).
    """

    def __init__(
        self,
        tree: MerkleTree,
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_keys: int = DEFAULT_MAX_KEYS,
        leaf_batch: int = DEFAULT_LEAF_BATCH,
        start_level: int = 0,
        force_leaves: Iterable[int] = (),
    ) -> None:
        if not 1 <= max_nodes <= LIMIT_NODES:
            raise ValueError(f"max_nodes must be in 1..{LIMIT_NODES}")
        if not 1 <= max_keys <= LIMIT_ENTRIES:
            raise ValueError(f"max_keys must be in 1..{LIMIT_ENTRIES}")
        if leaf_batch < 1:
            raise ValueError("leaf_batch must be at least 1")
        self.tree = tree
        self.max_nodes = max_nodes
        self.max_keys = max_keys
        self.leaf_batch = leaf_batch
        self.forced = {int(leaf) for leaf in force_leaves}
        if any(not 0 <= leaf < tree.leaves for leaf in self.forced):
            raise ValueError(f"force_leaves must be within 0..{tree.leaves - 1}")
        start_level = min(start_level, tree.depth)
        self.result = Result()
        self.result.stats.ranges_compared = 1
        self._level = start_level
        self._todo: list[int] = list(range(1 << start_level))  # indices at self._level
        self._next: list[int] = []
        self._sent: tuple[int, list[int]] | None = None  # HASHES in flight (level, indices)
        self._differing: list[int] = []
        self._batches: list[list[int]] | None = None  # key phase: batches of leaves
        self._messages: list[tuple[list[int], list[tuple[bytes, bytes]]]] = []
        self._keys_sent: tuple[list[int], list[tuple[bytes, bytes]]] | None = None
        self._need: list[int] | None = None  # leaves whose entries we asked the caller for
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def next_action(self) -> Action:
        """What the caller must do next.

        `Send`: deliver the bytes and pass the reply to `receive` (asking again before that
        is a `SessionStateError`). `NeedEntries`: call `provide_entries` (asking again
        returns the same ranges). `Done`: the session is over; `Done` again thereafter.
        """
        if self._done:
            return Done(self.result)
        if self._sent is not None or self._keys_sent is not None:
            raise SessionStateError("a request is in flight: pass its reply to receive()")
        if self._batches is None:
            if self._todo or self._next:
                return Send(self._hashes_request())
            self._start_key_phase()
        if self._need is not None:
            return NeedEntries(self._ranges(self._need))
        if self._messages:
            return Send(self._keys_request())
        if self._batches:
            self._need = self._batches.pop(0)
            return NeedEntries(self._ranges(self._need))
        self._done = True
        return Done(self.result)

    def provide_entries(self, entries: Iterable[Entry]) -> None:
        """Every local (token, key, digest) in the ranges of the last `NeedEntries`."""
        if self._need is None:
            raise SessionStateError("no entries were asked for")
        by_leaf = _group_local(self.tree, entries, set(self._need))
        messages: list[tuple[list[int], list[tuple[bytes, bytes]]]] = []
        leaves: list[int] = []
        batch: list[tuple[bytes, bytes]] = []
        for leaf in sorted(by_leaf):
            items = by_leaf[leaf]
            if leaves and len(batch) + len(items) > self.max_keys:
                messages.append((leaves, batch))
                leaves, batch = [], []
            leaves.append(leaf)
            batch.extend(items)
        if leaves:
            messages.append((leaves, batch))
        self._messages = messages
        self._need = None

    def receive(self, data: bytes) -> None:
        """The responder's reply to the request last sent; ProtocolError leaves no trace."""
        if self._sent is not None:
            self._receive_diff(data)
        elif self._keys_sent is not None:
            self._receive_keys_reply(data)
        else:
            raise SessionStateError("no request is in flight")

    # -- tree phase

    def _hashes_request(self) -> bytes:
        if not self._todo:
            self._level += 1
            self._todo, self._next = self._next, []
        chunk, self._todo = self._todo[: self.max_nodes], self._todo[self.max_nodes :]
        w = _Writer()
        _header(w, T_HASHES, self.tree)
        w.u8(self._level)
        w.ascending(chunk)
        for index in chunk:
            w.raw(self.tree.node_hash(self._level, index).to_bytes(HASH_SIZE, "big"))
        self._sent = (self._level, chunk)
        self.result.stats.hashes_exchanged += len(chunk)
        return self._count_out(bytes(w.buf))

    def _receive_diff(self, data: bytes) -> None:
        assert self._sent is not None
        level, chunk = self._sent
        r, _ = _read_header(data, self.tree, (T_DIFF,))
        if r.u8() != level:
            raise ProtocolError("DIFF answers a different level than the one asked")
        count = r.varint(LIMIT_NODES)
        if count != len(chunk):
            raise ProtocolError(f"DIFF covers {count} nodes; {len(chunk)} were sent")
        bits = r.take((count + 7) // 8)
        r.end()
        if count % 8 and bits[-1] >> (count % 8):
            raise ProtocolError("DIFF bitmap has bits set past its last node")
        differing = [idx for i, idx in enumerate(chunk) if bits[i >> 3] >> (i & 7) & 1]
        self._count_in(data)
        self._sent = None
        if level == self.tree.depth:
            self._differing.extend(differing)
        else:
            for idx in differing:
                self._next.extend((2 * idx, 2 * idx + 1))

    # -- key phase

    def _start_key_phase(self) -> None:
        self._differing.sort()
        self.result.differing_leaves = list(self._differing)
        self.result.stats.leaves_differing = len(self._differing)
        leaves = sorted(set(self._differing) | self.forced)
        self._batches = [leaves[i : i + self.leaf_batch]
                         for i in range(0, len(leaves), self.leaf_batch)]

    def _ranges(self, leaves: list[int]) -> list[TokenRange]:
        return [self.tree.leaves_range(a, b) for a, b in merge_leaves(leaves)]

    def _keys_request(self) -> bytes:
        leaves, entries = self._messages.pop(0)
        w = _Writer()
        _header(w, T_KEYS, self.tree)
        w.ascending(leaves)
        w.varint(len(entries))
        for key, digest in entries:
            w.varint(len(key))
            w.raw(key)
            w.raw(digest)
        self._keys_sent = (leaves, entries)
        self.result.stats.digests_exchanged += len(entries)
        return self._count_out(bytes(w.buf))

    def _receive_keys_reply(self, data: bytes) -> None:
        assert self._keys_sent is not None
        leaves, entries = self._keys_sent
        r, _ = _read_header(data, self.tree, (T_KEYS_REPLY,))
        if r.varint(LIMIT_ENTRIES) != len(entries):
            raise ProtocolError("KEYS_REPLY answers a different number of entries than sent")
        differ = r.ascending(len(entries), LIMIT_ENTRIES)
        missing = r.ascending(len(entries), LIMIT_ENTRIES)
        if set(differ) & set(missing):
            raise ProtocolError("KEYS_REPLY lists an entry as both differing and missing")
        ours = {key for key, _ in entries}
        leaf_set = set(leaves)
        extra: list[bytes] = []
        seen: set[bytes] = set()
        for _ in range(r.varint(LIMIT_ENTRIES)):
            key = r.take(r.varint(LIMIT_KEY_BYTES))
            if key in ours:
                raise ProtocolError(f"KEYS_REPLY says we lack key {key[:32]!r}, which we sent")
            if key in seen:
                raise ProtocolError(f"KEYS_REPLY lists key {key[:32]!r} twice")
            seen.add(key)
            if _remote_leaf(self.tree, key) not in leaf_set:
                raise ProtocolError(f"KEYS_REPLY key {key[:32]!r} is outside the leaves asked")
            extra.append(key)
        r.end()
        self._count_in(data)
        self._keys_sent = None
        res = self.result
        flagged = set(differ) | set(missing)
        res.push.extend(entries[i][0] for i in sorted(flagged))
        res.fetch.extend(entries[i][0] for i in differ)
        res.fetch.extend(extra)
        res.matched.extend(e for i, e in enumerate(entries) if i not in flagged)
        res.stats.keys_sent += len(flagged)
        res.stats.keys_received += len(differ) + len(extra)
        res.stats.digests_exchanged += len(extra)

    def _count_out(self, data: bytes) -> bytes:
        self.result.stats.messages += 1
        self.result.stats.bytes_transferred += len(data)
        return data

    def _count_in(self, data: bytes) -> None:
        self.result.stats.messages += 1
        self.result.stats.bytes_transferred += len(data)


# --- responder --------------------------------------------------------------------------


class Responder:
    """Answers an initiator's requests from its own tree (and entries for key requests).

    `receive(request)` returns `Send(reply)`, or `NeedEntries` for a key request, after
    which `provide_entries(...)` returns the `Send`. `stats` counts what it answered:
    `keys_sent` are keys the initiator will fetch from us, `keys_received` those it will
    push to us.
    """

    def __init__(self, tree: MerkleTree) -> None:
        self.tree = tree
        self.stats = Stats()
        self._pending: tuple[list[int], list[tuple[bytes, bytes]]] | None = None

    def receive(self, data: bytes) -> Send | NeedEntries:
        if self._pending is not None:
            raise SessionStateError("a key request awaits provide_entries()")
        r, kind = _read_header(data, self.tree, (T_HASHES, T_KEYS))
        if kind == T_HASHES:
            reply = self._answer_hashes(r)
            self._count(len(data))
            return Send(self._count_out(reply))
        leaves = r.ascending(self.tree.leaves, LIMIT_NODES)
        entries = _read_entries(r, self.tree, set(leaves))
        r.end()
        self._count(len(data))
        self.stats.digests_exchanged += len(entries)
        self._pending = (leaves, entries)
        return NeedEntries([self.tree.leaves_range(a, b) for a, b in merge_leaves(leaves)])

    def provide_entries(self, entries: Iterable[Entry]) -> Send:
        """Every local (token, key, digest) in the ranges of the last `NeedEntries`."""
        if self._pending is None:
            raise SessionStateError("no entries were asked for")
        leaves, theirs = self._pending
        by_leaf = _group_local(self.tree, entries, set(leaves))
        ours = {key: digest for items in by_leaf.values() for key, digest in items}
        differ: list[int] = []
        missing: list[int] = []
        for i, (key, digest) in enumerate(theirs):
            mine = ours.pop(key, None)
            if mine is None:
                missing.append(i)
            elif mine != digest:
                differ.append(i)
        extra = sorted(ours)  # keys only we hold
        w = _Writer()
        _header(w, T_KEYS_REPLY, self.tree)
        w.varint(len(theirs))
        w.ascending(differ)
        w.ascending(missing)
        w.varint(len(extra))
        for key in extra:
            w.varint(len(key))
            w.raw(key)
        self._pending = None
        self.stats.keys_sent += len(differ) + len(extra)
        self.stats.keys_received += len(differ) + len(missing)
        self.stats.digests_exchanged += len(extra)
        return Send(self._count_out(bytes(w.buf)))

    def _answer_hashes(self, r: _Reader) -> bytes:
        level = r.u8()
        if level > self.tree.depth:
            raise ProtocolError(f"level {level} is deeper than the tree ({self.tree.depth})")
        indices = r.ascending(1 << level, LIMIT_NODES)
        flags = [
            int.from_bytes(r.take(HASH_SIZE), "big") != self.tree.node_hash(level, idx)
            for idx in indices
        ]
        r.end()
        self.stats.hashes_exchanged += len(indices)
        if level == self.tree.depth:
            self.stats.leaves_differing += sum(flags)
        w = _Writer()
        _header(w, T_DIFF, self.tree)
        w.u8(level)
        w.varint(len(indices))
        w.raw(_bitmap(flags))
        return bytes(w.buf)

    def _count(self, n: int) -> None:
        self.stats.messages += 1
        self.stats.bytes_transferred += n

    def _count_out(self, data: bytes) -> bytes:
        self._count(len(data))
        return data


Scan = Callable[[list[TokenRange]], Iterable[Entry]]


def run_local(initiator: Initiator, responder: Responder, scan_initiator: Scan,
              scan_responder: Scan) -> Result:
    """Drive both sides to the end in one process (tests and simulations: no network).

    Each scan callable returns every local (token, key, digest) within the token ranges.
    """
    while True:
        action = initiator.next_action()
        if isinstance(action, Done):
            return action.result
        if isinstance(action, NeedEntries):
            initiator.provide_entries(scan_initiator(action.ranges))
            continue
        reply = responder.receive(action.data)
        if isinstance(reply, NeedEntries):
            reply = responder.provide_entries(scan_responder(reply.ranges))
        initiator.receive(reply.data)
