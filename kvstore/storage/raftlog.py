"""Durable Raft state: term, vote, commit and log entries in one append-only file, and the
latest snapshot in another.

Why an append-only file and not SQLite: a Raft log is written strictly sequentially and
read only at startup, and every Ready becomes exactly one record followed by at most one
fsync (group commit comes for free: one record carries all entries of a Ready). See
docs/raft.md for the measured numbers.

File `raft.log` is a sequence of records::

    magic b"RFTL" | u32 payload length | u32 crc32(payload) | payload

payload kind 1 (SAVE): optional hard state, then entries replacing every stored entry at or
after the first one's index. Kind 2 (BASE): the log restarts after (index, term) with the
given hard state (written at compaction and snapshot install, via an atomic file replace).

Recovery (`RaftLog.recover`):
* a bad record with no valid record after it is a torn or corrupted tail - what a crash
  before fsync leaves - and is truncated away. Such a record cannot hold entries that this
  node knew were committed: the commit index is always persisted in the same record as the
  entries or after them;
* a bad record followed by valid records is damage in the middle of the log, which may hold
  committed entries: recovery stops with `CorruptRaftLogError` instead of diverging;
* the snapshot file is written atomically, so a bad checksum there is always an error.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kvstore.core.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot
from kvstore.storage.durable import write_atomic
from kvstore.storage.engine import StorageError

__all__ = [
    "LOG_FILE",
    "SNAPSHOT_FILE",
    "CorruptRaftLogError",
    "Files",
    "MemoryFiles",
    "OsFiles",
    "RaftLog",
    "Recovered",
]

LOG_FILE = "raft.log"
SNAPSHOT_FILE = "raft.snapshot"
MAGIC = b"RFTL"
SNAP_MAGIC = b"RFTS"
_HDR = struct.Struct("<4sII")
_HS = struct.Struct("<QQH")  # term, commit, vote length
_ENT = struct.Struct("<QQBI")
_BASE = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
KIND_SAVE = 1
KIND_BASE = 2
MAX_RECORD = 1 << 30


class CorruptRaftLogError(StorageError):
    """The durable raft state is damaged where it may hold committed data; the node must
    not start from it (wipe the node's raft directory and let it rejoin from peers)."""


class Files(Protocol):
    """The few file operations the log needs (real files, or a simulated disk)."""

    def read(self, name: str) -> bytes | None: ...

    def append(self, name: str, data: bytes) -> None: ...

    def sync(self, name: str) -> None: ...

    def truncate(self, name: str, size: int) -> None:
        """Cut the file to `size` bytes, durably."""
        ...

    def replace(self, name: str, data: bytes) -> None:
        """Atomically and durably make `data` the whole content of `name`."""
        ...


class OsFiles:
    """`Files` over a real directory: fsync on sync, tmp+fsync+rename+dir-fsync on replace."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._handles: dict[str, object] = {}

    def _handle(self, name: str):
        fh = self._handles.get(name)
        if fh is None:
            fh = open(self.dir / name, "ab")  # noqa: SIM115 - kept open across appends
            self._handles[name] = fh
        return fh

    def read(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def append(self, name: str, data: bytes) -> None:
        fh = self._handle(name)
        fh.write(data)
        fh.flush()

    def sync(self, name: str) -> None:
        os.fsync(self._handle(name).fileno())

    def truncate(self, name: str, size: int) -> None:
        self._close(name)
        with open(self.dir / name, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())

    def replace(self, name: str, data: bytes) -> None:
        self._close(name)
        write_atomic(self.dir / name, data)

    def _close(self, name: str) -> None:
        fh = self._handles.pop(name, None)
        if fh is not None:
            fh.close()

    def close(self) -> None:
        for name in list(self._handles):
            self._close(name)


class MemoryFiles:
    """`Files` in memory, for nodes without a data directory (tests). Nothing survives the
    process; the simulator has its own crash-modelling disk."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def read(self, name: str) -> bytes | None:
        data = self.files.get(name)
        return None if data is None else bytes(data)

    def append(self, name: str, data: bytes) -> None:
        self.files.setdefault(name, bytearray()).extend(data)

    def sync(self, name: str) -> None:
        pass

    def truncate(self, name: str, size: int) -> None:
        del self.files.setdefault(name, bytearray())[size:]

    def replace(self, name: str, data: bytes) -> None:
        self.files[name] = bytearray(data)


@dataclass
class Recovered:
    """What a restarting node hands to RaftNode(hard_state=, snapshot=, entries=)."""

    hard_state: HardState
    snapshot: Snapshot
    entries: list[Entry]
    truncated_bytes: int = 0
    records: int = 0
    notes: list[str] = field(default_factory=list)


# ---- encoding -----------------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    return _HDR.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _enc_hs(out: list[bytes], hs: HardState) -> None:
    vote = hs.vote.encode()
    out.append(_HS.pack(hs.term, hs.commit, len(vote)))
    out.append(vote)


def _enc_save(hs: HardState | None, entries: list[Entry]) -> bytes:
    out = [bytes([KIND_SAVE, 1 if hs is not None else 0])]
    if hs is not None:
        _enc_hs(out, hs)
    out.append(_U32.pack(len(entries)))
    for e in entries:
        out.append(_ENT.pack(e.index, e.term, int(e.type), len(e.data)))
        out.append(e.data)
    return _frame(b"".join(out))


def _enc_base(index: int, term: int, hs: HardState) -> bytes:
    out = [bytes([KIND_BASE]), _BASE.pack(index, term)]
    _enc_hs(out, hs)
    return _frame(b"".join(out))


class _Bad(Exception):
    pass


def _parse_at(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload of a well-formed record at `pos` and the next position, else None."""
    end = pos + _HDR.size
    if end > len(data):
        return None
    magic, length, crc = _HDR.unpack_from(data, pos)
    if magic != MAGIC or length > MAX_RECORD or end + length > len(data):
        return None
    payload = data[end : end + length]
    if zlib.crc32(payload) != crc:
        return None
    return payload, end + length


def _dec_hs(p: bytes, pos: int) -> tuple[HardState, int]:
    term, commit, vlen = _HS.unpack_from(p, pos)
    pos += _HS.size
    vote = p[pos : pos + vlen].decode()
    return HardState(term, vote, commit), pos + vlen


def _dec_payload(p: bytes) -> tuple[int, HardState | None, int, int, list[Entry]]:
    """(kind, hard state, base index, base term, entries); raises _Bad on nonsense."""
    try:
        kind = p[0]
        if kind == KIND_BASE:
            index, term = _BASE.unpack_from(p, 1)
            hs, pos = _dec_hs(p, 1 + _BASE.size)
            return kind, hs, index, term, []
        if kind != KIND_SAVE:
            raise _Bad(f"unknown record kind {kind}")
        hs = None
        pos = 2
        if p[1]:
            hs, pos = _dec_hs(p, 2)
        (n,) = _U32.unpack_from(p, pos)
        pos += _U32.size
        entries = []
        for _ in range(n):
            idx, term, etype, dlen = _ENT.unpack_from(p, pos)
            pos += _ENT.size
            entries.append(Entry(idx, term, EntryType(etype), p[pos : pos + dlen]))
            pos += dlen
        if pos != len(p):
            raise _Bad("record length mismatch")
        return kind, hs, 0, 0, entries
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise _Bad(str(exc)) from exc


def _enc_snapshot(s: Snapshot) -> bytes:
    out = [_BASE.pack(s.index, s.term)]
    for group in (s.conf.voters, s.conf.learners):
        out.append(_U16.pack(len(group)))
        for n in sorted(group):
            b = n.encode()
            out.append(_U16.pack(len(b)))
            out.append(b)
    out.append(s.data)
    payload = b"".join(out)
    return _HDR.pack(SNAP_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _dec_snapshot(data: bytes) -> Snapshot:
    if len(data) < _HDR.size:
        raise CorruptRaftLogError(f"{SNAPSHOT_FILE}: truncated header")
    magic, length, crc = _HDR.unpack_from(data, 0)
    payload = data[_HDR.size :]
    if magic != SNAP_MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptRaftLogError(
            f"{SNAPSHOT_FILE}: checksum mismatch; the snapshot is damaged - wipe this node's "
            "raft directory and let it rejoin from its peers")
    index, term = _BASE.unpack_from(payload, 0)
    pos = _BASE.size
    groups = []
    for _ in range(2):
        (n,) = _U16.unpack_from(payload, pos)
        pos += 2
        members = []
        for _ in range(n):
            (ln,) = _U16.unpack_from(payload, pos)
            pos += 2
            members.append(payload[pos : pos + ln].decode())
            pos += ln
        groups.append(frozenset(members))
    return Snapshot(index, term, ConfState(groups[0], groups[1]), payload[pos:])


# ---- the log ------------------------------------------------------------------------------

class RaftLog:
    """The durable half of one raft node. Call recover() once, then save()/ install/compact
    as the driver processes each Ready."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.hard_state = HardState()
        self.snapshot = Snapshot()
        self._offset = 0
        self._offset_term = 0
        self._entries: list[Entry] = []
        self._recovered = False

    @classmethod
    def open(cls, directory: Path | str) -> RaftLog:
        return cls(OsFiles(directory))

    def last_index(self) -> int:
        return self._offset + len(self._entries)

    def _term_at(self, index: int) -> int | None:
        if index == self._offset:
            return self._offset_term
        if self._offset < index <= self.last_index():
            return self._entries[index - self._offset - 1].term
        return None

    def recover(self) -> Recovered:
        """Read the durable state, truncating a torn tail; raise CorruptRaftLogError if
        damage may involve committed entries."""
        notes: list[str] = []
        raw = self.files.read(SNAPSHOT_FILE)
        if raw is not None:
            self.snapshot = _dec_snapshot(raw)
        data = self.files.read(LOG_FILE) or b""
        pos = records = 0
        truncated = 0
        while pos < len(data):
            parsed = _parse_at(data, pos)
            payload = None
            if parsed is not None:
                payload, nxt = parsed
                try:
                    kind, hs, bidx, bterm, entries = _dec_payload(payload)
                except _Bad as exc:
                    notes.append(f"record at byte {pos}: {exc}")
                    payload = None
            if payload is None:
                if self._valid_record_after(data, pos + 1):
                    raise CorruptRaftLogError(
                        f"{LOG_FILE}: record at byte {pos} (after entry {self.last_index()}, "
                        f"persisted commit {self.hard_state.commit}) is corrupt and valid "
                        "records follow it: the log is damaged in the middle and may have "
                        "lost committed entries. Refusing to start; wipe this node's raft "
                        "directory and let it rejoin from its peers.")
                truncated = len(data) - pos
                notes.append(f"truncated {truncated} bytes of torn/corrupt tail at byte {pos}")
                self.files.truncate(LOG_FILE, pos)
                break
            records += 1
            if kind == KIND_BASE:
                self._offset, self._offset_term, self._entries = bidx, bterm, []
            elif entries:
                first = entries[0].index
                if first > self.last_index() + 1 or first <= self._offset:
                    raise CorruptRaftLogError(
                        f"{LOG_FILE}: record at byte {pos} starts at entry {first} but the log "
                        f"covers {self._offset + 1}..{self.last_index()}")
                if first <= min(self.hard_state.commit, self.last_index()):
                    raise CorruptRaftLogError(
                        f"{LOG_FILE}: record at byte {pos} rewrites committed entry {first}")
                del self._entries[first - self._offset - 1 :]
                self._entries.extend(entries)
            if hs is not None:
                self.hard_state = hs
            pos = nxt
        snap = self.snapshot
        if snap.index > self._offset:
            if self._term_at(snap.index) == snap.term:
                del self._entries[: snap.index - self._offset]
            else:
                self._entries = []
            self._offset, self._offset_term = snap.index, snap.term
        if self.hard_state.commit > max(self.last_index(), snap.index):
            raise CorruptRaftLogError(
                f"{LOG_FILE}: persisted commit {self.hard_state.commit} is beyond the last "
                f"entry {self.last_index()}; committed entries are missing")
        self._recovered = True
        return Recovered(self.hard_state, snap, list(self._entries), truncated, records, notes)

    @staticmethod
    def _valid_record_after(data: bytes, start: int) -> bool:
        pos = data.find(MAGIC, start)
        while pos != -1:
            parsed = _parse_at(data, pos)
            if parsed is not None:
                try:
                    _dec_payload(parsed[0])
                    return True
                except _Bad:
                    pass
            pos = data.find(MAGIC, pos + 1)
        return False

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool) -> None:
        """Persist one Ready's hard state and entries as one record (fsync if `sync`)."""
        if not self._recovered:
            raise StorageError("RaftLog.recover() must run before save()")
        if not entries and hard_state is None:
            return
        if entries:
            first = entries[0].index
            if first > self.last_index() + 1 or first <= self._offset:
                raise StorageError(
                    f"entries start at {first}, log covers {self._offset + 1}..{self.last_index()}")
            del self._entries[first - self._offset - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        self.files.append(LOG_FILE, _enc_save(hard_state, entries))
        if sync:
            self.files.sync(LOG_FILE)

    def install_snapshot(self, snap: Snapshot, hard_state: HardState | None = None) -> None:
        """A snapshot from the leader replaces the whole log (durably, before returning)."""
        if hard_state is not None:
            self.hard_state = hard_state
        self.files.replace(SNAPSHOT_FILE, _enc_snapshot(snap))
        self.snapshot = snap
        self._offset, self._offset_term, self._entries = snap.index, snap.term, []
        self._rewrite()

    def save_snapshot(self, snap: Snapshot) -> None:
        """Durably store a locally taken snapshot (the log is not touched; see compact())."""
        self.files.replace(SNAPSHOT_FILE, _enc_snapshot(snap))
        self.snapshot = snap

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (<= the stored snapshot's index) by rewriting the log."""
        index = min(index, self.snapshot.index)
        term = self._term_at(index)
        if index <= self._offset or term is None:
            return
        del self._entries[: index - self._offset]
        self._offset, self._offset_term = index, term
        self._rewrite()

    def _rewrite(self) -> None:
        body = _enc_base(self._offset, self._offset_term, self.hard_state)
        if self._entries:
            body += _enc_save(None, self._entries)
        self.files.replace(LOG_FILE, body)

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def close(self) -> None:
        close = getattr(self.files, "close", None)
        if close is not None:
            close()
