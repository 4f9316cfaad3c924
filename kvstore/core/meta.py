"""The metadata state machine replicated by Raft: a small key-value namespace with
compare-and-set. Pure and deterministic - every replica applying the same commands in the
same order ends in the same state and returns the same results - so it can be simulated.

Commands are compact JSON objects (they are few and small; readability on the wire and in
debugging beats a few bytes). A malformed command is applied as a no-op returning an error
result: it must not crash one replica and not another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["MetaResult", "MetaStateMachine", "decode_command", "encode_cas", "encode_delete",
           "encode_put"]

MAX_KEY = 1024
MAX_VALUE = 64 * 1024


@dataclass(frozen=True, slots=True)
class MetaResult:
    ok: bool
    value: str | None = None  # put/cas: the previous value; get: the value
    request_id: str = ""
    error: str = ""


def _check(key: str, value: str | None) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValueError(f"meta key must be a non-empty string of at most {MAX_KEY} chars")
    if value is not None and (not isinstance(value, str) or len(value) > MAX_VALUE):
        raise ValueError(f"meta value must be a string of at most {MAX_VALUE} chars")


def encode_put(key: str, value: str, request_id: str = "") -> bytes:
    _check(key, value)
    return json.dumps({"op": "put", "k": key, "v": value, "id": request_id},
                      separators=(",", ":")).encode()


def encode_cas(key: str, expected: str | None, new: str | None, request_id: str = "") -> bytes:
    """Set `key` to `new` (None deletes) only if its value is `expected` (None: absent)."""
    _check(key, expected)
    _check(key, new)
    return json.dumps({"op": "cas", "k": key, "e": expected, "v": new, "id": request_id},
                      separators=(",", ":")).encode()


def encode_delete(key: str, request_id: str = "") -> bytes:
    _check(key, None)
    return json.dumps({"op": "del", "k": key, "id": request_id}, separators=(",", ":")).encode()


def decode_command(data: bytes) -> dict:
    """Parse and validate a command; raise ValueError if malformed."""
    try:
        cmd = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"meta command is not JSON: {exc}") from None
    if not isinstance(cmd, dict) or cmd.get("op") not in ("put", "cas", "del"):
        raise ValueError("meta command needs op put|cas|del")
    _check(cmd.get("k"), cmd.get("v"))
    if cmd["op"] == "cas":
        _check(cmd["k"], cmd.get("e"))
    if not isinstance(cmd.get("id", ""), str):
        raise ValueError("meta request id must be a string")
    return cmd


class MetaStateMachine:
    """Applies committed raft entries (empty entries are leader no-ops)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, index: int, command: bytes) -> MetaResult | None:
        """Apply the entry at `index`; None for no-op entries."""
        if index != self.applied + 1:
            raise ValueError(f"apply out of order: {index} after {self.applied}")
        self.applied = index
        if not command:
            return None
        try:
            cmd = decode_command(command)
        except ValueError as exc:
            return MetaResult(False, error=str(exc))
        key, rid = cmd["k"], cmd.get("id", "")
        prev = self.data.get(key)
        op = cmd["op"]
        if op == "cas" and prev != cmd.get("e"):
            return MetaResult(False, prev, rid, "compare failed")
        new = None if op == "del" else cmd.get("v")
        if new is None:
            self.data.pop(key, None)
        else:
            self.data[key] = new
        return MetaResult(True, prev, rid)

    def skip(self, index: int) -> None:
        """Account for a non-command entry (configuration change) at `index`."""
        if index != self.applied + 1:
            raise ValueError(f"apply out of order: {index} after {self.applied}")
        self.applied = index

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return json.dumps({"applied": self.applied, "data": self.data}, sort_keys=True,
                          separators=(",", ":")).encode()

    def restore(self, image: bytes, index: int) -> None:
        obj = json.loads(image) if image else {"data": {}}
        self.data = dict(obj["data"])
        self.applied = index
