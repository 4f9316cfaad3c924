"""The history checker of the data-path simulation (pure: a History in, violations out).

Model. Every write has a unique value id. A write issued with a context supersedes
exactly the ids the read that produced the context returned (`Op.seen`); a blind write
supersedes nothing; a delete supersedes what its read saw. "Seen" is transitive: if y saw
x and z saw y, z supersedes x (a context covers the whole past of what it saw). Failed
writes (`FAILED`: refused before anything was minted) were not applied; writes with an
unknown outcome (timeouts, "the write is durable on ... it was not rolled back") may or
may not have been.

Invariants, each judged from ids and the history only:

* convergence: after healing and repair, every replica of a key holds the same version
  set, and a final read at ALL through each replica returns exactly its live ids;
* lost_write: every acknowledged write is in the final value, unless some write or
  delete that may have been applied saw it;
* resurrection: no id that an acknowledged write or delete saw is in the final value;
* siblings: no read (and no final copy) holds two ids one of which was seen by the write
  of the other, nor one id twice: the siblings never exceed the truly concurrent writes;
* read_your_writes: for a write whose mode promises it (a strict quorum) acknowledged with
  W, a read with R + W > N that starts after the ack returns its id or a successor (an id
  whose write saw it, transitively), or a delete that saw it may have happened; a read
  after an acknowledged delete returns nothing the delete saw;
* guard: the resurrection guard never refuses a live version: one still in the final
  value, or one that no write or delete (that may have been applied) which started before
  the refusal had seen;
* phantom: a read returns only ids of the key's writes that started before it ended and
  were not reported as not applied;
* fencing (guarded writes, `Op.lock` / `Op.token`): a write *knows* a token of a lock when
  it was guarded by it or saw (transitively) a write guarded by it. No guarded write that
  was applied (acknowledged, or read, or in a final copy) saw a higher token of its lock
  than its own (a lower token never supersedes a higher one); no final copy shows an id
  guarded by a lower token than one an id it holds knows; every id a final copy holds but
  hides (`Copy.hidden`) is below a token that an id it holds, or a delete that may have
  been applied, knows;
* internal_error: no request fails with an internal error, and no exception escapes an
  API the simulation calls (a bug by definition).

Exemptions (faults that legitimately break a guarantee):

* lost_write, resurrection: an acknowledged write or delete is exempt (and counted in
  `Report.lost_exempt`) when every node that held it at the ack later lost it (its disk,
  that key's record, or, on a fallback, a hint for that key dropped undelivered: at or
  after the write started): the write is gone and so is its effect, so what it
  superseded may come back. A disk loss is survivable for
  writes with W >= 2 as long as not all acknowledging replicas lose their data.
* read_your_writes: exempt when a replica of the key lost its disk, or the key's record
  was lost or corrupted on a replica, between the write's start and the read's end; writes
  in a mode that counts hints towards W (sloppy) are never checked; reads and writes
  whose outcome is unknown are not checked.
* lost_write, read_your_writes, guard: a guarded write is *fenced out* (and may vanish
  from reads, or be refused by a purge marker once collected with a tombstone that hid
  it) from the start of the first write or delete of its key that may have been applied
  and knew a higher token of its lock; a write superseded by a write that was then fenced
  out stays superseded, so read-your-writes does not expect it either (both counted in
  `Report.fenced_exempt`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .history import FAILED, OK, History, Op

INVARIANTS = ("convergence", "lost_write", "resurrection", "siblings", "read_your_writes",
              "guard", "phantom", "final_read", "fencing", "internal_error")


@dataclass(frozen=True)
class Violation:
    invariant: str
    key: str
    message: str
    ops: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" ops {list(self.ops)}" if self.ops else ""
        return f"{self.invariant} on {self.key}: {self.message}{where}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    lost_exempt: list[int] = field(default_factory=list)  # op indices
    ryw_pairs: int = 0       # (write, later read) pairs whose read-your-writes was checked
    ryw_exempt: int = 0      # pairs exempted by a data-destroying fault
    refused_superseded: int = 0  # guard refusals of versions already superseded (legitimate)
    fenced_exempt: int = 0   # lost writes and read-your-writes pairs of fenced-out writes

    @property
    def ok(self) -> bool:
        return not self.violations


class _Graph:
    """Who supersedes whom: the transitive closure of `seen`, memoised."""

    def __init__(self, ops: list[Op]) -> None:
        self.writer: dict[str, Op] = {}
        self.seen_by: dict[str, list[Op]] = defaultdict(list)  # id -> ops that may have seen it
        self.by_key: dict[str, list[Op]] = defaultdict(list)   # writes and deletes per key
        self.reads: dict[str, list[Op]] = defaultdict(list)    # successful reads per key
        for op in ops:
            if op.kind == "get" and op.result == OK:
                self.reads[op.key].append(op)
            if op.kind == "get" or not op.id:
                continue
            self.writer[op.id] = op
            self.by_key[op.key].append(op)
            if op.result != FAILED:
                for x in op.seen:
                    self.seen_by[x].append(op)
        self._closure: dict[str, frozenset[str]] = {}
        self._fenced_at: dict[str, int | None] = {}

    def knows(self, seen: tuple[str, ...], lock: str, op: Op | None = None) -> int:
        """The highest token of `lock` that a write which saw `seen` (and was `op`) knew."""
        tokens = [self.writer[x].token for x in self.closure_of(seen)
                  if x in self.writer and self.writer[x].lock == lock]
        if op is not None and op.lock == lock:
            tokens.append(op.token)
        return max(tokens, default=0)

    def fenced_out_by(self, w: Op, time: int) -> bool:
        """Whether by `time` w, or a write or delete that saw it and may have been
        applied, was fenced out (a successor fenced out leaves nothing of w to show: w
        stays superseded by it, and it is hidden)."""
        for u in (w, *self.by_key.get(w.key, ())):
            if u.result == FAILED or u.start > time:
                continue
            if u is not w and w.id not in self.closure_of(u.seen):
                continue
            fenced = self.fenced_at(u.id)
            if fenced is not None and fenced <= time:
                return True
        return False

    def fenced_at(self, x: str) -> int | None:
        """When guarded write x was first fenced out: the start of the first write or
        delete of its key that may have been applied and knew a higher token of its lock
        (None: never)."""
        if x in self._fenced_at:
            return self._fenced_at[x]
        w = self.writer.get(x)
        at = None
        if w is not None and w.token:
            for u in self.by_key.get(w.key, ()):
                if u.result != FAILED and u is not w and (at is None or u.start < at) \
                        and self.knows(u.seen, w.lock, u) > w.token:
                    at = u.start
        self._fenced_at[x] = at
        return at

    def closure_of(self, seen: tuple[str, ...]) -> frozenset[str]:
        out: set[str] = set()
        for x in seen:
            out.add(x)
            out |= self.ancestors(x)
        return frozenset(out)

    def ancestors(self, x: str) -> frozenset[str]:
        """Every id the write of x superseded, transitively."""
        done = self._closure.get(x)
        if done is not None:
            return done
        out: set[str] = set()
        stack = list(self.writer[x].seen) if x in self.writer else []
        while stack:
            y = stack.pop()
            if y in out:
                continue
            out.add(y)
            cached = self._closure.get(y)
            if cached is not None:
                out |= cached
            elif y in self.writer:
                stack.extend(self.writer[y].seen)
        self._closure[x] = frozenset(out)
        return self._closure[x]


def check(history: History) -> Report:
    report = Report()
    ops = history.ops
    graph = _Graph(ops)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    keys = sorted(set(by_key) | set(history.final))
    for key in keys:
        _check_key(history, key, by_key.get(key, []), graph, report)
    for op in ops:
        if op.error.startswith("internal error"):
            _v(report, "internal_error", op.key, op.error, [op.index])
    seen_errors: dict[str, list[int]] = defaultdict(list)
    for time, error in history.errors:
        seen_errors[error].append(time)
    for error, times in seen_errors.items():
        again = f" (and {len(times) - 1} more times)" if len(times) > 1 else ""
        _v(report, "internal_error", "", f"at {times[0]} ms{again}: {error}")
    _check_guard(history, graph, report)
    return report


def _v(report: Report, invariant: str, key: str, message: str, ops=(), ids=()) -> None:
    report.violations.append(Violation(invariant, key, message, tuple(ops), tuple(ids)))


def _check_key(history: History, key: str, ops: list[Op], graph: _Graph,
               report: Report) -> None:
    copies = history.final.get(key, {})
    final_ids: set[str] = set()
    for copy in copies.values():
        final_ids.update(copy.ids)
    reads = [op for op in ops if op.kind == "get" and op.result == OK]
    writes = [op for op in ops if op.kind != "get"]

    # convergence, and the final reads at ALL
    replicas = history.replicas.get(key, ())
    signatures = {node: copies[node].signature if node in copies else "<no copy>"
                  for node in replicas}
    if len(set(signatures.values())) > 1:
        detail = "; ".join(f"{n}: {list(copies[n].ids) if n in copies else '-'}"
                           for n in replicas)
        _v(report, "convergence", key, f"replicas hold different version sets after healing "
           f"and repair ({detail})")
    elif replicas:
        want = sorted(copies[replicas[0]].ids) if replicas[0] in copies else []
        for op in ops:
            if not op.final:
                continue
            if op.result != OK:
                _v(report, "final_read", key, f"a read at ALL after healing failed: {op.error}",
                   [op.index])
            elif sorted(op.returned) != want:
                _v(report, "final_read", key, f"a read at ALL after healing returned "
                   f"{sorted(op.returned)}, the replicas hold {want}", [op.index])

    # phantom values, and the sibling bound (reads and final copies)
    for op in reads:
        for x in op.returned:
            w = graph.writer.get(x)
            if w is None or w.key != key or w.kind != "put" or w.result == FAILED \
                    or w.start > op.end:
                _v(report, "phantom", key, f"read returned {x}, which no write of {key} that "
                   f"started before it and may have been applied wrote", [op.index], [x])
    groups = [(f"read #{op.index}", op.returned, (op.index,)) for op in reads]
    groups += [(f"final copy on {node}", copy.ids, ()) for node, copy in sorted(copies.items())]
    for what, ids, where in groups:
        _check_siblings(report, key, what, ids, where, graph)

    # lost acknowledged writes
    for w in writes:
        if w.kind != "put" or w.result != OK or w.id in final_ids:
            continue
        if graph.seen_by.get(w.id):
            continue  # superseded by a write or delete that may have been applied
        if graph.fenced_at(w.id) is not None:
            report.fenced_exempt += 1
            continue  # fenced out by a write that knew a higher token of its lock
        if _wiped(history, w):
            report.lost_exempt.append(w.index)
            continue
        _v(report, "lost_write", key, f"acknowledged write {w.id} is not in the final value "
           f"{sorted(final_ids)} and no write or delete saw it", [w.index], [w.id])

    # resurrection: what an acknowledged write or delete saw must stay gone
    for w in writes:
        if w.result != OK:
            continue
        back = sorted(x for x in w.seen if x in final_ids)
        if back and _wiped(history, w):
            report.lost_exempt.append(w.index)  # the write itself is gone, and its effect
            continue
        if back:
            _v(report, "resurrection", key, f"{back} came back after acknowledged {w.kind} "
               f"{w.id} superseded them", [w.index], back)

    _check_ryw(history, key, writes, reads, graph, report)
    _check_fencing(key, writes, copies, graph, report)


def _check_fencing(key: str, writes: list[Op], copies: dict, graph: _Graph,
                   report: Report) -> None:
    applied = {x for copy in copies.values() for x in (*copy.ids, *copy.hidden)}
    applied |= {x for op in graph.reads.get(key, ()) for x in op.returned}
    for u in writes:
        # a write of unknown outcome that nobody read may have been refused: not judged
        if u.token and (u.result == OK or u.id in applied):
            known = graph.knows(u.seen, u.lock)
            if known > u.token:
                _v(report, "fencing", key, f"{u.kind} {u.id} under {u.lock}:{u.token} "
                   f"superseded a write that knew {u.lock}:{known} (a lower token won over a "
                   "higher one)", [u.index], [u.id])
    for node, copy in sorted(copies.items()):
        held = (*copy.ids, *copy.hidden)
        for x in copy.ids:
            w = graph.writer.get(x)
            if w is None or not w.token:
                continue
            above = [y for y in held if y != x and graph.knows((y,), w.lock) > w.token]
            if above:
                _v(report, "fencing", key, f"the final copy on {node} shows {x} "
                   f"({w.lock}:{w.token}) beside {above}, which knew a higher token of "
                   f"{w.lock}", [w.index], [x, *above])
        for x in copy.hidden:
            w = graph.writer.get(x)
            cause = w is not None and w.token and (
                any(graph.knows((y,), w.lock) > w.token for y in held)
                or any(d.kind == "delete" and d.result != FAILED
                       and graph.knows(d.seen, w.lock, d) > w.token for d in writes))
            if not cause:
                _v(report, "fencing", key, f"the final copy on {node} hides {x}, but nothing "
                   "it holds and no delete knew a higher token of its lock", (), [x])


def _check_siblings(report: Report, key: str, what: str, ids: tuple[str, ...],
                    where: tuple[int, ...], graph: _Graph) -> None:
    repeated = sorted({x for x in ids if ids.count(x) > 1})
    if repeated:
        _v(report, "siblings", key, f"{what} holds {repeated} more than once (more siblings "
           "than writes)", where, repeated)
    present = set(ids)
    for y in sorted(present):
        older = sorted(present & graph.ancestors(y))
        if older:
            _v(report, "siblings", key, f"{what} holds {y} beside {older}, which the write of "
               f"{y} had seen (false siblings)", where, [y, *older])


def _wiped(history: History, w: Op) -> bool:
    """Whether every node that held an acknowledged write later lost its copy."""
    return bool(w.holders) and all(
        _lost_at(history, node, w.key, w.start, as_hint=node in w.hint_holders)
        for node in w.holders)


def _lost_at(history: History, node: str, key: str, since: int, *, as_hint: bool) -> bool:
    """A disk loss, or (a hint for) the key's record lost, on `node` at or after `since`."""
    return any(loss.node == node and loss.time >= since and (
        loss.kind == "disk_loss"
        or (loss.key == key and loss.kind.startswith("hint_") == as_hint))
        for loss in history.losses)


