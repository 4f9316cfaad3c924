"""Actor epochs: numbers a node never hands out twice, in this life or any earlier one.

A replica mints a key's writes under an actor `node@epoch` (core/versions.py). A dot
(actor, counter) must name one event for ever, so whenever a replica has no continuous
record of what it minted for a key (first write there, a purged tombstone, a dropped
corrupted record, a lost disk, a detected regression) it takes a fresh epoch from here.

Fresh across restarts: the highest epoch that may have been handed out is reserved on
disk (fsynced) before any epoch above the previous reservation is used, a lease of
`lease` epochs at a time, so a crash can skip epochs but never reuse them.

Fresh across a lost or restored data directory: the first epoch of a life is also at
least `wall_ms * EPOCHS_PER_MS`. A later life therefore starts above everything an
earlier one allocated as long as that life allocated fewer than EPOCHS_PER_MS epochs per
millisecond it ran (a node mints far fewer than a million new keys a second) and the
wall clock did not step back across the loss. As a further guard, an epoch of ours seen
in data from elsewhere (`observe`) is never handed out again.

A restored backup brings back records that know less than the replicas saw, with the
epochs they were minted under. `invalidate_older()` (`kv node start --restored`) makes
every epoch allocated so far unusable for minting (`valid_from`), so each key takes a
fresh epoch on its next write here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from kvstore.storage.durable import write_atomic
from kvstore.storage.engine import StorageError

EPOCHS_PER_MS = 1024
DEFAULT_LEASE = 4096
FILE_NAME = "epochs.json"


class EpochAllocator:
    """Hands out strictly increasing, never reused actor epochs (thread-safe)."""

    def __init__(self, path: Path | None, wall_ms: Callable[[], int], *,
                 lease: int = DEFAULT_LEASE) -> None:
        if lease < 1:
            raise ValueError(f"epoch lease must be >= 1, not {lease}")
        self.path = Path(path) if path is not None else None
        self._lease = lease
        self._lock = threading.Lock()
        reserved, self.valid_from = self._load()
        floor = wall_ms() * EPOCHS_PER_MS
        self._next = max(reserved, floor) + 1
        self._reserved = self._next - 1  # nothing above is usable until reserved
        self.allocated = 0
        self.observed_ahead = 0

    def _load(self) -> tuple[int, int]:
        if self.path is None or not self.path.exists():
            return 0, 0
        try:
            state = json.loads(self.path.read_text())
            reserved, valid_from = state["reserved"], state.get("valid_from", 0)
            for name, value in (("reserved", reserved), ("valid_from", valid_from)):
                if not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name} is {value!r}")
            return reserved, valid_from
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"the epoch file {self.path} is unreadable ({exc}); it protects against "
                "reusing version dots. If you remove it, the node picks epochs from the "
                "wall clock, which is safe unless the clock stepped back") from None

    def _reserve(self, upto: int) -> None:
        if self.path is not None:
            try:
                write_atomic(self.path, json.dumps(
                    {"reserved": upto, "valid_from": self.valid_from}).encode())
            except OSError as exc:
                raise StorageError(f"cannot reserve actor epochs in {self.path}: {exc}") from exc
        self._reserved = upto

    def next(self) -> int:
        """A fresh epoch: greater than every epoch this node handed out or observed."""
        with self._lock:
            epoch = self._next
            if epoch > self._reserved:
                self._reserve(epoch + self._lease - 1)
            assert self._reserved >= epoch, "an epoch is handed out only once reserved"
            self._next = epoch + 1
            self.allocated += 1
            return epoch

    def invalidate_older(self) -> None:
        """Every epoch handed out so far may belong to a regressed record: mint none of
        them again (durable before returning)."""
        with self._lock:
            self.valid_from = self._next
            self._reserve(max(self._reserved, self._next))

    def usable(self, epoch: int) -> bool:
        """Whether a record may keep minting under `epoch`."""
        return epoch >= self.valid_from

    def observe(self, epoch: int) -> bool:
        """An epoch of ours seen in data from elsewhere: never hand it (or less) out again.

        True when it was ahead of the allocator, i.e. this node had forgotten it (a lost
        or restored disk whose clock floor was not enough)."""
        with self._lock:
            if epoch < self._next:
                return False
            self._next = epoch + 1
            self.observed_ahead += 1
            return True
