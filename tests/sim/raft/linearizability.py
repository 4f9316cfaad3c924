"""A linearizability checker for a key-value register with put / compare-and-set / get.

Wing & Gong's search with Lowe's memoisation (as in Knossos and Porcupine): walk the
history in real-time order, try to linearize each pending call whose effect is consistent
with the model, backtrack when a return is reached whose call was not linearized yet, and
cache (set of linearized ops, state) pairs already explored. Keys are independent
(linearizability is compositional), so each key's sub-history is checked on its own.

An operation whose outcome is unknown (the client timed out) has its return at +infinity:
it may take effect at any point after its call, or never; its result is not checked.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

ABSENT = None


@dataclass
class Op:
    client: int
    key: str
    kind: str  # "put" | "cas" | "get"
    arg: tuple
    call: float
    ret: float = math.inf
    result: Any = None  # cas: bool; get: the value read; put: None
    known: bool = False  # False: indeterminate (timed out)

    def describe(self) -> str:
        res = repr(self.result) if self.known else "?"
        end = "inf" if self.ret == math.inf else f"{self.ret:g}"
        return f"c{self.client} {self.kind}{self.arg} -> {res} [{self.call:g}, {end}]"


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The sequential model: (is `op` with its recorded result legal in `state`, next state)."""
    if op.kind == "put":
        return True, op.arg[0]
    if op.kind == "cas":
        expected, new = op.arg
        hit = state == expected
        if op.known and op.result != hit:
            return False, state
        return True, (new if hit else state)
    if op.kind == "get":
        return (not op.known or op.result == state), state
    raise ValueError(f"unknown op kind {op.kind}")


class _Node:
    __slots__ = ("bit", "is_call", "match", "next", "op", "prev")

    def __init__(self, op: Op | None, bit: int, is_call: bool) -> None:
        self.op = op
        self.bit = bit
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def check_key(ops: list[Op], init: Any = ABSENT, max_steps: int = 2_000_000,
              model=None) -> bool:
    """True if this single-key history is linearizable."""
    events = []
    for i, op in enumerate(ops):
        call = _Node(op, 1 << i, True)
        ret = _Node(op, 1 << i, False)
        call.match = ret
        events.append((op.call, 0, i, call))
        events.append((op.ret, 1, i, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, 0, False)
    prev = head
    for *_, node in events:
        prev.next = node
        node.prev = prev
        prev = node
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    linearized = 0
    state = init
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            raise RuntimeError("linearizability search exceeded its step budget")
        if entry is not None and entry.is_call:
            ok, new_state = (model or step)(state, entry.op)
            if ok:
                key = (linearized | entry.bit, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= entry.bit
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~entry.bit
            _unlift(entry)
            entry = entry.next
    return True


def _lift(call: _Node) -> None:
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


def check_history(ops: list[Op], models: dict[str, tuple[Any, Any]] | None = None
                  ) -> tuple[bool, str]:
    """Check every key; return (ok, key of the first non-linearizable sub-history or '').
    `models`: key -> (step function, initial state) for keys that are not registers."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind == "get" and not op.known:
            continue  # an unanswered read has no effect and nothing to check
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key):
        model, init = (models or {}).get(key, (None, ABSENT))
        if not check_key(by_key[key], init, model=model):
            return False, key
    return True, ""


def brute_force_check(ops: list[Op], init: Any = ABSENT) -> bool:
    """Reference checker for tiny histories: try every order (and every subset of the
    indeterminate ops) that respects real time."""
    must = [o for o in ops if o.known]
    maybe = [o for o in ops if not o.known]
    for r in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, r):
            cand = must + list(chosen)
            for perm in itertools.permutations(cand):
                if any(perm[j].ret < perm[i].call for i in range(len(perm))
                       for j in range(i + 1, len(perm))):
                    continue
                state, ok = init, True
                for o in perm:
                    ok, state = step(state, o)
                    if not ok:
                        break
                if ok:
                    return True
    return False
