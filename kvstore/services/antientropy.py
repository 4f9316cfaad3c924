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
are paced to `rate_bytes_per_s`, so repair cannot starve foreground traffic.

Tombstones (core/tombstones.py): a key whose siblings are all tombstones older than the
grace period is compared in every session (forced leaves); a peer reporting the same
digest confirms it; once every replica of its preference list confirmed, it is purged and
the node's purge watermark advances. Replica merges refuse live versions the watermark
says may be deleted data coming back (see Replica.merge).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
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
from kvstore.core.merkle import DEFAULT_DEPTH, MerkleTree, record_digest, version_digest
from kvstore.core.ring import TOKEN_MIN, token_of
from kvstore.core.versions import Sibling
from kvstore.storage import DELETE
from kvstore.storage.engine import CorruptRecordError
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)

WHOLE_RING = (TOKEN_MIN, TOKEN_MIN)  # (start, end] with start == end: every token
SCAN_PAGE = 2000
MOVE_BATCH = 64
SESSION_IDLE_S = 120.0

Progress = Callable[[str, int, int, Stats], Awaitable[None] | None]


class AntiEntropyService:
    def __init__(
        self,
        node_id: str,
        store,
        transport: Transport,
        membership,
        replica,
        *,
        replication_factor: int,
        clock_ms: Callable[[], int],
        rng: random.Random,
        state_path: Path | None = None,
        interval: float = 60.0,
        depth: int = DEFAULT_DEPTH,
        grace_ms: int = tombstones.DEFAULT_GRACE_MS,
        rate_bytes_per_s: int = 8 * 1024 * 1024,
        timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.transport = transport
        self.membership = membership
        self.replica = replica
        self.n = replication_factor
        self.clock_ms = clock_ms
        self.rng = rng
        self.state_path = state_path
        self.interval = interval
        self.depth = depth
        self.grace_ms = grace_ms
        self.rate = rate_bytes_per_s
        self.timeout = timeout
        self.monotonic = monotonic  # pacing and session expiry; simulations pass virtual time
        self.metrics: Counter[str] = Counter()
        self.confirmations = tombstones.Confirmations()
        self.watermark_ms = self._load_watermark()
        self._responders: dict[tuple[str, int], tuple[Responder, float]] = {}
        self._lock = asyncio.Lock()  # one session at a time (as initiator)
        self._task: asyncio.Task | None = None
        self._next_peer = 0

    # -- state ------------------------------------------------------------------------
    def _load_watermark(self) -> int:
        if self.state_path and self.state_path.exists():
            try:
                return int(json.loads(self.state_path.read_text())["watermark_ms"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable tombstone state %s: %s", self.state_path, exc)
        return 0

    def _save_watermark(self) -> None:
        if self.state_path:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"watermark_ms": self.watermark_ms}))
            tmp.replace(self.state_path)

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
                    self._collect_entries(page, shared, now, out, candidates)
                    if finished:
                        break
                    continue
                self._collect_entries(page, shared, now, out, candidates)
                if len(page) < SCAN_PAGE:
                    break
                after = (page[-1][0], page[-1][1])
                await asyncio.sleep(0)  # let foreground requests run between pages
        return out

    def _collect_entries(self, page, shared, now, out, candidates) -> None:
        for token, key, record in page:
            if not shared(token):
                continue
            siblings = versions.decode(record)
            if not siblings:
                continue
            digest = record_digest(record)
            out.append((token, key, digest))
            if candidates is not None and self._purgeable(siblings, now):
                candidates[key] = digest

    async def _step_over_corrupt(self, start: int, end: int, after):
        """Read one record at a time up to the corrupted one and step over it.

        A corrupted record is reported and never served; leaving it out of the tree makes
        its key differ from the peer's copy, so this session fetches a good copy back.
        """
        page = []
        while True:
            try:
                one = await self.store.scan_chunk(start, end, after, 1)
            except CorruptRecordError as exc:
                self.metrics["corrupt_records"] += 1
                log.error("anti-entropy stepped over a corrupted record: %s", exc)
                return page, (token_of(exc.key), exc.key), False
            if not one:
                return page, after, True
            page.extend(one)
            after = (one[0][0], one[0][1])

    def _purgeable(self, siblings: list[Sibling], now_ms: int) -> bool:
        return all(s.tombstone for s in siblings) and \
            now_ms - max(s.written_at_ms for s in siblings) > self.grace_ms

    def admit(self, current: list[Sibling], incoming: list[Sibling]) -> list[Sibling]:
        """What a replica merge may take in (Replica.merge calls this).

        Refuses live versions the purge watermark says may be deleted data coming back,
        and tombstones past the grace period for keys this node does not hold (it purged
        them, or never had anything they delete), so purged tombstones do not ping-pong.
        """
        now = self.clock_ms()
        if not current and incoming and self._purgeable(incoming, now):
            self.metrics["refused_purgeable_tombstones"] += 1
            return []
        accepted, refused = tombstones.split_stale(current, incoming, self.watermark_ms)
        if refused:
            self.metrics["refused_stale_versions"] += len(refused)
            log.warning("refused %d version(s) older than the purge watermark (possible "
                        "resurrection of deleted data): %s", len(refused),
                        ", ".join(f"{s.node}:{s.counter}" for s in refused))
        return accepted

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
        self.confirmations.record_all(outcome.matched, (self.node_id, peer))
        self.metrics["sessions"] += 1
        self.metrics["keys_pushed"] += len(outcome.push)
        self.metrics["keys_fetched"] += len(outcome.fetch)
        log.info("anti-entropy with %s: %d leaves differed, pushed %d, fetched %d keys "
                 "(%.2f s)", peer, stats.leaves_differing, len(outcome.push),
                 len(outcome.fetch), self.monotonic() - started)
        await self._collect(candidates)
        return stats

    async def _move(self, peer: str, push: list[bytes], fetch: list[bytes]) -> int:
        moved = 0
        started = self.monotonic()

        now = self.clock_ms()

        async def send(key: bytes) -> int:
            siblings = await self.replica.read(key)
            state = versions.to_pb(siblings)
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
            await self.replica.merge(key, versions.from_pb(result.state))
            return result.state.ByteSize()

        jobs = [(send, k) for k in push] + [(get, k) for k in fetch]
        for i in range(0, len(jobs), MOVE_BATCH):
            chunk = jobs[i:i + MOVE_BATCH]
            moved += sum(await asyncio.gather(*(fn(k) for fn, k in chunk)))
            # pace: never faster than the configured bandwidth
            ahead = moved / self.rate - (self.monotonic() - started)
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
        """Purge tombstones every replica of their preference list confirmed."""
        purged = 0
        now = self.clock_ms()
        for key, digest in candidates.items():
            pref = self.membership.ring.preference_list(key, self.n)
            confirmed = self.confirmations.holders(key, digest) | {self.node_id}
            siblings = await self.replica.read(key)
            decision = tombstones.purge_decision(siblings, now_ms=now, grace_ms=self.grace_ms,
                                                 preference_list=pref, confirmed=confirmed)
            if not decision or record_digest(versions.encode(siblings)) != digest:
                continue
            newest = max(s.written_at_ms for s in siblings)

            def purge(record: bytes | None, digest: bytes = digest) -> bytes | None:
                # only if nothing changed since it was confirmed
                return DELETE if record_digest(record) == digest else None

            await self.store.update(key, purge)
            self.confirmations.forget(key)
            self.watermark_ms = tombstones.advance_watermark(self.watermark_ms, newest)
            purged += 1
        if purged:
            self._save_watermark()
            self.metrics["tombstones_purged"] += purged
            log.info("purged %d tombstones; purge watermark now %d", purged, self.watermark_ms)
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
