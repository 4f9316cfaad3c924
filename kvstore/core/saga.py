"""Sagas (issue 12): the pure engine. Given a saga's definition and its durable log, say
what to do next; no I/O, no clock (the caller passes times in).

A saga is a list of steps, each one write to the replicated store (a put or a delete,
optionally conditional) with a compensation (an unconditional put or delete that undoes
it). The log, kept in the Raft group by the caller (kvstore/client/saga.py), is a list of
entries appended in order:

    start i      step i is about to be applied (its outcome is unknown until `done i`)
    done i       step i was applied
    failed i     step i's condition did not hold (it was not applied), or the store kept
                 failing it (`unknown`: it may have been applied); the saga now
                 compensates, and no forward entry follows
    comp i       the compensation of step i is about to be applied
    undone i     the compensation of step i was applied
    end S        the saga finished: S is COMMITTED or COMPENSATED (the last entry)

The decision (`next_action`) depends on the log only, so a coordinator that dies anywhere
is replaced by one that reads the log and calls the same function:

* going forward, the first step without `done` is started (or, when `start` is logged
  already, applied again: a put or delete of a given value is idempotent, and a step whose
  outcome is unknown is treated as possibly applied);
* once a step failed, every step that was applied or possibly applied is compensated,
  the latest first - every started step except one whose condition was found false (it
  was not applied, and undoing it would overwrite someone else's value); a compensation
  is idempotent too and is repeated until its `undone` is logged;
* the saga ends COMMITTED when every step is done, COMPENSATED when every step to undo is
  undone. It never ends otherwise: it ends fully applied or fully compensated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMITTED",
    "COMPENSATED",
    "COMPENSATING",
    "MAX_STEPS",
    "RUNNING",
    "Append",
    "Execute",
    "Finished",
    "LogEntry",
    "LogError",
    "Op",
    "SagaDef",
    "SagaSchemaError",
    "SagaStatus",
    "SagaStep",
    "abort_entry",
    "after_execute",
    "next_action",
    "parse_saga",
    "status",
    "validate_log",
]

COMMITTED, COMPENSATED = "COMMITTED", "COMPENSATED"
RUNNING, COMPENSATING = "RUNNING", "COMPENSATING"
MAX_STEPS = 64  # a saga's log grows with its steps: bounded, and documented
MAX_KEY, MAX_VALUE = 1024, 4096
MAX_ENCODED = 60 * 1024  # the definition is one metadata value (at most 64 KiB)
ENTRY_KINDS = ("start", "done", "failed", "comp", "undone", "end")


class SagaSchemaError(ValueError):
    """A saga file that does not fit the schema: the message names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class LogError(ValueError):
    """A saga log that no coordinator following this engine could have written."""


@dataclass(frozen=True)
class Op:
    """One write: put `value` at `key`, or delete `key`. A forward step may be conditional:
    `if_value` (the key holds exactly this one value), `if_absent` (no live value), or
    `if_context` (the key's causal context is this one, from `kv get --json`: nobody wrote
    it since)."""

    kind: str  # "put" | "delete"
    key: str
    value: str | None = None
    if_value: str | None = None
    if_absent: bool = False
    if_context: str | None = None

    @property
    def conditional(self) -> bool:
        return self.if_value is not None or self.if_absent or self.if_context is not None

    def describe(self) -> str:
        what = f"put {self.key}={self.value}" if self.kind == "put" else f"delete {self.key}"
        if self.if_value is not None:
            what += f" if {self.key}={self.if_value}"
        if self.if_absent:
            what += f" if {self.key} absent"
        if self.if_context is not None:
            what += f" if {self.key} unchanged since its context"
        return what

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.kind, "key": self.key}
        if self.kind == "put":
            out["value"] = self.value
        if self.if_value is not None:
            out["if_value"] = self.if_value
        if self.if_absent:
            out["if_absent"] = True
        if self.if_context is not None:
            out["if_context"] = self.if_context
        return out


