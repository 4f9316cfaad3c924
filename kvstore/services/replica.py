"""The replica role: read, merge and mint versions of keys in the local store.

Every change is a read-modify-write run inside the storage engine's write transaction
(group-committed), so concurrent writes to one key never race each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError

from kvstore.core import versions
from kvstore.core.errors import Corruption, Internal
from kvstore.core.versions import Sibling
from kvstore.storage import OverwriteCorrupt
from kvstore.storage.engine import CorruptRecordError, StorageError


def _decode(key: bytes, record: bytes | None) -> list[Sibling]:
    try:
        return versions.decode(record)
    except DecodeError as exc:
        raise CorruptRecordError(key, f"record does not decode ({exc})") from exc


class Replica:
    def __init__(self, node_id: str, store, clock_ms: Callable[[], int]) -> None:
        self.node_id = node_id
        self.store = store
        self.clock_ms = clock_ms
        # Filters what merges take in (anti-entropy's resurrection guard); None: everything.
        self.admit: Callable[[list[Sibling], list[Sibling]], list[Sibling]] | None = None

    async def read(self, key: bytes) -> list[Sibling]:
        try:
            return _decode(key, await self.store.get(key))
        except CorruptRecordError as exc:
            raise Corruption(f"{self.node_id}: {exc}") from exc
        except StorageError as exc:
            raise Internal(f"{self.node_id}: storage failed: {exc}") from exc

    async def merge(self, key: bytes, incoming: list[Sibling]) -> list[Sibling]:
        """Merge versions from another replica (replication, repair, handoff)."""
        out: list[list[Sibling]] = []

        def mutation(record: bytes | None) -> bytes | None:
            current = _decode(key, record)
            accepted = incoming if self.admit is None else self.admit(current, incoming)
            merged = versions.sync(current, accepted)
            out.append(merged)
            if {s.dot for s in merged} == {s.dot for s in current}:
                return None  # nothing new: no write, no fsync
            return versions.encode(merged)

        # A damaged local record is replaced by what the merge makes of nothing: the
        # incoming versions are authoritative copies from another replica.
        await self._update(key, OverwriteCorrupt(mutation))
        return out[-1]

    async def mint(
        self, key: bytes, context: Mapping[str, int] | versions.Context, value: bytes, *,
        tombstone: bool = False
    ) -> list[Sibling]:
        """Coordinate a client write here: make a new version that supersedes `context`.

        Returns the key's siblings afterwards; the new version is the last.
        """
        out: list[list[Sibling]] = []
        now = self.clock_ms()

        def mutation(record: bytes | None) -> bytes:
            current = _decode(key, record)
            updated = versions.update(
                current, context, self.node_id, value, tombstone=tombstone, now_ms=now
            )
            out.append(updated)
            return versions.encode(updated)

        await self._update(key, mutation)
        return out[-1]

    async def _update(self, key: bytes, mutation) -> None:
        try:
            await self.store.update(key, mutation)
        except CorruptRecordError as exc:
            raise Corruption(
                f"{self.node_id}: {exc}; the record was not changed (repair restores it)"
            ) from exc
        except StorageError as exc:
            raise Internal(f"{self.node_id}: storage failed: {exc}") from exc
