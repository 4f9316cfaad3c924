"""The leader's view of one follower: how far it matches and how to send it more.

States (as in etcd-raft):
* PROBE - we do not know where the follower's log ends; send one AppendEntries and wait for
  its answer (or a heartbeat response) before sending another.
* REPLICATE - the follower is known to match up to `match`; send batches optimistically
  (advance `next` on send) with up to `max_inflight` unacknowledged batches in flight.
* SNAPSHOT - the entries it needs are compacted; a snapshot is on its way.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.recent_active = False
        self.max_inflight = max_inflight
        self.inflight: deque[int] = deque()  # last index of each unacknowledged batch

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        """A success ack up to `index`; return whether `match` moved."""
        updated = False
        if self.match < index:
            self.match = index
            self.probe_sent = False
            updated = True
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr(self, rejected: int, hint: int) -> bool:
        """A rejection of the append after `rejected`; back off using the follower's hint.

        Return False for stale rejections (duplicated or reordered answers)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = max(self.match + 1, min(rejected, hint + 1))
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(1, self.match + 1, min(rejected, hint + 1))
        self.probe_sent = False
        return True

    def free_upto(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def __repr__(self) -> str:
        return f"Progress({self.state.value} match={self.match} next={self.next})"
