"""Durable Raft state: term, vote, commit and log entries in one append-only file, and the
latest snapshot in another.

Why an append-only file and not SQLite: a Raft log is written strictly sequentially and
read only at startup, and every Ready becomes exactly one record followed by at most one
fsync (group commit comes for free: one record carries all entries of a Ready). See
docs/raft.md for the measured numbers.

File `raft.log` is a sequence of records::

    magic b"RFT2" | u32 payload length | u32 crc32(payload) | payload | end marker 0xA5

(records written before the end marker existed, magic b"RFTL" and no marker, are still
read). Payload kind 1 (SAVE): optional hard state, then entries replacing every stored entry
at or after the first one's index. Kind 2 (BASE): the log restarts after (index, term) with
the given hard state (written at compaction and snapshot install, via an atomic replace).

Recovery (`RaftLog.recover`) truncates only what can never have been acknowledged. What a
crash before fsync can leave after the last completed fsync: a record cut short (the file
ends inside it), and sectors that never reached the disk but that the file's size already
covers (they read as zeros: a zero-filled stretch after the last record, or zero sectors -
the first, a middle or the last one, which holds the end marker - inside the last
records). Nothing after such a hole can have been fsynced: an fsync would have written the
hole too, and a record needing an fsync is never followed by another until its fsync
returned. Everything else - a completely written record whose checksum fails (a bit flip
after fsync), bytes that are neither a record nor zeros, a hole with an fsynced record
after it - is damage to data this node may have acknowledged: `CorruptRaftLogError`, and
the file is left as it is. The snapshot file is written atomically, so a bad checksum
there is always an error.
"""

from __future__ import annotations

import contextlib
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
    "JOIN_FILE",
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
JOIN_FILE = "raft.joining"  # present and non-empty while the node is joining
MAGIC = b"RFT2"  # records with an end marker
MAGIC_V1 = b"RFTL"  # the first format: no end marker (still read)
END = 0xA5
SNAP_MAGIC = b"RFTS"
SECTOR = 512  # the unit in which a crash may leave written data missing (zeros)
_HDR = struct.Struct("<4sII")
_HS = struct.Struct("<QQH")  # term, commit, vote length
_ENT = struct.Struct("<QQBI")
_BASE = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
KIND_SAVE = 1
KIND_BASE = 2
MAX_RECORD = 1 << 30


WAY_BACK = ("This node must not start from it: remove it from the raft group and add it "
            "back as a new learner (kv raft remove ID; restart it with --raft-join; kv raft "
            "add ID --learner; kv raft promote ID); keep the damaged file for inspection.")


class CorruptRaftLogError(StorageError):
    """The durable raft state is damaged where it may hold data this node acknowledged; the
    node must not start from it. `detail` names the file, the byte offset, the last good
    entry and the persisted commit index; the message adds the way back (`WAY_BACK`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail} {WAY_BACK}")
        self.detail = detail


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
    joining: bool = False  # the node came back through --raft-join and is not promoted yet

    @property
    def has_state(self) -> bool:
        """Whether this node ever persisted raft state here (or started joining here)."""
        return self.records > 0 or self.snapshot.index > 0 or self.joining


# ---- encoding -----------------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    return _HDR.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload + bytes([END])


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


def _record_end(magic: bytes, pos: int, length: int) -> int:
    return pos + _HDR.size + length + (1 if magic == MAGIC else 0)


def _parse_at(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload of a well-formed record at `pos` and the next position, else None."""
    if pos + _HDR.size > len(data):
        return None
    magic, length, crc = _HDR.unpack_from(data, pos)
    if magic not in (MAGIC, MAGIC_V1) or length > MAX_RECORD:
        return None
    end = _record_end(magic, pos, length)
    if end > len(data) or (magic == MAGIC and data[end - 1] != END):
        return None
    payload = data[pos + _HDR.size : pos + _HDR.size + length]
    if zlib.crc32(payload) != crc:
        return None
    return payload, end


