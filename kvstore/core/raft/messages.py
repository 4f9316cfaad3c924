"""Raft wire types and their byte encoding.

The encoding is a small, versioned, length-checked binary format (struct-packed): every
field is bounds-checked on decode, and `decode_message` either returns a fully validated
`Message` or raises `MessageDecodeError` - a caller that decodes before stepping can never
feed the core half a message. Message type numbers are append-only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "WIRE_VERSION",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageDecodeError",
    "MsgType",
    "Snapshot",
    "decode_conf_change",
    "decode_message",
    "encode_conf_change",
    "encode_message",
]

WIRE_VERSION = 1
MAX_ID_LEN = 255
MAX_ENTRIES_PER_MESSAGE = 1 << 16
MAX_U64 = (1 << 64) - 1


class MessageDecodeError(ValueError):
    """Bytes from a peer are not a valid raft message (the peer broke the protocol)."""


class MsgType(IntEnum):
    APP = 1
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9
    TIMEOUT_NOW = 10


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(IntEnum):
    ADD_VOTER = 0  # promote an existing learner (learners must catch up first)
    ADD_LEARNER = 1
    REMOVE = 2


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before dependent messages leave: term, vote and commit."""

    term: int = 0
    vote: str = ""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    def members(self) -> frozenset[str]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image at `index` (whose entry had `term`) and the config then."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node: str


@dataclass(slots=True)
class Message:
    type: MsgType
    to: str
    frm: str
    term: int = 0
    log_term: int = 0  # APP: term of entry `index`; VOTE: candidate's last term; resp: hint term
    index: int = 0  # APP: index preceding entries; VOTE: last index; APP_RESP: match/rejected
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    context: bytes = b""


# ---- encoding ---------------------------------------------------------------------------

_HDR = struct.Struct("<BBQQQQ?QI")  # version, type, term, log_term, index, commit, reject, hint, n
_ENT = struct.Struct("<QQBI")  # index, term, type, data length
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_SNAP = struct.Struct("<QQ")


_ID_CACHE: dict[str, bytes] = {}


def _put_str(out: list[bytes], s: str) -> None:
    enc = _ID_CACHE.get(s)
    if enc is None:
        b = s.encode()
        if len(b) > MAX_ID_LEN:
            raise ValueError(f"node id too long ({len(b)} bytes)")
        enc = _U16.pack(len(b)) + b
        if len(_ID_CACHE) < 4096:
            _ID_CACHE[s] = enc
    out.append(enc)


def _put_bytes(out: list[bytes], b: bytes) -> None:
    out.append(_U32.pack(len(b)))
    out.append(b)


def _put_conf(out: list[bytes], conf: ConfState) -> None:
    for group in (conf.voters, conf.learners):
        out.append(_U16.pack(len(group)))
        for node in sorted(group):
            _put_str(out, node)


def encode_message(m: Message) -> bytes:
    """Serialise `m` for the network (deterministic: same message, same bytes)."""
    out: list[bytes] = [
        _HDR.pack(
            WIRE_VERSION, int(m.type), m.term, m.log_term, m.index, m.commit, m.reject,
            m.reject_hint, len(m.entries),
        )
    ]
    _put_str(out, m.to)
    _put_str(out, m.frm)
    _put_bytes(out, m.context)
    for e in m.entries:
        out.append(_ENT.pack(e.index, e.term, int(e.type), len(e.data)))
        out.append(e.data)
    if m.snapshot is None:
        out.append(b"\x00")
    else:
        s = m.snapshot
        out.append(b"\x01")
        out.append(_SNAP.pack(s.index, s.term))
        _put_conf(out, s.conf)
        _put_bytes(out, s.data)
    return b"".join(out)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise MessageDecodeError(f"truncated message: {what} needs {n} bytes at {self.pos}")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))

    def string(self, what: str) -> str:
        (n,) = self.unpack(_U16, what)
        if n > MAX_ID_LEN:
            raise MessageDecodeError(f"{what} too long ({n} bytes)")
        try:
            return bytes(self.take(n, what)).decode()
        except UnicodeDecodeError as exc:
            raise MessageDecodeError(f"{what} is not UTF-8") from exc

    def blob(self, what: str) -> bytes:
        (n,) = self.unpack(_U32, what)
        return bytes(self.take(n, what))

    def conf(self) -> ConfState:
        groups = []
        for what in ("voters", "learners"):
            (n,) = self.unpack(_U16, what)
            groups.append(frozenset(self.string(what) for _ in range(n)))
        if groups[0] & groups[1]:
            raise MessageDecodeError("a node is both voter and learner in snapshot config")
        return ConfState(groups[0], groups[1])