def _destroyed_between(history: History, key: str, start: int, end: int) -> bool:
    replicas = history.replicas.get(key, ())
    return any(start <= loss.time <= end and loss.node in replicas and loss.key in ("", key)
               and not loss.kind.startswith("hint_") for loss in history.losses)


def _check_ryw(history: History, key: str, writes: list[Op], reads: list[Op], graph: _Graph,
               report: Report) -> None:
    n = history.n
    deletes = [d for d in writes if d.kind == "delete" and d.result != FAILED]
    for w in writes:
        if w.result != OK or not w.ryw:
            continue
        gone = graph.closure_of(w.seen) if w.kind == "delete" else frozenset()
        for r in reads:
            if r.start <= w.end or r.need + w.need <= n:
                continue
            report.ryw_pairs += 1
            if _destroyed_between(history, key, w.start, r.end):
                report.ryw_exempt += 1
                continue
            if w.kind == "delete":
                stale = sorted(set(r.returned) & gone)
                if stale:
                    _v(report, "read_your_writes", key, f"read after acknowledged delete "
                       f"{w.id} ({w.level}) returned {stale}, which the delete saw",
                       [w.index, r.index], stale)
                continue
            if w.id in r.returned or any(w.id in graph.ancestors(y) for y in r.returned):
                continue
            if graph.fenced_out_by(w, r.end):
                report.fenced_exempt += 1
                continue  # it, or a write that saw it, was fenced out
            if any(d.start <= r.end and w.id in graph.closure_of(d.seen) for d in deletes):
                continue  # a delete that saw it may have taken effect
            _v(report, "read_your_writes", key, f"read ({r.level}) after acknowledged "
               f"{w.mode} write {w.id} ({w.level}) returned {sorted(r.returned)}: neither "
               "it nor a successor", [w.index, r.index], [w.id])