def _zero_sector_in(data: bytes, lo: int, hi: int) -> bool:
    """Whether a whole sector-aligned block inside [lo, hi) reads as zeros."""
    s = -(-lo // SECTOR) * SECTOR
    while s + SECTOR <= hi:
        if not any(data[s : s + SECTOR]):
            return True
        s += SECTOR
    return False


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
            f"{SNAPSHOT_FILE}: checksum mismatch; the snapshot is damaged")
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
        """Read the durable state, truncating a tail that can never have been
        acknowledged; raise CorruptRaftLogError for any other damage (see the module
        docstring for the rule)."""
        notes: list[str] = []
        raw = self.files.read(SNAPSHOT_FILE)
        if raw is not None:
            self.snapshot = _dec_snapshot(raw)
        data = self.files.read(LOG_FILE) or b""
        pos = records = 0
        truncated = 0
        while pos < len(data):
            parsed = _parse_at(data, pos)
            decoded = None
            if parsed is not None:
                try:
                    decoded = _dec_payload(parsed[0])
                except _Bad as exc:
                    notes.append(f"record at byte {pos}: {exc}")
            if decoded is None:
                why = self._unwritten(data, pos)  # raises if this is damage
                truncated = len(data) - pos
                notes.append(f"truncated {truncated} bytes at byte {pos} ({why}); they were "
                             "written after the last fsync and never acknowledged")
                self.files.truncate(LOG_FILE, pos)
                break
            kind, hs, bidx, bterm, entries = decoded
            nxt = parsed[1]
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
        joining = bool(self.files.read(JOIN_FILE))
        return Recovered(self.hard_state, snap, list(self._entries), truncated, records, notes,
                         joining)

    def set_joining(self, joining: bool) -> None:
        """Durably record that this node is joining (it must not vote until promoted), or
        that it no longer is. Written before anything else when a node starts joining."""
        self.files.replace(JOIN_FILE, b"joining: no votes until promoted from learner\n"
                           if joining else b"")

    def _damage(self, pos: int, what: str) -> CorruptRaftLogError:
        return CorruptRaftLogError(
            f"{LOG_FILE}: record at byte {pos} (after entry {self.last_index()}, persisted "
            f"commit {self.hard_state.commit}) {what}")

    def _unwritten(self, data: bytes, pos: int) -> str:
        """Why the bytes from `pos` (where no valid record starts) can only be a write cut
        short by a crash before its fsync; raise CorruptRaftLogError if they can be damage
        to acknowledged data instead."""
        rest = len(data) - pos
        if not any(data[pos:]):
            return "zero-filled space never written"
        if rest < _HDR.size:
            return "a record header cut short"
        magic, length, crc = _HDR.unpack_from(data, pos)
        head_end = min(len(data), (pos // SECTOR + 1) * SECTOR)  # its first sector's end
        straddles = head_end - pos < len(MAGIC)  # the magic spans two sectors
        if magic in (MAGIC, MAGIC_V1):
            end = _record_end(magic, pos, length)
            if end > len(data):
                body = data[pos + _HDR.size : len(data) - (1 if magic == MAGIC else 0)]
                if zlib.crc32(body) == crc and (magic == MAGIC_V1 or data[-1] == END):
                    raise self._damage(pos, f"has a damaged length field ({length} bytes, "
                                            "past the end of the file) although the record "
                                            "is complete: not a torn write")
                if self._valid_record_after(data, pos + 1):
                    raise self._damage(pos, f"claims {length} bytes, past the end of the file, "
                                            "but complete records follow it: its length field "
                                            "is damaged, this is not a torn write")
                why = "a record cut short by the end of the file"
            elif magic == MAGIC and not any(data[max((end - 1) // SECTOR * SECTOR, pos) :]):
                # The end marker reads zero, and so does everything from the start of its
                # sector to the end of the file (a damaged length cannot look like that).
                why = "a record whose last sector was never written"
            elif _zero_sector_in(data, pos, end):
                why = "a record with a sector that was never written"
            else:
                raise self._damage(pos, "fails its checksum; it was written completely (its "
                                        "length and end marker are intact), so this is "
                                        "damage to data that was fsynced, not a torn write")
        elif not any(data[pos : pos + len(MAGIC)]) or (
                straddles and not any(data[pos:head_end])):
            # Its magic reads zero - or, for a record that starts in the last bytes of a
            # sector, its part in that sector does (the next sector may have been written).
            why = "a record whose first sector was never written"
        elif straddles and (MAGIC.startswith(data[pos:head_end]) or MAGIC_V1.startswith(
                data[pos:head_end])) and not any(data[head_end : head_end + SECTOR]):
            # The magic's first bytes end a sector that was written; the next sector, with
            # the rest of it, never was.
            why = "a record whose second sector was never written"
        else:
            raise self._damage(pos, "is neither a record nor zero-filled space; no crash "
                                    "leaves that, so this is damage, not a torn write")
        self._check_nothing_fsynced_after(data, pos)
        return why

    @staticmethod
    def _valid_record_after(data: bytes, start: int) -> bool:
        for magic in (MAGIC, MAGIC_V1):
            at = data.find(magic, start)
            while at != -1:
                parsed = _parse_at(data, at)
                if parsed is not None:
                    try:
                        _dec_payload(parsed[0])
                        return True
                    except _Bad:
                        pass
                at = data.find(magic, at + 1)
        return False

    def _check_nothing_fsynced_after(self, data: bytes, hole: int) -> None:
        """Records after a crash-torn spot must all have been written after the last fsync:
        at most the final one can be a record that needed an fsync (term, vote, entries)."""
        prev = self.hard_state
        pos = hole + 1
        while True:
            found = [i for i in (data.find(MAGIC, pos), data.find(MAGIC_V1, pos)) if i >= 0]
            if not found:
                return
            at = min(found)
            parsed = _parse_at(data, at)
            decoded = None
            if parsed is not None:
                with contextlib.suppress(_Bad):
                    decoded = _dec_payload(parsed[0])
            if decoded is None:
                pos = at + 1
                continue
            kind, hs, _, _, entries = decoded
            synced = kind == KIND_BASE or bool(entries) or (
                hs is not None and (hs.term, hs.vote) != (prev.term, prev.vote))
            if synced and parsed[1] < len(data):
                raise self._damage(hole, f"cannot be a torn write: the record at byte {at} "
                                         "after it was fsynced (more was written after it), "
                                         "and an fsync would have written this spot too")
            if hs is not None:
                prev = hs
            pos = parsed[1]

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