def _str_at(buf: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise MessageDecodeError(f"truncated message: {what} length at {pos}")
    (n,) = _U16.unpack_from(buf, pos)
    pos += 2
    if n > MAX_ID_LEN or pos + n > len(buf):
        raise MessageDecodeError(f"{what} too long or truncated ({n} bytes)")
    try:
        return buf[pos : pos + n].decode(), pos + n
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"{what} is not UTF-8") from exc


def _blob_at(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise MessageDecodeError(f"truncated message: {what} length at {pos}")
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise MessageDecodeError(f"truncated message: {what} needs {n} bytes at {pos}")
    return buf[pos : pos + n], pos + n


def decode_message(data: bytes) -> Message:
    """Parse and validate bytes from the network; raise `MessageDecodeError` if malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) < _HDR.size:
        raise MessageDecodeError(f"truncated message: {len(buf)} bytes, header needs {_HDR.size}")
    version, mtype, term, log_term, index, commit, reject, hint, n = _HDR.unpack_from(buf, 0)
    if version != WIRE_VERSION:
        raise MessageDecodeError(f"unsupported raft wire version {version} (want {WIRE_VERSION})")
    try:
        typ = MsgType(mtype)
    except ValueError:
        raise MessageDecodeError(f"unknown raft message type {mtype}") from None
    if n > MAX_ENTRIES_PER_MESSAGE:
        raise MessageDecodeError(f"too many entries ({n})")
    to, pos = _str_at(buf, _HDR.size, "to")
    frm, pos = _str_at(buf, pos, "from")
    if not to or not frm:
        raise MessageDecodeError("empty node id")
    context, pos = _blob_at(buf, pos, "context")
    entries = []
    prev_term = log_term
    esize = _ENT.size
    for i in range(n):
        if pos + esize > len(buf):
            raise MessageDecodeError(f"truncated message: entry {i} header")
        eidx, eterm, etype, dlen = _ENT.unpack_from(buf, pos)
        pos += esize
        if pos + dlen > len(buf):
            raise MessageDecodeError(f"truncated message: entry {i} data")
        try:
            et = EntryType(etype)
        except ValueError:
            raise MessageDecodeError(f"unknown entry type {etype}") from None
        if eidx != index + 1 + i:
            raise MessageDecodeError(f"entry {i} has index {eidx}, expected {index + 1 + i}")
        if eterm > term or eterm < prev_term:
            raise MessageDecodeError(f"entry {eidx} has impossible term {eterm}")
        prev_term = eterm
        entries.append(Entry(eidx, eterm, et, buf[pos : pos + dlen]))
        pos += dlen
    if pos >= len(buf):
        raise MessageDecodeError("truncated message: snapshot flag")
    flag = buf[pos]
    pos += 1
    snapshot = None
    if flag == 1:
        r = _Reader(buf)
        r.pos = pos
        sidx, sterm = r.unpack(_SNAP, "snapshot header")
        conf = r.conf()
        snapshot = Snapshot(sidx, sterm, conf, r.blob("snapshot data"))
        pos = r.pos
        if not conf.voters:
            raise MessageDecodeError("snapshot config has no voters")
    elif flag != 0:
        raise MessageDecodeError(f"bad snapshot flag {flag}")
    if pos != len(buf):
        raise MessageDecodeError(f"{len(buf) - pos} trailing bytes")
    if entries and typ is not MsgType.APP:
        raise MessageDecodeError(f"{typ.name} must not carry entries")
    if (snapshot is None) == (typ is MsgType.SNAP):
        raise MessageDecodeError("SNAP messages, and only they, carry a snapshot")
    return Message(typ, to, frm, term, log_term, index, commit, reject, hint, entries, snapshot,
                   context)


_CC = struct.Struct("<B")


def encode_conf_change(cc: ConfChange) -> bytes:
    out = [_CC.pack(int(cc.type))]
    _put_str(out, cc.node)
    return b"".join(out)


def decode_conf_change(data: bytes) -> ConfChange:
    r = _Reader(data)
    (t,) = r.unpack(_CC, "conf change type")
    try:
        typ = ConfChangeType(t)
    except ValueError:
        raise MessageDecodeError(f"unknown conf change type {t}") from None
    node = r.string("conf change node")
    if r.pos != len(r.buf) or not node:
        raise MessageDecodeError("malformed conf change")
    return ConfChange(typ, node)
