"""Merkle anti-entropy between replicas, and safe tombstone collection.

For each peer it shares keys with, a node builds one Merkle tree over the whole token
space holding only the keys both replicate (both sides compute the same set from the same
ring), and runs the sans-IO session of core/antientropy.py with it: hashes level by level,
then (key, digest) lists of differing leaves only, then moves exactly the keys that differ
(push ours with a replica write, fetch theirs with a replica read and merge), resolving
by version (`versions.sync`, siblings where concurrent).

Trees are rebuilt by a scan at the start of each session (cost O(keys shared), measured
in docs/antientropy.md) rather than kept current on every write: sessions run on a
bounded schedule (one peer per `interval`, one session at a time), and the records moved
are paced to `rate_bytes_per_s` and `rate_keys_per_s`, so repair cannot starve foreground
traffic (issue 13: background work raises the foreground p99 by at most 20%). The scan
reads pages off the event loop (the store's reader threads) and decodes and digests them
on it `SCAN_SLICE` records at a time, yielding between slices, so no request waits behind
more than one slice (~1-5 ms); a session's messages and the keys it moves go on the lane
the node gives anti-entropy alone (`Transport.new_lane`), so a step whose answer waits on
the peer's scan never holds back the foreground's replica writes or gossip to that peer.

Tombstones (core/tombstones.py): a key whose siblings are all tombstones older than the
grace period is compared in every session (forced leaves); a peer reporting the same
digest confirms it; once every replica of its preference list confirmed, it is purged and
the record becomes a purge marker (Replica.purge) that refuses exactly the versions the
tombstones covered until it expires; expired markers are dropped during the scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from kvstore._proto import admin_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore.core import tombstones, versions
from kvstore.core.antientropy import (
    Done,
    Initiator,
    NeedEntries,
    ProtocolError,
    Responder,
    SessionStateError,
    Stats,
    peek_shape,
)
from kvstore.core.errors import InvalidArgument, KVError, Unavailable
from kvstore.core.histogram import LatencyHistogram
from kvstore.core.merkle import DEFAULT_DEPTH, MerkleTree, version_digest
from kvstore.core.pacing import Pacer
from kvstore.core.ring import TOKEN_MIN, token_of
from kvstore.core.versions import Sibling
from kvstore.storage.engine import CorruptRecordError
from kvstore.transport.base import Lane, TransportError

log = logging.getLogger(__name__)

WHOLE_RING = (TOKEN_MIN, TOKEN_MIN)  # (start, end] with start == end: every token
SCAN_PAGE = 2000  # records per storage read (off the event loop)
SCAN_SLICE = 64  # records decoded and digested on the event loop between two yields
MOVE_BATCH = 16  # keys moved concurrently
DEFAULT_RATE_KEYS = 1000  # keys moved per second per session
SESSION_IDLE_S = 120.0

Progress = Callable[[str, int, int, Stats], Awaitable[None] | None]


class AntiEntropyService:
    def __init__(
        self,
        node_id: str,
        store,
        transport: Lane,
        membership,
        replica,
        *,
        replication_factor: int,
        clock_ms: Callable[[], int],
        rng: random.Random,
        interval: float = 60.0,
        depth: int = DEFAULT_DEPTH,
        grace_ms: int = tombstones.DEFAULT_GRACE_MS,
        rate_bytes_per_s: int = 8 * 1024 * 1024,
        rate_keys_per_s: float = DEFAULT_RATE_KEYS,
        timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`transport`: the lane sessions and moves go on (the node gives anti-entropy its
        own); `rate_*`: a session moves keys no faster than either (0: that one unpaced)."""
        self.node_id = node_id
        self.store = store
        self.transport = transport
        self.membership = membership
        self.replica = replica
        self.n = replication_factor
        self.clock_ms = clock_ms
        self.rng = rng
        self.interval = interval
        self.depth = depth
        self.grace_ms = grace_ms
        self.rate = rate_bytes_per_s
        self.byte_pacer = Pacer(rate_bytes_per_s)
        self.key_pacer = Pacer(rate_keys_per_s)
        self.timeout = timeout
        self.monotonic = monotonic  # pacing and session expiry; simulations pass virtual time
        self.metrics: Counter[str] = Counter()
        # peer -> (wall ms, leaves differing, keys moved) of the last session with it: the
        # repair debt of the ranges this node shares with that peer (kv status, /metrics)
        self.last_session: dict[str, tuple[int, int, int]] = {}
        # Each tombstone collection pass (purges and marker expiry after a session): the
        # store's compaction (kv_storage_compaction_seconds)
        self.compaction_latency = LatencyHistogram()
        self.confirmations = tombstones.Confirmations()
        self._damaged: set[bytes] = set()  # keys whose local record failed its checksum
        self._expired_markers: set[bytes] = set()
        self._responders: dict[tuple[str, int], tuple[Responder, float]] = {}
        self._lock = asyncio.Lock()  # one session at a time (as initiator)
        self._task: asyncio.Task | None = None
        self._next_peer = 0

    # -- which keys a pair shares -------------------------------------------------------
    def peers(self) -> list[str]:
        """Members that share keys with this node (with N >= 2, every co-replica)."""
        return sorted(m for m in self.membership.ring.nodes if m != self.node_id)

    def _shared(self, peer: str) -> Callable[[int], bool]:
        ring, n, me = self.membership.ring, self.n, self.node_id
        cache: dict[int, bool] = {}

        def shared(token: int) -> bool:
            hit = cache.get(token)
            if hit is None:
                pref = ring.preference_list_for_token(token, n)
                hit = cache[token] = me in pref and peer in pref
            return hit

        return shared

    async def _entries(self, peer: str, ranges: list[tuple[int, int]],
                       candidates: dict[bytes, bytes] | None = None
                       ) -> list[tuple[int, bytes, bytes]]:
        """(token, key, digest) of the keys this node shares with `peer` in `ranges`."""
        shared = self._shared(peer)
        now = self.clock_ms()
        out: list[tuple[int, bytes, bytes]] = []
        for start, end in ranges:
            after = None
            while True:
                try:
                    page = await self.store.scan_chunk(start, end, after, SCAN_PAGE)
                except CorruptRecordError:
                    page, after, finished = await self._step_over_corrupt(start, end, after)
                    await self._collect_entries(page, shared, now, out, candidates)
                    if finished:
                        break
                    continue
                await self._collect_entries(page, shared, now, out, candidates)
                if len(page) < SCAN_PAGE:
                    break
                after = (page[-1][0], page[-1][1])
                await asyncio.sleep(0)  # let foreground requests run between pages
        return out

    async def _collect_entries(self, page, shared, now, out, candidates) -> None:
        """Decode and digest a page, SCAN_SLICE records at a time with a yield between:
        the decoding is CPU on the event loop (~20-80 us a record on a loaded 2-core
        machine), and a whole page at once would stall every request for its length."""
        for i in range(0, len(page), SCAN_SLICE):
            if i:
                await asyncio.sleep(0)
            self._collect_slice(page[i:i + SCAN_SLICE], shared, now, out, candidates)

    def _collect_slice(self, page, shared, now, out, candidates) -> None:
        for token, key, record in page:
            if not shared(token):
                continue
            rec = versions.decode_record(record)
            purged = rec.purged
            if purged and now - rec.purged_at_ms > self.replica.marker_ttl_ms:
                self._expired_markers.add(key)
                purged = {}
            siblings = rec.siblings
            if not siblings and not purged:
                continue
            digest = version_digest(siblings, purged)
            out.append((token, key, digest))
            if candidates is not None and self._purgeable(siblings, now):
                candidates[key] = digest

    async def _step_over_corrupt(self, start: int, end: int, after):
        """Read one record at a time up to the corrupted one and step over it.

        A corrupted record is reported and never served; it is left out of the tree and
        replaced after the session by the peer's copy (`_replace_damaged`).
        """
        page = []
        while True:
            try:
                one = await self.store.scan_chunk(start, end, after, 1)
            except CorruptRecordError as exc:
                self.metrics["corrupt_records"] += 1
                self._damaged.add(exc.key)
                log.error("anti-entropy stepped over a corrupted record: %s", exc)
                return page, (token_of(exc.key), exc.key), False
            if not one:
                return page, after, True
            page.extend(one)
            after = (one[0][0], one[0][1])

    def _purgeable(self, siblings: list[Sibling], now_ms: int) -> bool:
        return bool(siblings) and not versions.live(siblings) and \
            now_ms - max(s.written_at_ms for s in siblings) > self.grace_ms

    async def _tree(self, peer: str, start: int, end: int, depth: int,
                    candidates: dict[bytes, bytes] | None = None) -> MerkleTree:
        entries = await self._entries(peer, [(start, end)], candidates)
        return MerkleTree.build(start, end, entries, depth)

    # -- responder side ---------------------------------------------------------------
    async def on_message(self, source: str, step: pb.AntiEntropyStep) -> bytes:
        now = self.monotonic()
        for k, (_, used) in list(self._responders.items()):
            if now - used > SESSION_IDLE_S:
                del self._responders[k]
        key = (source, step.session)
        try:
            entry = self._responders.get(key)
            if entry is None:
                start, end, depth = peek_shape(step.payload)
                if (start, end) != WHOLE_RING or not 1 <= depth <= 20:
                    raise ProtocolError(f"unsupported tree shape ({start}, {end}, {depth})")
                responder = Responder(await self._tree(source, start, end, depth))
            else:
                responder = entry[0]
            self._responders[key] = (responder, now)
            action = responder.receive(step.payload)
            if isinstance(action, NeedEntries):
                action = responder.provide_entries(await self._entries(source, action.ranges))
            return action.data
        except (ProtocolError, SessionStateError) as exc:
            self._responders.pop(key, None)
            self.metrics["protocol_errors"] += 1
            raise InvalidArgument(f"anti-entropy message from {source} rejected: {exc}") from None

    # -- initiator side ---------------------------------------------------------------
    async def repair_with(self, peer: str) -> Stats:
        """One full session with `peer`, then move the differing keys both ways."""
        started = self.monotonic()
        session = self.rng.getrandbits(63)
        candidates: dict[bytes, bytes] = {}
        tree = await self._tree(peer, *WHOLE_RING, self.depth, candidates)
        force = {tree.leaf_of(token_of(k)) for k in candidates}
        initiator = Initiator(tree, start_level=min(4, self.depth), force_leaves=force)
        while True:
            action = initiator.next_action()
            if isinstance(action, Done):
                break
            if isinstance(action, NeedEntries):
                initiator.provide_entries(await self._entries(peer, action.ranges))
                continue
            message = pb.PeerMessage(antientropy=pb.AntiEntropyStep(session=session,
                                                                     payload=action.data))
            result = await self.transport.call(peer, message, self.timeout)
            if result.HasField("error"):
                raise Unavailable(f"{peer} refused anti-entropy: {result.error.message}")
            initiator.receive(result.raw)
        outcome = initiator.result
        stats = outcome.stats
        stats.bytes_transferred += await self._move(peer, outcome.push, outcome.fetch)
        await self._replace_damaged(peer)
        self.confirmations.record_all(outcome.matched, (self.node_id, peer))
        self.metrics["sessions"] += 1
        self.last_session[peer] = (self.clock_ms(), stats.leaves_differing,
                                   len(outcome.push) + len(outcome.fetch))
        self.metrics["keys_pushed"] += len(outcome.push)
        self.metrics["keys_fetched"] += len(outcome.fetch)
        log.info("anti-entropy with %s: %d leaves differed, pushed %d, fetched %d keys "
                 "(%.2f s)", peer, stats.leaves_differing, len(outcome.push),
                 len(outcome.fetch), self.monotonic() - started)
        await self._collect(candidates)
        return stats

    async def _replace_damaged(self, peer: str) -> None:
        """Replace the damaged records this node shares with `peer` by the peer's copy.

        The key may not differ in the trees at all (the peer purged it, or holds nothing),
        so it is fetched explicitly; when the peer holds nothing the damaged record is
        dropped: it cannot be read, and nothing else would ever replace it. A replica that
        does hold versions of the key brings them back in its own session."""
        shared = self._shared(peer)
        for key in sorted(k for k in self._damaged if shared(token_of(k))):
            result = await self._checked(peer, pb.PeerMessage(read=pb.ReplicaRead(key=key)))
            purged, purged_at = versions.marker_from_pb(result.state)
            await self.replica.merge(key, versions.from_pb(result.state), marker=purged,
                                     marker_at_ms=purged_at, replace_damaged=True)
            self._damaged.discard(key)
            self.metrics["damaged_records_replaced"] += 1
            log.warning("replaced the damaged record of %r with %s's copy (%d versions)",
                        key, peer, len(result.state.versions))

    async def _move(self, peer: str, push: list[bytes], fetch: list[bytes]) -> int:
        moved = 0
        started = self.monotonic()

        now = self.clock_ms()

        async def send(key: bytes) -> int:
            rec = await self.replica.read_record(key)
            siblings = rec.siblings
            state = versions.to_pb(siblings)
            purged, purged_at = self.replica.live_marker(rec)
            if purged:
                versions.marker_to_pb(state, purged, purged_at)
            message = pb.PeerMessage(write=pb.ReplicaWrite(key=key, state=state,
                                                           reply_state=True))
            result = await self._checked(peer, message)
            if siblings and not result.state.versions and self._purgeable(siblings, now):
                # the peer holds nothing and refused a tombstone past its grace period: it
                # has collected it already, which confirms it as well as holding it would
                self.confirmations.record(key, version_digest(siblings), peer)
            return state.ByteSize()

        async def get(key: bytes) -> int:
            result = await self._checked(peer, pb.PeerMessage(read=pb.ReplicaRead(key=key)))
            purged, purged_at = versions.marker_from_pb(result.state)
            await self.replica.merge(key, versions.from_pb(result.state), marker=purged,
                                     marker_at_ms=purged_at)
            return result.state.ByteSize()

        jobs = [(send, k) for k in push] + [(get, k) for k in fetch]
        for i in range(0, len(jobs), MOVE_BATCH):
            chunk = jobs[i:i + MOVE_BATCH]
            moved += sum(await asyncio.gather(*(fn(k) for fn, k in chunk)))
            # pace: never faster than the configured bandwidth nor key rate
            elapsed = self.monotonic() - started
            ahead = max(self.byte_pacer.owed(moved, elapsed),
                        self.key_pacer.owed(i + len(chunk), elapsed))
            if ahead > 0:
                await asyncio.sleep(ahead)
        return moved

    async def _checked(self, peer: str, message: pb.PeerMessage) -> pb.PeerResult:
        try:
            result = await self.transport.call(peer, message, self.timeout)
        except TransportError as exc:
            raise Unavailable(f"anti-entropy with {peer} interrupted: {exc.reason}") from None
        if result.HasField("error"):
            raise Unavailable(f"{peer}: {result.error.message}")
        return result

    async def _collect(self, candidates: dict[bytes, bytes]) -> int:
        """Purge tombstones every replica of their preference list confirmed.

        The purge turns the record into a marker in the same storage write (Replica.purge),
        so there is no separate safety state to persist before acting."""
        started = self.monotonic()
        purged = 0
        now = self.clock_ms()
        for key, digest in candidates.items():
            pref = self.membership.ring.preference_list(key, self.n)
            confirmed = self.confirmations.holders(key, digest) | {self.node_id}
            siblings = await self.replica.read(key)
            decision = tombstones.purge_decision(siblings, now_ms=now, grace_ms=self.grace_ms,
                                                 preference_list=pref, confirmed=confirmed)
            if not decision:
                continue
            if await self.replica.purge(key, digest):  # only if unchanged since confirmed
                purged += 1
            self.confirmations.forget(key)
        expired = 0
        for key in sorted(self._expired_markers):
            expired += await self.replica.expire_marker(key)
        self._expired_markers.clear()
        if purged or expired:
            self.metrics["tombstones_purged"] += purged
            self.metrics["markers_expired"] += expired
            log.info("purged %d tombstones (leaving markers); dropped %d expired markers",
                     purged, expired)
        self.compaction_latency.observe(self.monotonic() - started)
        return purged

    async def repair(self, peers: list[str] | None = None,
                     progress: Progress | None = None) -> tuple[Stats, float, list[str]]:
        """Repair with every peer (or those given); returns (stats, seconds, errors)."""
        started = self.monotonic()
        targets = peers or self.peers()
        total = Stats()
        errors = []
        async with self._lock:
            for i, peer in enumerate(targets):
                try:
                    total = total + await self.repair_with(peer)
                except (KVError, TransportError, ProtocolError) as exc:  # e.g. Corruption
                    errors.append(f"{peer}: {exc}")
                    log.warning("anti-entropy with %s failed: %s", peer, exc)
                if progress is not None:
                    maybe = progress(peer, i + 1, len(targets), total)
                    if maybe is not None:
                        await maybe
        return total, self.monotonic() - started, errors

    # -- background schedule ----------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * (0.5 + self.rng.random()))
            peers = [p for p in self.peers() if self.membership.is_up(p)]
            if not peers or self._lock.locked():
                continue
            peer = peers[self._next_peer % len(peers)]
            self._next_peer += 1
            with contextlib.suppress(Exception):
                async with self._lock:
                    await self.repair_with(peer)

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def summary_pb(stats: Stats, seconds: float, purged: int, peers: int) -> admin_pb2.RepairSummary:
    return admin_pb2.RepairSummary(
        ranges_compared=stats.ranges_compared, leaves_differing=stats.leaves_differing,
        keys_sent=stats.keys_sent, keys_received=stats.keys_received,
        bytes_transferred=stats.bytes_transferred, seconds=round(seconds, 3),
        tombstones_purged=purged, peers=peers,
    )


def summary_dict(summary: admin_pb2.RepairSummary) -> dict[str, Any]:
    return {
        "ranges_compared": summary.ranges_compared,
        "leaves_differing": summary.leaves_differing,
        "keys_sent": summary.keys_sent,
        "keys_received": summary.keys_received,
        "bytes_transferred": summary.bytes_transferred,
        "seconds": summary.seconds,
        "tombstones_purged": summary.tombstones_purged,
    }
