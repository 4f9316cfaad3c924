"""The replica role: read, merge and mint versions of keys in the local store.

Every change is a read-modify-write run inside the storage engine's write transaction
(group-committed), so concurrent writes to one key never race each other.

Dots stay fresh (core/versions.py): a key's record remembers the actor epoch this replica
mints it under and the highest counter minted. A record that is absent (first write
here, purged, dropped after corruption, lost disk) has no epoch, so the next write takes a
fresh one from the node's `EpochAllocator`. A record that knows less of its own actor
than a client or a peer does has regressed (a restored backup): it is detected, counted,
and the next write takes a fresh epoch too.

Purged tombstones leave a *marker* (the clock they covered) for `marker_ttl_ms`: merges
refuse exactly the versions a purged tombstone covered, and nothing else.

Fencing: the store's `FenceTable` holds the highest token this replica has seen per lock.
A guarded write (`mint` or a replicated `merge` with `fence`) is refused with `Fenced`,
inside the storage mutation, when its token is below that or below what the key's record
or the writer's context knows of the lock; every write and merge teaches the table the
tokens its versions carry.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from itertools import pairwise

from google.protobuf.message import DecodeError

from kvstore._proto import common_pb2
from kvstore.core import tombstones, versions
from kvstore.core.errors import Conflict, Corruption, Fenced, Internal, KVError
from kvstore.core.merkle import version_digest
from kvstore.core.versions import Record, Sibling
from kvstore.storage import DELETE, OverwriteCorrupt
from kvstore.storage.engine import CorruptRecordError, StorageError
from kvstore.storage.epochs import EpochAllocator
from kvstore.storage.fences import FenceTable

log = logging.getLogger(__name__)


def _decode(key: bytes, record: bytes | None) -> Record:
    try:
        return versions.decode_record(record)
    except DecodeError as exc:
        raise CorruptRecordError(key, f"record does not decode ({exc})") from exc


def _horizon(context: Mapping[str, int] | versions.Context) -> versions.Clock:
    """Every actor counter a client's context names (its single dots included)."""
    if isinstance(context, versions.Context):
        return context.horizon()
    return dict(context)


# One replicated write for `Replica.merge_many`: key, incoming versions, the peer's purge
# marker and its time, and the write's fence (None: not guarded).
MergeItem = tuple[bytes, list[Sibling], Mapping[str, int] | None, int, versions.Fence | None]


def _sorted_antichain(incoming: list[Sibling]) -> bool:
    """Whether `incoming` is what `versions.sync` makes of it alone: non-empty, sorted by
    dot, no dot twice, and no sibling superseding another."""
    if not incoming:
        return False
    for a, b in pairwise(incoming):
        if (a.node, a.counter) >= (b.node, b.counter):
            return False
    if len(incoming) > 1:
        for s in incoming:
            for o in incoming:
                if o is not s and o.supersedes(s.node, s.counter):
                    return False
    return True


def _replaces_all(stored: common_pb2.VersionSet, incoming: list[Sibling],
                  dots: set[tuple[str, int]]) -> bool:
    """Whether `versions.sync(<stored siblings>, incoming)` is exactly `incoming`, read off
    the parsed record without building its siblings: every stored version has a dot of its
    own that an incoming sibling supersedes, and none supersedes an incoming one (pruned
    clocks make supersession non-transitive, so both directions are checked). `incoming`
    must be a sorted antichain (`_sorted_antichain`)."""
    for v in stored.versions:
        dot = v.dot
        node, counter = dot.node, dot.counter
        if (node, counter) in dots:
            return False
        if not any(s.supersedes(node, counter) for s in incoming):
            return False
        if len(v.past):
            past = {e.node: e.counter for e in v.past}
            if any(past.get(s.node, 0) >= s.counter for s in incoming):
                return False
        for e in v.seen:
            if (e.node, e.counter) in dots:
                return False
    return True


