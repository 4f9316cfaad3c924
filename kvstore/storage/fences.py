"""`FenceTable`: the highest fencing token a replica has seen per lock, kept with its data.

A replica refuses a guarded write whose token is below the highest it has seen for the
lock, in any key (docs/architecture.md, "Fencing"). The table lives in the storage engine
and changes only inside the engine's write transaction: a mutation (running on the
writer thread, in order with every other mutation) reads `highest` and `raise_to`s a new
highest; the engine writes the staged rows in the same transaction as the records and
`commit`s them once it is durable, or `abort`s them when the transaction fails. So the
check and the write are atomic, and a token the table has learned is exactly as durable
as the write that taught it.

One row per lock name ever seen (a name is at most 256 bytes): the table is not pruned.
A lost data directory loses it; merges teach it again (every version carries the tokens
its writer knew), and versions' own fences keep the merge rule correct meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping


class FenceTable:
    def __init__(self, rows: Mapping[str, int] | None = None) -> None:
        self._rows: dict[str, int] = dict(rows or {})
        self._staged: dict[str, int] = {}

    def highest(self, lock: str) -> int:
        """The highest token seen for `lock` (0: none), staged raises included."""
        staged = self._staged.get(lock, 0)
        return max(staged, self._rows.get(lock, 0))

    def raise_to(self, lock: str, token: int) -> bool:
        """Stage `token` as the highest for `lock` if it is higher; whether it was."""
        if token <= self.highest(lock):
            return False
        self._staged[lock] = token
        return True

    def learn(self, fences: Mapping[str, int]) -> None:
        """`raise_to` every (lock, token) of `fences`."""
        for lock, token in fences.items():
            self.raise_to(lock, token)

    # -- the engine's side of the transaction ----------------------------------------
    def staged(self) -> dict[str, int]:
        """The rows to write in the transaction being committed."""
        return dict(self._staged)

    def commit(self) -> None:
        """The transaction holding the staged rows is durable."""
        self._rows.update(self._staged)
        self._staged.clear()

    def abort(self) -> None:
        """The transaction failed: forget what it staged."""
        self._staged.clear()

    def snapshot(self) -> dict[str, int]:
        """Every committed (lock, highest token)."""
        return dict(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