@dataclass(frozen=True)
class SagaStep:
    name: str
    action: Op
    compensation: Op

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.action.to_json(),
                "compensation": self.compensation.to_json()}


@dataclass(frozen=True)
class SagaDef:
    name: str
    steps: tuple[SagaStep, ...]

    def __post_init__(self) -> None:
        assert 1 <= len(self.steps) <= MAX_STEPS, len(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [s.to_json() for s in self.steps]}

    def encode(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


_STEP_FIELDS = {"name", "op", "key", "value", "if_value", "if_absent", "if_context",
                "compensation"}
_COMP_FIELDS = {"op", "key", "value"}


def _text(obj: dict, name: str, path: str, *, required: bool, limit: int) -> str | None:
    if name not in obj or obj[name] is None:
        if required:
            raise SagaSchemaError(f"{path}.{name}", "missing (a string is required)")
        return None
    value = obj[name]
    if not isinstance(value, str):
        raise SagaSchemaError(f"{path}.{name}", f"must be a string, not {type(value).__name__}")
    if len(value.encode()) > limit:
        raise SagaSchemaError(f"{path}.{name}", f"longer than {limit} bytes")
    return value


def _op(obj: Any, path: str, *, allowed: set[str]) -> Op:
    if not isinstance(obj, dict):
        raise SagaSchemaError(path, f"must be an object, not {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SagaSchemaError(f"{path}.{unknown[0]}", "unknown field (allowed: "
                              + ", ".join(sorted(allowed)) + ")")
    kind = obj.get("op")
    if kind not in ("put", "delete"):
        raise SagaSchemaError(f"{path}.op", f"must be \"put\" or \"delete\", not {kind!r}")
    key = _text(obj, "key", path, required=True, limit=MAX_KEY)
    if not key:
        raise SagaSchemaError(f"{path}.key", "must not be empty")
    value = _text(obj, "value", path, required=kind == "put", limit=MAX_VALUE)
    if kind == "delete" and value is not None:
        raise SagaSchemaError(f"{path}.value", "a delete takes no value")
    if_value = _text(obj, "if_value", path, required=False, limit=MAX_VALUE)
    if_context = _text(obj, "if_context", path, required=False, limit=MAX_VALUE)
    if_absent = obj.get("if_absent", False)
    if not isinstance(if_absent, bool):
        raise SagaSchemaError(f"{path}.if_absent", "must be true or false")
    if sum((if_value is not None, if_absent, if_context is not None)) > 1:
        raise SagaSchemaError(f"{path}.if_value", "give at most one of if_value, if_absent "
                              "and if_context")
    return Op(kind, key, value, if_value, if_absent, if_context)


def parse_saga(obj: Any) -> SagaDef:
    """A saga definition from its JSON form; SagaSchemaError names the offending field
    (`steps[1].compensation.op`)."""
    if not isinstance(obj, dict):
        raise SagaSchemaError("(top level)", "must be an object with \"steps\"")
    unknown = sorted(set(obj) - {"name", "steps"})
    if unknown:
        raise SagaSchemaError(unknown[0], "unknown field (allowed: name, steps)")
    name = _text(obj, "name", "saga", required=False, limit=200) or "saga"
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SagaSchemaError("steps", "must be a non-empty list of steps")
    if len(steps) > MAX_STEPS:
        raise SagaSchemaError("steps", f"{len(steps)} steps: at most {MAX_STEPS}")
    out = []
    for i, raw in enumerate(steps):
        path = f"steps[{i}]"
        action = _op(raw, path, allowed=_STEP_FIELDS)
        if "compensation" not in raw:
            raise SagaSchemaError(f"{path}.compensation", "missing (every step needs one: "
                                  "the put or delete that undoes it)")
        comp = _op(raw["compensation"], f"{path}.compensation", allowed=_COMP_FIELDS)
        step_name = _text(raw, "name", path, required=False, limit=200) or f"step {i}"
        out.append(SagaStep(step_name, action, comp))
    defn = SagaDef(name, tuple(out))
    size = len(defn.encode().encode())
    if size > MAX_ENCODED:
        raise SagaSchemaError("steps", f"the saga is {size} bytes encoded; at most "
                              f"{MAX_ENCODED} (it is stored as one metadata value)")
    return defn


# ---- the log ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LogEntry:
    kind: str          # one of ENTRY_KINDS
    step: int = -1     # the step (all kinds but end)
    outcome: str = ""  # end: COMMITTED / COMPENSATED
    reason: str = ""   # failed: why
    at_ms: int = 0     # the coordinator's wall clock when it appended the entry
    by: str = ""       # the coordinator that appended it
    unknown: bool = False  # failed: the store kept failing it (it may have been applied)

    def __post_init__(self) -> None:
        assert self.kind in ENTRY_KINDS, self.kind
        assert (self.kind == "end") == (self.step < 0), self
        assert self.kind != "end" or self.outcome in (COMMITTED, COMPENSATED), self

    def encode(self) -> str:
        out: dict[str, Any] = {"e": self.kind, "at_ms": self.at_ms, "by": self.by}
        if self.step >= 0:
            out["step"] = self.step
        if self.outcome:
            out["outcome"] = self.outcome
        if self.reason:
            out["reason"] = self.reason
        if self.unknown:
            out["unknown"] = True
        return json.dumps(out, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> LogEntry:
        try:
            raw = json.loads(text)
            return cls(raw["e"], int(raw.get("step", -1)), raw.get("outcome", ""),
                       raw.get("reason", ""), int(raw.get("at_ms", 0)), raw.get("by", ""),
                       bool(raw.get("unknown", False)))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise LogError(f"unreadable saga log entry {text[:80]!r}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.encode())


@dataclass
class _Replay:
    started: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    failed: int | None = None
    reason: str = ""
    unknown: bool = False
    comp: set[int] = field(default_factory=set)
    undone: list[int] = field(default_factory=list)
    outcome: str = ""

    def to_undo(self) -> list[int]:
        """The steps a failed saga compensates, in start order: every started step but
        one that failed on its condition (certainly not applied)."""
        return [i for i in self.started if i != self.failed or self.unknown]


def _replay(defn: SagaDef, log: list[LogEntry]) -> _Replay:
    """Check the log against the protocol (LogError if no correct coordinator wrote it) and
    summarise it."""
    r = _Replay()
    n = len(defn.steps)
    for pos, e in enumerate(log):
        where = f"log entry {pos} ({e.kind} {e.step})"
        if r.outcome:
            raise LogError(f"{where}: after the saga ended")
        if e.kind != "end" and not 0 <= e.step < n:
            raise LogError(f"{where}: no such step (the saga has {n})")
        if e.kind == "start":
            if r.failed is not None:
                raise LogError(f"{where}: a forward step after the saga failed")
            expected = len(r.started)
            if e.step != expected or (r.started and r.started[-1] not in r.done):
                raise LogError(f"{where}: steps start in order, each after the previous is done")
            r.started.append(e.step)
        elif e.kind == "done":
            if e.step not in r.started or e.step in r.done or r.failed is not None:
                raise LogError(f"{where}: done without start, twice, or after a failure")
            r.done.add(e.step)
        elif e.kind == "failed":
            if r.failed is not None or not r.started or e.step != r.started[-1] \
                    or e.step in r.done:
                raise LogError(f"{where}: only the latest started, unfinished step can fail")
            r.failed, r.reason, r.unknown = e.step, e.reason, e.unknown
        elif e.kind == "comp":
            if r.failed is None or e.step not in r.to_undo() or e.step in r.undone:
                raise LogError(f"{where}: compensation of a step that needs none")
            r.comp.add(e.step)
        elif e.kind == "undone":
            if e.step not in r.comp or e.step in r.undone:
                raise LogError(f"{where}: undone without comp, or twice")
            r.undone.append(e.step)
        elif e.kind == "end":
            if e.outcome == COMMITTED and (r.failed is not None or len(r.done) != n):
                raise LogError(f"{where}: COMMITTED with steps not done")
            if e.outcome == COMPENSATED and (
                    r.failed is None or set(r.undone) != set(r.to_undo())):
                raise LogError(f"{where}: COMPENSATED with started steps not undone")
            r.outcome = e.outcome
    return r


def validate_log(defn: SagaDef, log: list[LogEntry]) -> None:
    _replay(defn, log)


# ---- deciding --------------------------------------------------------------------------

@dataclass(frozen=True)
class Append:
    """Append `entry` to the log (no store write)."""

    entry: LogEntry


@dataclass(frozen=True)
class Execute:
    """Apply step `step`'s action (or, with `compensate`, its compensation) to the store,
    then append what `after_execute` says."""

    step: int
    op: Op
    compensate: bool


@dataclass(frozen=True)
class Finished:
    outcome: str


Action = Append | Execute | Finished


def next_action(defn: SagaDef, log: list[LogEntry]) -> Action:
    """What the coordinator does next, given everything logged so far."""
    r = _replay(defn, log)
    if r.outcome:
        return Finished(r.outcome)
    if r.failed is not None:
        # compensate every started step, the latest first; the one whose `comp` is logged
        # without `undone` first of all (it is the latest pending: comps go in order)
        pending = [i for i in reversed(r.to_undo()) if i not in r.undone]
        if not pending:
            return Append(LogEntry("end", outcome=COMPENSATED))
        i = pending[0]
        if i not in r.comp:
            return Append(LogEntry("comp", i))
        return Execute(i, defn.steps[i].compensation, True)
    if len(r.done) == len(defn.steps):
        return Append(LogEntry("end", outcome=COMMITTED))
    i = len(r.done)
    assert all(j in r.done for j in range(i)), "steps are done in order"
    if len(r.started) == i:
        return Append(LogEntry("start", i))
    return Execute(i, defn.steps[i].action, False)


def after_execute(action: Execute, applied: bool, reason: str = "") -> LogEntry:
    """The entry that records an execution: `done`/`undone`, or `failed` when a forward
    step's condition did not hold (`applied` False). A compensation always applies."""
    if action.compensate:
        assert applied, "a compensation is unconditional: it is retried until it applies"
        return LogEntry("undone", action.step)
    return LogEntry("done", action.step) if applied else LogEntry(
        "failed", action.step, reason=reason or "condition failed")


def abort_entry(defn: SagaDef, log: list[LogEntry], reason: str) -> LogEntry:
    """The entry that turns a running saga to compensation because its in-flight step
    could not be applied (the store kept refusing it): `failed` for that step."""
    r = _replay(defn, log)
    assert not r.outcome and r.failed is None, "only a running saga can be aborted"
    assert r.started and r.started[-1] not in r.done, "a step must be in flight"
    return LogEntry("failed", r.started[-1], reason=reason, unknown=True)


# ---- status ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SagaStatus:
    state: str                # RUNNING / COMPENSATING / COMMITTED / COMPENSATED
    steps_done: int
    steps_total: int
    failed_step: int | None
    reason: str
    undone: tuple[int, ...]
    in_flight: int | None     # a step (or compensation) started and not yet finished

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "steps_done": self.steps_done,
                "steps_total": self.steps_total, "failed_step": self.failed_step,
                "reason": self.reason or None, "undone": list(self.undone),
                "in_flight": self.in_flight}


def status(defn: SagaDef, log: list[LogEntry]) -> SagaStatus:
    r = _replay(defn, log)
    state = r.outcome or (COMPENSATING if r.failed is not None else RUNNING)
    if r.failed is not None:
        flight = next((i for i in r.comp if i not in r.undone), None)
    else:
        flight = r.started[-1] if r.started and r.started[-1] not in r.done else None
    return SagaStatus(state, len(r.done), len(defn.steps), r.failed, r.reason,
                      tuple(r.undone), None if r.outcome else flight)
