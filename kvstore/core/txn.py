"""Distributed transactions, the pure parts (issue 12; docs/transactions.md).

* `TxnTable`: the transaction records kept by the Raft metadata state machine
  (core/meta.py delegates the txn_begin / txn_decide / txn_forget commands here). A record
  goes PENDING -> COMMITTED or PENDING -> ABORTED exactly once, by compare-and-set: the
  Raft entry that moves it is the commit point of the transaction.
* Request checks (`check_request`): the bounds and bad input a transaction is refused for,
  before anything is written.
* What a replica decides about an intent (`check_condition`) and what a committed
  transaction writes (`commit_version`): the version is a function of the transaction id
  and what the prepared replicas held, so every resolver merges the very same version.

No I/O, no clock reads: times are arguments.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import txn_pb2 as tpb
from kvstore.core import versions
from kvstore.core.versions import Sibling

__all__ = [
    "MAX_KEYS", "MAX_PENDING", "MAX_TOTAL_BYTES", "MAX_VALUE_BYTES", "TXN_ACTOR_PREFIX",
    "BadTxn", "TxnTable", "check_condition", "check_request", "commit_version",
    "is_txn_actor", "state_name",
]

MAX_KEYS = 64                  # keys a transaction may write or check
MAX_VALUE_BYTES = 16 * 1024    # per value (the record in Raft carries the versions)
MAX_TOTAL_BYTES = 256 * 1024   # keys + values of one transaction
MAX_TXN_ID = 64
MAX_PENDING = 10_000           # undecided or unresolved records: more is refused (backpressure)
MAX_DECIDED = 10_000           # resolved records kept for `kv txn status` (oldest dropped)
MIN_TTL_MS, MAX_TTL_MS = 100, 60_000
TXN_ACTOR_PREFIX = "~"          # a committed version's actor: "~" + txn id (never a node id)

P, C, A = tpb.TXN_PENDING, tpb.TXN_COMMITTED, tpb.TXN_ABORTED


def state_name(state: int) -> str:
    return {0: "UNKNOWN", P: "PENDING", C: "COMMITTED", A: "ABORTED"}.get(state, str(state))


class BadTxn(ValueError):
    """A transaction request that is refused as it is: nothing was applied."""


def _check_id(txn_id: str) -> None:
    if not txn_id or len(txn_id) > MAX_TXN_ID or not all(
            c.isalnum() or c in "-_." for c in txn_id):
        raise BadTxn(f"transaction id {txn_id!r} must be 1-{MAX_TXN_ID} characters of "
                     "letters, digits, '-', '_' or '.'")


def check_request(txn_id: str, writes: Sequence[tuple[bytes, bytes]],
                  checks: Sequence[tuple[bytes, int, bytes]], ttl_ms: int,
                  max_key_bytes: int = 1024) -> list[bytes]:
    """Refuse a malformed transaction (BadTxn, a message for the user); return its keys in
    the order they are prepared (sorted: two transactions meet on their first common key).

    `writes`: (key, value); `checks`: (key, condition kind, context bytes)."""
    _check_id(txn_id)
    if not writes:
        raise BadTxn("a transaction writes at least one key (give KEY=VALUE)")
    keys = [k for k, _ in writes]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise BadTxn("duplicate key in the transaction: " + ", ".join(map(_show, dup))
                     + " (each key is written at most once)")
    ck = [k for k, _, _ in checks]
    dup = sorted({k for k in ck if ck.count(k) > 1})
    if dup:
        raise BadTxn("more than one condition on " + ", ".join(map(_show, dup)))
    every = sorted(set(keys) | set(ck))
    if len(every) > MAX_KEYS:
        raise BadTxn(f"a transaction touches at most {MAX_KEYS} keys, not {len(every)}")
    total = 0
    for key, value in writes:
        if not key or len(key) > max_key_bytes:
            raise BadTxn(f"key {_show(key)} must be 1-{max_key_bytes} bytes")
        if len(value) > MAX_VALUE_BYTES:
            raise BadTxn(f"the value of {_show(key)} is {len(value)} bytes; a transaction's "
                         f"values are at most {MAX_VALUE_BYTES} bytes each")
        total += len(key) + len(value)
    if total > MAX_TOTAL_BYTES:
        raise BadTxn(f"the transaction carries {total} bytes; at most {MAX_TOTAL_BYTES}")
    for key, kind, context in checks:
        if not key or len(key) > max_key_bytes:
            raise BadTxn(f"key {_show(key)} must be 1-{max_key_bytes} bytes")
        if kind == tpb.TxnCondition.CONTEXT:
            if not context:
                raise BadTxn(f"the condition on {_show(key)} has no context: give "
                             "KEY@CONTEXT with the context a read printed (kv get --json)")
            try:
                versions.parse_context(context)
            except (versions.InvalidContext, ValueError) as exc:
                raise BadTxn(f"the context in the condition on {_show(key)} is not valid "
                             f"({exc})") from exc
        elif kind != tpb.TxnCondition.ABSENT:
            raise BadTxn(f"unknown condition kind {kind} on {_show(key)}")
    if ttl_ms and not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        raise BadTxn(f"a transaction's deadline is {MIN_TTL_MS} ms - {MAX_TTL_MS} ms away, "
                     f"not {ttl_ms} ms")
    return every


def _show(key: bytes) -> str:
    return repr(key.decode("utf-8", "replace"))


# ---- replicas -------------------------------------------------------------------------


def check_condition(condition: tpb.TxnCondition, local: Sequence[Sibling]) -> str | None:
    """Why `condition` fails against the versions a replica holds (None: it holds)."""
    shown = versions.live(local)
    if condition.kind == tpb.TxnCondition.ABSENT:
        if shown:
            return "the key exists (--if-absent)"
        return None
    if condition.kind == tpb.TxnCondition.CONTEXT:
        seen = versions.parse_context(condition.context)
        unseen = [s for s in local if not seen.covers(s.node, s.counter)
                  and not s.tombstone]
        if unseen:
            return "the key changed since the context was read"
    return None


def three_pc_timeout(intent: tpb.TxnIntent, now_ms: int) -> str | None:
    """Classic 3PC's participant rule when its coordinator falls silent: past the phase
    deadline a PRECOMMITTED participant commits (everyone voted yes, so the coordinator
    must have been heading for commit), an uncertain one aborts. Under a partition the two
    sides decide differently (docs/transactions.md; tests/sim/test_txn_3pc.py)."""
    assert intent.protocol == "3pc", "only 3PC intents decide by timeout"
    if now_ms < intent.phase_deadline_ms:
        return None
    return "commit" if intent.precommitted else "abort"


def is_txn_actor(node: str) -> bool:
    return node.startswith(TXN_ACTOR_PREFIX)


def commit_version(txn_id: str, value: bytes, tombstone: bool,
                   held: Iterable[Sequence[Sibling]], now_ms: int) -> Sibling:
    """The version a committed transaction gives a key: actor "~<txn id>", counter 1 (a
    transaction id names one event for ever), superseding every version the prepared
    replicas held (they held no other intent, and refused plain writes meanwhile)."""
    held = [list(h) for h in held]
    seen = versions.read_context([s for h in held for s in h])
    past = versions.prune(seen.clock)
    node = TXN_ACTOR_PREFIX + txn_id
    assert past.get(node, 0) == 0, "a transaction's dot is fresh"
    return Sibling(node=node, counter=1, past=past, value=b"" if tombstone else value,
                   tombstone=tombstone, written_at_ms=now_ms,
                   seen=frozenset(d for d in seen.dots if not versions.covers(past, *d)),
                   fences=versions.bound_fences(seen.fences))


# ---- the records (in the Raft state machine) --------------------------------------------


@dataclass(slots=True)
class _Outcome:
    code: int
    error: str = ""


class TxnTable:
    """Transaction records, applied in log order (deterministic). `apply_*` return the
    (code, error) of the command; the record is `get(txn_id)` afterwards."""

    def __init__(self) -> None:
        self.records: dict[str, tpb.TxnRecord] = {}
        self.live: set[str] = set()          # not yet forgotten (pending or unresolved)
        self.done: OrderedDict[str, None] = OrderedDict()  # forgotten-resolved, kept for status

    def get(self, txn_id: str) -> tpb.TxnRecord | None:
        return self.records.get(txn_id)

    def begin(self, index: int, op: tpb.TxnBegin) -> _Outcome:
        if op.txn_id in self.records:
            return _Outcome(mpb.META_OK)  # a retry: the record as it is
        if len(self.live) >= MAX_PENDING:
            return _Outcome(mpb.META_BAD_REQUEST,
                            f"{MAX_PENDING} transactions are undecided or unresolved; retry "
                            "later")
        self.records[op.txn_id] = tpb.TxnRecord(
            txn_id=op.txn_id, state=P, keys=list(op.keys), coordinator=op.coordinator,
            deadline_ms=op.deadline_ms, created_revision=index, created_at_ms=op.now_ms,
            protocol=op.protocol or "raft")
        self.live.add(op.txn_id)
        return _Outcome(mpb.META_OK)

    def decide(self, index: int, op: tpb.TxnDecide) -> _Outcome:
        rec = self.records.get(op.txn_id)
        if rec is None:
            return _Outcome(mpb.META_NOT_FOUND, f"no transaction {op.txn_id!r} (never begun, "
                                                "or decided and resolved long ago)")
        if rec.state != P:
            if rec.state == op.state:
                return _Outcome(mpb.META_OK)  # the same decision again (another resolver)
            return _Outcome(mpb.META_COMPARE_FAILED,
                            f"transaction {op.txn_id} is {state_name(rec.state)} already")
        state, reason = op.state, op.reason
        if state == C and op.now_ms > rec.deadline_ms:
            state, reason = A, "expired: the commit came after the deadline"
        if state == A and not op.by_coordinator and op.now_ms <= rec.deadline_ms:
            return _Outcome(mpb.META_COMPARE_FAILED,
                            f"transaction {op.txn_id} is PENDING and its deadline has not "
                            "passed; only its coordinator may abort it now")
        if state == C:
            written = {v.key for v in op.versions}
            assert written <= set(rec.keys), "a commit writes only the record's keys"
            rec.versions.extend(op.versions)
            rec.commit_hlc = op.commit_hlc
        rec.state, rec.decided_by, rec.decided_revision = state, op.by, index
        rec.decided_at_ms, rec.reason = op.now_ms, reason
        if state != op.state:
            return _Outcome(mpb.META_COMPARE_FAILED, f"transaction {op.txn_id} {reason}")
        return _Outcome(mpb.META_OK)

    def forget(self, op: tpb.TxnForget) -> _Outcome:
        rec = self.records.get(op.txn_id)
        if rec is None or rec.state == P:
            return _Outcome(mpb.META_OK if rec is None else mpb.META_BAD_REQUEST,
                            "" if rec is None else "a PENDING transaction is not forgotten")
        if op.txn_id in self.live:
            self.live.discard(op.txn_id)
            del rec.versions[:]  # every replica holds them: keep the record small
            self.done[op.txn_id] = None
            while len(self.done) > MAX_DECIDED:
                old, _ = self.done.popitem(last=False)
                self.records.pop(old, None)
        return _Outcome(mpb.META_OK)

    def snapshot(self) -> dict:
        return {"records": [base64.b64encode(self.records[t].SerializeToString()).decode()
                            for t in sorted(self.records)],
                "live": sorted(self.live), "done": list(self.done)}

    def restore(self, obj: dict) -> None:
        recs = [tpb.TxnRecord.FromString(base64.b64decode(r)) for r in obj.get("records", [])]
        self.records = {r.txn_id: r for r in recs}
        self.live = set(obj.get("live", []))
        self.done = OrderedDict((t, None) for t in obj.get("done", []))


def validate(op_name: str, op) -> None:
    """Raise ValueError if a txn command is malformed (core/meta.validate_command)."""
    try:
        _check_id(op.txn_id)
    except BadTxn as exc:
        raise ValueError(str(exc)) from exc
    if op_name == "txn_begin":
        if not op.keys or len(op.keys) > MAX_KEYS:
            raise ValueError(f"a transaction has 1-{MAX_KEYS} keys")
        if len(set(op.keys)) != len(op.keys):
            raise ValueError("duplicate key in a transaction record")
    if op_name == "txn_decide" and op.state not in (C, A):
        raise ValueError("a decision is COMMITTED or ABORTED")
