"""A simulated disk for `kvstore.storage.raftlog.RaftLog`: it remembers what was fsynced,
and a crash can lose (or tear) everything written after the last fsync."""

from __future__ import annotations

import random

SECTOR = 512


class MemFiles:
    """Implements `kvstore.storage.raftlog.Files` in memory.

    Each file has its current content (what a reader sees now, the page cache) and its
    durable content (what survives power loss). `sync` makes current durable; `replace` and
    `truncate` are durable at once (the real implementation fsyncs them)."""

    def __init__(self) -> None:
        self.current: dict[str, bytearray] = {}
        self.durable: dict[str, bytes] = {}
        self.syncs = 0

    def read(self, name: str) -> bytes | None:
        data = self.current.get(name)
        return None if data is None else bytes(data)

    def append(self, name: str, data: bytes) -> None:
        self.current.setdefault(name, bytearray()).extend(data)
        self.durable.setdefault(name, b"")

    def sync(self, name: str) -> None:
        self.syncs += 1
        self.durable[name] = bytes(self.current.get(name, b""))

    def truncate(self, name: str, size: int) -> None:
        cur = self.current.setdefault(name, bytearray())
        del cur[size:]
        self.durable[name] = bytes(cur)

    def replace(self, name: str, data: bytes) -> None:
        self.current[name] = bytearray(data)
        self.durable[name] = bytes(data)

    def unsynced_bytes(self) -> int:
        return sum(len(c) - len(self.durable.get(n, b"")) for n, c in self.current.items())

    def crash(self, rng: random.Random, lose_unsynced: bool) -> int:
        """A crash. A process crash keeps the page cache (lose_unsynced=False). A power loss
        keeps the durable bytes; of what was written after the last fsync, the file keeps a
        random length (its size may or may not have reached the disk), and each sector in
        that stretch may never have been written (it then reads as zeros). Sectors are
        written whole (sector atomicity), so this is all a crash can leave: no other bytes.
        Returns how many written bytes were lost."""
        if not lose_unsynced:
            return 0
        lost = 0
        for name, cur in list(self.current.items()):
            dur = self.durable.get(name, b"")
            tail = bytes(cur[len(dur) :]) if cur[: len(dur)] == dur else b""
            keep = rng.randrange(len(tail) + 1) if tail else 0
            kept = bytearray(dur + tail[:keep])
            unwritten = 0.5 if tail and rng.random() < 0.3 else 0.0
            sector = len(dur) // SECTOR
            while unwritten and sector * SECTOR < len(kept):
                if rng.random() < unwritten:
                    lo, hi = max(sector * SECTOR, len(dur)), min(sector * SECTOR + SECTOR,
                                                                 len(kept))
                    kept[lo:hi] = bytes(hi - lo)
                    lost += hi - lo
                sector += 1
            lost += len(cur) - len(kept)
            self.current[name] = kept
            self.durable[name] = bytes(kept)
        return lost