def _check_guard(history: History, graph: _Graph, report: Report) -> None:
    # when each id may first have been superseded: the start of the first write or delete
    # (that may have been applied) whose context covered it
    superseded_at: dict[str, int] = {}
    for op in history.ops:
        if op.kind != "get" and op.result != FAILED:
            for x in graph.closure_of(op.seen):
                if op.start < superseded_at.get(x, op.start + 1):
                    superseded_at[x] = op.start
    for r in history.refusals:  # a fenced-out version is collected with what hid it
        for x in r.ids:
            fenced = graph.fenced_at(x)
            if fenced is not None and fenced < superseded_at.get(x, fenced + 1):
                superseded_at[x] = fenced
    alive = {key: {x for copy in copies.values() for x in copy.ids}
             for key, copies in history.final.items()}
    refused: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for r in history.refusals:
        for x in r.ids:
            if r.time < superseded_at.get(x, r.time + 1) or x in alive.get(r.key, ()):
                refused[(r.key, r.node, x)].append(r.time)
            else:
                report.refused_superseded += 1
    for (key, node, x), times in sorted(refused.items()):
        again = f" (and {len(times) - 1} more times)" if len(times) > 1 else ""
        _v(report, "guard", key, f"the resurrection guard on {node} refused live version {x} "
           f"at {times[0]} ms{again}: nothing had superseded it then, or it is still live "
           "at the end", (), [x])