class Replica:
    def __init__(self, node_id: str, store, clock_ms: Callable[[], int],
                 epochs: EpochAllocator | None = None, *,
                 marker_ttl_ms: int = 10 * 24 * 3600 * 1000) -> None:
        self.node_id = node_id
        self.store = store
        self.clock_ms = clock_ms
        self.epochs = epochs or EpochAllocator(None, clock_ms)
        self.marker_ttl_ms = marker_ttl_ms
        self.metrics: Counter[str] = Counter()
        # The transaction holding an intent on a key, if any (services/txn.py sets it):
        # a plain write to such a key is refused (docs/transactions.md).
        self.intent_of: Callable[[bytes], str | None] = lambda key: None
        # The same for reads: a Raft-decided transaction's intent on the key, reported to
        # a plain read's coordinator, which resolves it before answering.
        self.read_intent_of: Callable[[bytes], str | None] = lambda key: None

    @property
    def fences(self) -> FenceTable:
        """The highest fencing token seen per lock (durable with the data)."""
        table = getattr(self.store, "fences", None)
        if table is None:  # a store without one (tests): keep one in memory
            table = self.__dict__.setdefault("_fences", FenceTable())
        return table

    def _check_fence(self, fence: versions.Fence, known: int, what: str) -> None:
        """Raise Fenced when `fence`'s token is below the highest this replica knows of its
        lock (its table, and `known`: the key's record and the writer's context)."""
        lock, token = fence
        highest = max(self.fences.highest(lock), known)
        if token < highest:
            self.metrics["fenced_writes_refused"] += 1
            raise Fenced(f"{self.node_id} refused the guarded {what}: lock {lock!r} token "
                         f"{token} is below the highest token it has seen for it, {highest}",
                         lock=lock, token=token, highest=highest, refused_by=(self.node_id,))

    # -- reads ---------------------------------------------------------------------------
    async def read(self, key: bytes) -> list[Sibling]:
        return (await self.read_record(key)).siblings

    async def read_record(self, key: bytes) -> Record:
        try:
            return _decode(key, await self.store.get(key))
        except CorruptRecordError as exc:
            raise Corruption(f"{self.node_id}: {exc}") from exc
        except StorageError as exc:
            raise Internal(f"{self.node_id}: storage failed: {exc}") from exc

    async def read_state(self, key: bytes) -> common_pb2.VersionSet:
        """A key's versions as a coordinator gets them (with its purge marker while that
        lives), parsed straight from the stored record: the record is a VersionSet already,
        so no Python versions are built and encoded again for the reply."""
        try:
            record = await self.store.get(key)
            state = common_pb2.VersionSet()
            if record:
                try:
                    state.ParseFromString(record)
                except DecodeError as exc:
                    raise CorruptRecordError(key, f"record does not decode ({exc})") from exc
        except CorruptRecordError as exc:
            raise Corruption(f"{self.node_id}: {exc}") from exc
        except StorageError as exc:
            raise Internal(f"{self.node_id}: storage failed: {exc}") from exc
        state.ClearField("actor_epoch")  # this replica's own bookkeeping
        state.ClearField("actor_counter")
        if not (state.purged and self.clock_ms() - state.purged_at_ms <= self.marker_ttl_ms):
            state.ClearField("purged")
            state.ClearField("purged_at_ms")
        return state

    # -- merges --------------------------------------------------------------------------
    def _marker_live(self, rec: Record, now_ms: int) -> bool:
        return bool(rec.purged) and now_ms - rec.purged_at_ms <= self.marker_ttl_ms

    def _note_own_actors(self, rec: Record, clock: Mapping[str, int]) -> None:
        """Learn from `clock` what this node may have forgotten about its own actors."""
        prefix = self.node_id + versions.ACTOR_SEPARATOR
        for name, counter in clock.items():
            if not name.startswith(prefix):
                continue  # not one of ours (`actor_epoch` would say 0): skip its parse
            epoch = versions.actor_epoch(name, self.node_id)
            if not epoch:
                continue
            if self.epochs.observe(epoch):
                self.metrics["epochs_observed_ahead"] += 1
                log.warning("%s saw its own actor epoch %s in data from elsewhere, above "
                            "anything it remembers allocating (a lost or restored disk?); "
                            "it will never allocate it again", self.node_id, name)
            if epoch == rec.epoch and counter > rec.counter:
                # Someone saw a write of ours this record does not hold: it regressed.
                self.metrics["amnesia_detected"] += 1
                log.warning("%s: the record of a key knows %s up to %d but %d was minted "
                            "(restored or damaged storage); the next write takes a fresh "
                            "epoch", self.node_id, name, rec.counter, counter)
                rec.epoch = rec.counter = 0

    def _admit(self, rec: Record, incoming: list[Sibling], now_ms: int,
               key: bytes = b"") -> list[Sibling]:
        """Refuse exactly the versions a purged tombstone here covered (`key`: whose record
        it is, for observers; merges of several keys run in one storage call)."""
        if not self._marker_live(rec, now_ms):
            return incoming
        accepted, refused = tombstones.split_purged(rec.purged, incoming)
        self.metrics["refused_purged_versions"] += len(refused)
        return accepted

    def live_marker(self, rec: Record) -> tuple[versions.Clock, int]:
        """The record's purge marker if it has not expired ({}, 0 otherwise)."""
        if self._marker_live(rec, self.clock_ms()):
            return rec.purged, rec.purged_at_ms
        return {}, 0

    async def merge(self, key: bytes, incoming: list[Sibling], *,
                    marker: Mapping[str, int] | None = None,
                    marker_at_ms: int = 0, replace_damaged: bool = False,
                    fence: versions.Fence | None = None,
                    state: common_pb2.VersionSet | None = None) -> list[Sibling]:
        """Merge versions from another replica (replication, repair, handoff).

        A purge marker from a peer (anti-entropy) is joined into ours: every version it
        covers was collected on every replica, so it is dropped here too.
        `fence`: this is a guarded client write being replicated; it is refused (Fenced,
        nothing merged) when its token is below the highest this replica knows of the
        lock. Repair, read repair and handoff pass none: merges never refuse for a fence
        (whether a version is shown is decided by the merged set: `versions.live`).
        `replace_damaged`: the local record is known to fail its checksum and the incoming
        state is a peer's whole copy; the damaged record is replaced by it, or dropped when
        the peer holds nothing (it cannot be read anyway, and nothing else would ever
        replace it).
        `state`: the VersionSet `incoming` was decoded from, as received; when the merge
        replaces every stored version by exactly `incoming`, the record is written from
        its bytes instead of decoding the stored siblings and encoding the merged ones
        (the same record either way; `_merge_mutation`).
        """
        out: list[list[Sibling]] = []
        mutation = self._merge_mutation(key, incoming, marker, marker_at_ms, replace_damaged,
                                         fence, self.clock_ms(), out, state)
        # A damaged local record is replaced by what the merge makes of nothing: the
        # incoming versions are authoritative copies from another replica.
        await self._update(key, OverwriteCorrupt(mutation))
        return out[-1]

    async def merge_many(self, items: list[MergeItem],
                         states: list[common_pb2.VersionSet | None] | None = None,
                         ) -> list[list[Sibling] | KVError]:
        """Several replicated writes (one inbound peer batch) as ONE storage call: one
        queue item, one future and one group commit for all of them, instead of a task and
        a future each. Per item: its siblings afterwards, or the error `merge` would have
        raised (Fenced, Corruption, Internal); a failed item does not fail the others.
        `states`: per item the VersionSet it was decoded from, or None (see `merge`)."""
        now = self.clock_ms()
        self.metrics["merges_batched"] += len(items)
        outs: list[list[list[Sibling]]] = [[] for _ in items]
        if states is None:
            states = [None] * len(items)
        steps = [(key, OverwriteCorrupt(self._merge_mutation(
                      key, incoming, marker, marker_at_ms, False, fence, now, out, state)))
                 for (key, incoming, marker, marker_at_ms, fence), out, state
                 in zip(items, outs, states, strict=True)]
        try:
            results = await self.store.update_many(steps)
        except StorageError as exc:  # the whole batch failed: nothing is durable
            error = Internal(f"{self.node_id}: storage failed: {exc}")
            return [error for _ in items]
        answers: list[list[Sibling] | KVError] = []
        for (key, *_), result, out in zip(items, results, outs, strict=True):
            if isinstance(result, KVError):
                answers.append(result)
            elif isinstance(result, CorruptRecordError):
                answers.append(Corruption(f"{self.node_id}: {result}; the record was not "
                                          "changed (repair restores it)"))
            elif isinstance(result, Exception):
                answers.append(Internal(f"{self.node_id}: storage failed: {result}"))
            else:
                assert out, f"the merge of {key!r} succeeded without running its mutation"
                answers.append(out[-1])
        return answers

    def _merge_mutation(self, key: bytes, incoming: list[Sibling],
                        marker: Mapping[str, int] | None, marker_at_ms: int,
                        replace_damaged: bool, fence: versions.Fence | None, now: int,
                        out: list[list[Sibling]],
                        state: common_pb2.VersionSet | None = None,
                        ) -> Callable[[bytes | None], bytes | None]:
        """The storage mutation of one merge (see `merge`); appends the merged set to
        `out` when it runs.

        The fast path (an unguarded write without a purge marker, the common replicated
        put, whose versions supersede every stored one): the stored record is parsed but
        its siblings are not built, nothing is synced, and the new record is `state`'s
        bytes followed by this replica's bookkeeping (epoch, counter). It does what the
        general path below does in that case, step for step: the same fresh-dot
        bookkeeping (`_note_own_actors`), the same fences learnt, the same merged set, and
        a record that decodes to the same one (a VersionSet of versions only serializes as
        its versions; the stored record is those, then fields 2 and 3, as `encode_record`
        writes them: the same bytes when the peer encoded `state` as this code does; fields
        this code does not know are kept instead of dropped).
        Anything else (a stored marker, a stored version not superseded, a record that
        does not decode) takes the general path."""
        fast = (state is not None and fence is None and not marker and not replace_damaged
                and not (state.actor_epoch or state.actor_counter or len(state.purged)
                         or state.purged_at_ms)
                and _sorted_antichain(incoming))
        dots = {s.dot for s in incoming} if fast else set()

        def fast_merge(record: bytes | None) -> bytes | None:
            """The new record, or None when the general path must run."""
            stored = common_pb2.VersionSet()
            if record:
                try:
                    stored.ParseFromString(record)
                except DecodeError:
                    return None  # the general path raises what a bad record raises
            if len(stored.purged) or stored.purged_at_ms \
                    or not _replaces_all(stored, incoming, dots):
                return None
            rec = Record([], stored.actor_epoch, stored.actor_counter)
            self._note_own_actors(rec, versions.horizon(incoming))
            self.fences.learn(versions.fences_of(incoming))
            out.append(list(incoming))
            self.metrics["merges_fast"] += 1
            tail = common_pb2.VersionSet(actor_epoch=rec.epoch, actor_counter=rec.counter)
            return state.SerializeToString(deterministic=True) + \
                tail.SerializeToString(deterministic=True)

        def mutation(record: bytes | None) -> bytes | None:
            if fast:
                new = fast_merge(record)
                if new is not None:
                    return new
            rec = _decode(key, record)
            if fence is not None:
                self._check_fence(fence, versions.fences_of(rec.siblings).get(fence[0], 0),
                                  "write")
            before = (rec.epoch, rec.counter, rec.purged_at_ms, dict(rec.purged))
            self._note_own_actors(rec, versions.horizon(incoming))
            if marker and now - marker_at_ms <= self.marker_ttl_ms:
                live = self._marker_live(rec, now)
                rec.purged = versions.join(rec.purged if live else {}, marker)
                rec.purged_at_ms = max(rec.purged_at_ms if live else 0, marker_at_ms)
            merged = versions.sync(rec.siblings, self._admit(rec, incoming, now, key))
            if self._marker_live(rec, now):
                merged, _ = tombstones.split_purged(rec.purged, merged)
            self.fences.learn(versions.fences_of(merged))
            out.append(merged)
            if replace_damaged and record is None and not merged and not rec.purged:
                return DELETE  # absent or damaged: either way nothing is left
            if {s.dot for s in merged} == {s.dot for s in rec.siblings} and \
                    (rec.epoch, rec.counter, rec.purged_at_ms, rec.purged) == before \
                    and not (replace_damaged and record is None):
                return None  # nothing new: no write, no fsync
            rec.siblings = merged
            return versions.encode_record(rec)

        return mutation

    # -- mints ---------------------------------------------------------------------------
    async def mint(
        self, key: bytes, context: Mapping[str, int] | versions.Context, value: bytes, *,
        tombstone: bool = False, fence: versions.Fence | None = None,
        wire: list[common_pb2.VersionSet] | None = None,
    ) -> list[Sibling]:
        """Coordinate a client write here: make a new version that supersedes `context`.

        Returns the key's siblings afterwards; the new version is the last. A guarded write
        (`fence`) whose token is below the highest this replica, the key's record or the
        context knows of its lock raises Fenced and writes nothing. `wire`: the siblings as
        a VersionSet for the replicas is appended to it (made with the stored record, so
        the coordinator does not encode them again).
        """
        out: list[list[Sibling]] = []
        now = self.clock_ms()
        known = _horizon(context)
        seen = context if isinstance(context, versions.Context) else versions.Context(context)

        def mutation(record: bytes | None) -> bytes:
            holder = self.intent_of(key)
            if holder is not None:
                self.metrics["writes_refused_for_intent"] += 1
                name = key.decode("utf-8", "replace")
                raise Conflict(f"{self.node_id} refused the write: key {name!r} has an intent "
                               f"of transaction {holder}, not yet resolved; retry once it is "
                               f"decided (kv txn status {holder}), at most its deadline")
            rec = _decode(key, record)
            if fence is not None:
                self._check_fence(fence, versions.fence_floor(fence[0], seen, rec.siblings),
                                  "delete" if tombstone else "write")
            self._note_own_actors(rec, known)
            if rec.epoch and not self.epochs.usable(rec.epoch):
                rec.epoch = rec.counter = 0  # minted before a restore: may have regressed
            if not rec.epoch:
                rec.epoch, rec.counter = self.epochs.next(), 0
                name = versions.actor(self.node_id, rec.epoch)
                assert name not in rec.knows() and name not in known, \
                    "a fresh epoch is unknown to every clock"
            name = versions.actor(self.node_id, rec.epoch)
            updated = versions.update(rec.siblings, seen, name, value, tombstone=tombstone,
                                      now_ms=now, floor=rec.counter, fence=fence)
            new = updated[-1]
            assert new.counter > rec.counter and not versions.covers(rec.knows(), *new.dot), \
                "a minted dot is newer than anything this replica minted or saw"
            rec.siblings, rec.counter = updated, new.counter
            self.fences.learn(new.fence_horizon())
            out.append(updated)
            if wire is not None:
                wire.clear()  # a mutation run again replaces what an earlier run made
            return versions.encode_record(rec, wire)

        # A damaged record counts as absent: it cannot be read, the write takes a fresh
        # epoch (nothing it minted before can be repeated), and repair brings back the
        # other replicas' versions beside the new one.
        await self._update(key, OverwriteCorrupt(mutation))
        return out[-1]

    def mint_unowned(self, context: Mapping[str, int] | versions.Context, value: bytes, *,
                     tombstone: bool = False) -> list[Sibling]:
        """A version under a never-used actor, minted without the local store.

        For a coordinator that cannot reach any replica of the key (level ANY): the fresh
        actor makes the dot unique, so replicas merge it like any other version.
        """
        name = versions.actor(self.node_id, self.epochs.next())
        assert name not in _horizon(context), "a fresh epoch is unknown to every clock"
        return versions.update([], context, name, value, tombstone=tombstone,
                               now_ms=self.clock_ms())

    # -- tombstone collection --------------------------------------------------------------
    async def purge(self, key: bytes, digest: bytes) -> bool:
        """Collect a key's tombstones, leaving a marker, if its state still has `digest`
        (the one every replica confirmed holding)."""
        now = self.clock_ms()
        done: list[bool] = []

        def mutation(record: bytes | None) -> bytes | None:
            rec = _decode(key, record)
            marker = rec.purged if self._marker_live(rec, now) else {}
            # nothing a read shows: tombstones, and versions fenced out by one beside them
            if not rec.siblings or versions.live(rec.siblings) \
                    or version_digest(rec.siblings, marker) != digest:
                return None
            # single dots too: every version of an actor up to its highest known counter
            # is dead once all the replicas hold only these tombstones
            marker = versions.join(marker, versions.horizon(rec.siblings))
            done.append(True)
            # No siblings are left to continue the key's lineage: the next write here
            # takes a fresh epoch.
            return versions.encode_record(Record(purged=marker, purged_at_ms=now))

        await self._update(key, mutation)
        return bool(done)

    async def expire_marker(self, key: bytes) -> bool:
        """Drop a purge marker older than `marker_ttl_ms` (the key too if nothing is left)."""
        now = self.clock_ms()
        done: list[bool] = []

        def mutation(record: bytes | None) -> bytes | None:
            rec = _decode(key, record)
            if not rec.purged or self._marker_live(rec, now):
                return None
            done.append(True)
            if not rec.siblings:
                return DELETE
            rec.purged, rec.purged_at_ms = {}, 0
            return versions.encode_record(rec)

        await self._update(key, mutation)
        return bool(done)

    async def _update(self, key: bytes, mutation) -> None:
        try:
            await self.store.update(key, mutation)
        except CorruptRecordError as exc:
            raise Corruption(
                f"{self.node_id}: {exc}; the record was not changed (repair restores it)"
            ) from exc
        except StorageError as exc:
            raise Internal(f"{self.node_id}: storage failed: {exc}") from exc
