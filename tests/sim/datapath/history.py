"""What a data-path simulation records: client operations, data-destroying faults, the
versions the resurrection guard refused, and the final state of every replica.

Plain data, no behaviour beyond formatting and a digest. Every written value carries a
unique id (the value bytes are the id), so the checker reasons about ids and the history
alone: never about dots, actor names or clock shapes, which the store may change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

OK = "ok"
FAILED = "failed"    # definitely not applied (refused before anything was minted)
UNKNOWN = "unknown"  # may or may not have been applied


@dataclass(frozen=True)
class Op:
    """One client request. Times are virtual milliseconds."""

    index: int
    client: int
    kind: str                 # "get" | "put" | "delete"
    key: str
    node: str                 # the coordinator the client asked
    start: int
    end: int
    need: int                 # R for reads, W for writes
    level: str = ""           # ONE | QUORUM | ALL | R=2 | W=2 ...
    result: str = OK          # ok | failed | unknown
    id: str = ""              # writes and deletes: the id this operation wrote
    # writes and deletes issued with a context: the ids the read that produced the
    # context returned (what the write supersedes); a blind write: () (supersedes nothing)
    seen: tuple[str, ...] = ()
    returned: tuple[str, ...] = ()   # reads: the ids returned (with repeats, if any)
    mode: str = ""            # writes: "strict" | "default" | "sloppy" (see sim.WRITE_MODES)
    ryw: bool = False         # writes: the mode promises read-your-writes with R + W > N
    holders: tuple[str, ...] = ()    # acknowledged writes: nodes that held it at the ack
    hinted: bool = False      # a hint on a fallback node counted towards W
    final: bool = False       # a read of the final check, after healing and repair
    error: str = ""
    hint_holders: tuple[str, ...] = ()  # those of `holders` that held it as a hint only
    lock: str = ""            # guarded writes: the lock and the token the writer held
    token: int = 0            # (0: not guarded)

    def describe(self) -> str:
        span = f"[{self.start}..{self.end}]"
        who = f"c{self.client}@{self.node}"
        if self.kind == "get":
            body = f"get {self.key} {self.level} -> {list(self.returned)}"
        else:
            ctx = f" seen={list(self.seen)}" if self.seen else " blind"
            extra = f" {self.mode}"
            if self.holders:
                extra += " held_by=" + ",".join(
                    n + ("(hint)" if n in self.hint_holders else "") for n in self.holders)
            if self.hinted:
                extra += " (hint counted)"
            if self.token:
                extra += f" fence={self.lock}:{self.token}"
            body = f"{self.kind} {self.key}={self.id} {self.level}{ctx}{extra}"
        res = self.result if self.result == OK else f"{self.result}: {self.error[:140]}"
        tag = " FINAL" if self.final else ""
        return f"#{self.index} {span} {who} {body} -> {res}{tag}"


@dataclass(frozen=True)
class Loss:
    """Stored data destroyed: a whole disk (key ""), one key's record, or a hint for the
    key dropped undelivered (hints expire by design; a fallback holds nothing else)."""

    time: int
    node: str
    kind: str     # "disk_loss" | "record_loss" | "corrupt" | "hint_expired" | "hint_..."
    key: str = ""

    def describe(self) -> str:
        what = f" {self.key}" if self.key else ""
        return f"[{self.time}] {self.kind} {self.node}{what}"


@dataclass(frozen=True)
class Refusal:
    """Live versions a replica's resurrection guard refused to merge."""

    time: int
    node: str
    key: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Copy:
    """One replica's final copy of a key: an opaque signature of its whole version set
    (equal signatures = identical version sets), the live value ids a read shows, and
    those it holds but does not show (fenced out)."""

    signature: str
    ids: tuple[str, ...]
    # live ids a read does not show: guarded writes fenced out by a version beside them
    hidden: tuple[str, ...] = ()


@dataclass
class History:
    n: int                                    # the replication factor
    replicas: dict[str, tuple[str, ...]]      # key -> its preference list
    ops: list[Op] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    final: dict[str, dict[str, Copy]] = field(default_factory=dict)  # key -> node -> copy
    converged: bool = True   # the final phase reached identical copies within its bound
    # exceptions that escaped a production API the simulation called (a bug by definition)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.ops, self.losses, self.refusals, self.errors,
                     sorted((k, sorted(v.items())) for k, v in self.final.items())):
            h.update(repr(part).encode())
        return h.hexdigest()[:16]

    def describe(self, key: str | None = None) -> str:
        lines = []
        for op in self.ops:
            if key is None or op.key == key:
                lines.append("  " + op.describe())
        for loss in self.losses:
            if key is None or loss.key in ("", key):
                lines.append("  " + loss.describe())
        for r in self.refusals:
            if key is None or r.key == key:
                lines.append(f"  [{r.time}] guard on {r.node} refused {r.key}={list(r.ids)}")
        for time, error in self.errors:
            lines.append(f"  [{time}] ERROR {error}")
        for k, copies in sorted(self.final.items()):
            if key is None or k == key:
                for node, copy in sorted(copies.items()):
                    hidden = f" hidden={list(copy.hidden)}" if copy.hidden else ""
                    lines.append(f"  final {k}@{node}: {list(copy.ids)}{hidden}  "
                                 f"{copy.signature}")
        return "\n".join(lines)
