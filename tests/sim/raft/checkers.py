"""Raft safety invariants, checked incrementally on every Ready / apply / election.

* Election safety: at most one leader per term.
* Log matching: every (index, term) pair ever persisted anywhere maps to one entry and one
  predecessor term. By induction over the index this is the paper's Log Matching property
  (same index and term => identical prefixes), checked in O(new entries).
* Leader completeness: a new leader's log holds every entry any node has applied.
* State machine safety: every node applies the same entry at each index, in index order,
  and a committed (applied) entry is never replaced.
"""

from __future__ import annotations

from kvstore.core.raft import Entry, RaftNode, Ready, Snapshot


class SimFailure(AssertionError):
    """An invariant was violated (the message says which, where and when)."""


class InvariantChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.max_applied = 0
        self.node_applied: dict[str, int] = {}

    def on_ready(self, node: str, raft: RaftNode, rd: Ready) -> None:
        prev_term = None
        for e in rd.entries:
            if prev_term is None:
                prev_term = raft.term_at(e.index - 1)
                if prev_term is None:
                    raise SimFailure(f"{node}: entry {e.index} persisted without a predecessor")
            val = (int(e.type), e.data, prev_term)
            old = self.entries.setdefault((e.index, e.term), val)
            if old != val:
                raise SimFailure(
                    f"log matching violated at {node}: entry (index={e.index}, term={e.term}) "
                    f"is {val} here but {old} elsewhere")
            prev_term = e.term
        if rd.hard_state is not None and rd.hard_state.commit > raft.last_index():
            raise SimFailure(f"{node}: commit {rd.hard_state.commit} beyond its log")

    def on_leader(self, node: str, raft: RaftNode) -> None:
        holder = self.leaders.setdefault(raft.term, node)
        if holder != node:
            raise SimFailure(f"election safety violated: {holder} and {node} both lead term "
                             f"{raft.term}")
        c = self.max_applied
        if c > raft.snapshot.index and c >= raft.first_index() and (
            raft.term_at(c) != self.applied[c][0]
        ):
            raise SimFailure(
                f"leader completeness violated: {node} leads term {raft.term} without "
                f"applied entry {c} (term {self.applied[c][0]}; it has "
                f"{raft.term_at(c)}, last index {raft.last_index()})")

    def on_apply(self, node: str, e: Entry) -> None:
        last = self.node_applied.get(node, 0)
        if e.index != last + 1:
            raise SimFailure(f"{node} applied entry {e.index} after {last}")
        self.node_applied[node] = e.index
        val = (e.term, e.data)
        old = self.applied.setdefault(e.index, val)
        if old != val:
            raise SimFailure(f"state machine safety violated: {node} applied {val} at "
                             f"{e.index}, another node applied {old}")
        self.max_applied = max(self.max_applied, e.index)

    def on_install(self, node: str, snap: Snapshot) -> None:
        known = self.applied.get(snap.index)
        if known is not None and known[0] != snap.term:
            raise SimFailure(f"{node} installed a snapshot at {snap.index} with term "
                             f"{snap.term}, but term {known[0]} was applied there")
        self.node_applied[node] = snap.index

    def on_restart(self, node: str, raft: RaftNode) -> None:
        """After a restart the node re-applies from its snapshot."""
        self.node_applied[node] = raft.applied
        # Committed entries must survive the crash: everything this node's recovered log
        # holds must agree with what was applied anywhere.
        for idx in range(raft.first_index(), min(raft.last_index(), self.max_applied) + 1):
            t = raft.term_at(idx)
            if idx in self.applied and t is not None and idx <= raft.commit and (
                    t != self.applied[idx][0]):
                raise SimFailure(f"{node} recovered entry {idx} term {t} but term "
                                 f"{self.applied[idx][0]} was applied there")
