"""The node: the composition root that wires the services to a transport and a store.

It has no grpc in it, so the same Node runs over the in-memory network in simulations
and over gRPC in real processes (server.py adds the servers around it). That includes the
Raft metadata group: with `raft_voters` set, the Node builds the `RaftDriver`, gives it its
own transport lane for forwarded metadata requests, and registers it for `raft` messages.
Forwarded client writes get a lane of their own too (services/coordinator.py says why).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.core.errors import KVError
from kvstore.core.gossip import Status
from kvstore.core.ring import node_tokens
from kvstore.node.config import NodeConfig
from kvstore.services.antientropy import AntiEntropyService
from kvstore.services.coordinator import Coordinator, CoordinatorConfig
from kvstore.services.gossip import GossipMembership
from kvstore.services.handoff import HandoffService, inline
from kvstore.services.raft_driver import RaftDriver
from kvstore.services.replica import Replica
from kvstore.services.ring_log import RingLog
from kvstore.services.streaming import FILE_NAME as MOVE_FILE
from kvstore.services.streaming import MoveRefused, RangeStreamer
from kvstore.services.txn import TxnService
from kvstore.storage.epochs import FILE_NAME as EPOCHS_FILE
from kvstore.storage.epochs import EpochAllocator
from kvstore.storage.hints import HintStore
from kvstore.storage.intents import IntentStore
from kvstore.storage.raftlog import Files, MemoryFiles, OsFiles
from kvstore.transport.base import Lane, Transport
from kvstore.transport.context import REQUEST_ID

log = logging.getLogger(__name__)

# A service that owns a PeerMessage body kind (raft, gossip, extension): bytes in, bytes out.
RawHandler = Callable[[str, bytes], Awaitable[bytes]]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


# Files only a node that ran here before leaves in its data directory (the gossip member
# file is written at every start). The engine's data file is not one: the node server
# creates it before the Node is built.
PRIOR_LIFE_FILES = ("members.json", "hints.db", EPOCHS_FILE, "tombstones.json")


def prior_life(data_dir: Path | None) -> list[str]:
    """Which of PRIOR_LIFE_FILES exist in `data_dir` (none for a brand-new directory)."""
    if data_dir is None:
        return []
    return [name for name in PRIOR_LIFE_FILES if (Path(data_dir) / name).exists()]


def _side_stream(rng: random.Random, name: str) -> random.Random:
    """A generator seeded from `rng`'s state without drawing from it, so a service added
    later does not shift the draws every other service (and every seeded simulation)
    makes."""
    copy = random.Random()
    copy.setstate(rng.getstate())
    return random.Random(f"{copy.getrandbits(64)}/{name}")


class Node:
    def __init__(self, config: NodeConfig, transport: Transport, store,
                 clock_ms: Callable[[], int] = wall_clock_ms,
                 monotonic: Callable[[], float] = time.perf_counter,
                 rng: random.Random | None = None,
                 hints: HintStore | None = None,
                 epochs: EpochAllocator | None = None,
                 inline_io: bool = False,
                 raft_files: Files | None = None, move_file: Path | None = None,
                 intents: IntentStore | None = None) -> None:
        """`inline_io` runs disk work inline (simulations); `raft_files` holds the raft
        state (default `<data_dir>/raft`; simulations pass files that survive a restart),
        `move_file` a join's or decommission's progress when there is no data directory."""
        config.validate()
        self.config = config
        self.node_id = config.node_id
        self.transport = transport
        self.store = store
        state_path = config.data_dir / "members.json" if config.data_dir else None
        rng = rng or random.Random()
        offload = inline if inline_io else asyncio.to_thread
        self.raft: RaftDriver | None = None
        self.raft_lane: Lane | None = None
        if config.raft_voters or config.raft_join:
            if raft_files is None:
                raft_files = (OsFiles(config.data_dir / "raft") if config.data_dir
                              else MemoryFiles())
            # Forwarded metadata requests get their own per-peer queue over the same
            # connections: their answers wait on raft traffic they must never hold back.
            self.raft_lane = transport.new_lane()
            self.raft = RaftDriver(
                config.node_id, config.raft_voters, transport, files=raft_files,
                forward_transport=self.raft_lane,
                request_timeout=max(2.0, config.timeout_ms / 1000),
                snapshot_every=config.raft_snapshot_every,
                rng=random.Random(rng.getrandbits(64)), offload=offload,
                bootstrap=config.raft_bootstrap, join=config.raft_join,
                monotonic=monotonic)  # lease deadlines: the node's clock (virtual in sims)
            # First, before this run writes anything to the data directory: recover the raft
            # state and decide (a lost raft directory beside an old data directory refuses).
            self.raft.prepare(prior_life(config.data_dir),
                              str(config.data_dir or "its in-memory data"))
        self.streamer_state = config.data_dir / MOVE_FILE if config.data_dir else move_file
        self.joining = self._joining(config)
        # A replacement carries the dead member's tokens, from its first start on (its
        # move.json keeps whom it replaced, so a restart after --replace is dropped keeps
        # them too).
        self.replaces = self._replaces(config)
        # crashed while leaving: come back LEAVING (never NORMAL, which would take its ranges
        # back from their next owners' pending writes) and finish the decommission
        self.leaving = not self.joining and RangeStreamer.was_leaving(self.streamer_state)
        # With a Raft group, ring changes are recorded there before gossip announces them
        # (services/ring_log.py): a joining node gossips its tokens only once its claim on
        # them is committed. Without one, gossip alone carries them.
        self.ring_log = RingLog(config.node_id,
                                self.raft.handle_meta if self.raft is not None else None,
                                monotonic=monotonic,
                                timeout=max(30.0, 10 * config.timeout_ms / 1000))
        self.ring_tokens = tuple(node_tokens(self.replaces or config.node_id, config.vnodes))
        self.membership = GossipMembership(
            config.node_id, config.peer_address, config.seeds, transport,
            wall_clock=lambda: clock_ms() / 1000, monotonic=monotonic, rng=rng,
            vnodes=config.vnodes, state_path=state_path, interval=config.gossip_interval,
            phi_threshold=config.phi_threshold, timeout=min(1.0, config.timeout_ms / 1000),
            status=(Status.JOINING if self.joining
                    else Status.LEAVING if self.leaving else Status.NORMAL),
            ring_delay=config.ring_delay_s,
            tokens=(() if self.joining and self.ring_log.enabled
                    else list(self.ring_tokens)),
        )
        if epochs is None:
            epochs = EpochAllocator(
                config.data_dir / EPOCHS_FILE if config.data_dir else None, clock_ms)
        if config.restored:
            epochs.invalidate_older()
        self.replica = Replica(config.node_id, store, clock_ms, epochs,
                               marker_ttl_ms=config.tombstone_grace_ms)
        self.coordinator = Coordinator(
            config.node_id, self.membership, transport, self.replica,
            CoordinatorConfig(
                replication_factor=config.replication_factor,
                timeout_ms=config.timeout_ms,
                max_key_bytes=config.max_key_bytes,
                max_value_bytes=config.max_value_bytes,
            ),
            monotonic=monotonic,
            rng=rng,
            forward_transport=transport.new_lane(),
        )
        self.coordinator.config.hinted_handoff = config.hinted_handoff
        self.coordinator.config.sloppy_quorum = config.sloppy_quorum
        self.coordinator.config.read_all_chance = config.read_all_chance
        if hints is None:
            hints = HintStore(config.data_dir / "hints.db" if config.data_dir else None,
                              sync=config.sync)
        self.handoff = HandoffService(
            config.node_id, hints, transport, self.membership, clock_ms=clock_ms,
            offload=offload,
            enabled=config.hinted_handoff, interval=config.handoff_interval,
            max_age_ms=config.hint_max_age_ms, timeout=config.timeout_ms / 1000,
        )
        self.coordinator.hint_sink = self.handoff.store
        self.antientropy = AntiEntropyService(
            config.node_id, store, transport, self.membership, self.replica,
            replication_factor=config.replication_factor, clock_ms=clock_ms, rng=rng,
            interval=config.antientropy_interval, grace_ms=config.tombstone_grace_ms,
            rate_bytes_per_s=config.repair_rate_bytes, timeout=max(5.0, config.timeout_ms / 1000),
            monotonic=monotonic,
        )
        self.streamer = RangeStreamer(
            config.node_id, store, transport, self.membership, self.replica, self.antientropy,
            replication_factor=config.replication_factor, ring_delay=config.ring_delay_s,
            rate_bytes_per_s=config.repair_rate_bytes,
            timeout=max(5.0, config.timeout_ms / 1000), state_path=self.streamer_state,
            monotonic=monotonic, verify=config.verify_moves)
        self.streamer.load()  # refuses a decommissioned node; picks up a join's progress
        self.streamer.ring_log, self.streamer.tokens = self.ring_log, self.ring_tokens
        if intents is None:  # transaction intents (services/txn.py): durable with the data
            intents = IntentStore(config.data_dir / "intents.db" if config.data_dir else None)
        self.txn = TxnService(
            config.node_id, transport, self.membership, self.replica, intents,
            self.raft.handle_meta if self.raft is not None else None,
            replication_factor=config.replication_factor, clock_ms=clock_ms,
            monotonic=monotonic, rng=_side_stream(rng, "txn"),
            timeout=max(2.0, config.timeout_ms / 1000), offload=offload)
        if self.raft is not None:
            self.txn.live_records = self._live_txn_records
        self.coordinator.resolve_intent = self.txn.read_intent  # plain reads meet intents
        self.raw_handlers: dict[str, RawHandler] = {"gossip": self.membership.on_message}
        if self.raft is not None:
            self.raft.address_of = lambda peer: (
                config.address if peer == config.node_id
                else self.membership.members.get(peer, ""))
        if self.raft is not None:
            self.register("raft", self.raft.on_message)

    def _live_txn_records(self) -> list:
        """Transaction records not yet forgotten, on the raft leader only (the sweeper
        there finishes them); oldest first, at most 64."""
        raft = self.raft
        if raft is None or raft.core is None or raft.status().get("role") != "leader":
            return []
        table = raft.sm.txns
        return sorted((table.records[t] for t in table.live if t in table.records),
                      key=lambda r: r.created_revision)[:64]

    def _joining(self, config: NodeConfig) -> bool:
        """Start JOINING (and stream) with --join, unless this node finished joining or was
        a member before (a data directory with an earlier life and no join record)."""
        if not config.join:
            return False
        saved = RangeStreamer.peek(self.streamer_state)
        if saved:
            return saved.get("kind") in ("join", "replace") and saved.get("state") != "done"
        return not prior_life(config.data_dir)

    def _replaces(self, config: NodeConfig) -> str:
        saved = RangeStreamer.peek(self.streamer_state)
        # (a later decommission of a replacement keeps the record of whom it replaced)
        before = saved.get("replaces", "") if saved.get("kind") in ("replace",
                                                                    "decommission") else ""
        if before and config.replace and config.replace != before:
            raise MoveRefused(f"{config.node_id} took the place of {before} (its move.json "
                              f"says so), not of {config.replace}: drop --replace, or start "
                              "a new node for that")
        if config.replace and not before and not self.joining:
            raise MoveRefused(f"--replace {config.replace}: {config.node_id} already has "
                              "data of its own (a replacement starts with an empty data "
                              "directory)")
        return before or config.replace

    def register(self, kind: str, handler: RawHandler) -> None:
        """Let a service own the `raft`, `gossip` or `extension` messages."""
        self.raw_handlers[kind] = handler

    async def start(self) -> None:
        await self.transport.start(self.handle_peer, self.handle_peer_batch)
        if self.raft is not None:
            await self.raft.start()
        self.membership.start()
        self.handoff.start()
        self.antientropy.start()
        self.txn.start()
        if not self.joining:  # a member: make sure the Raft group records its place
            self.ring_log.start(self._record_place, self._on_committed_ring)
        else:
            self.ring_log.start(None, self._on_committed_ring)
        if self.joining:
            self.streamer.start_join(replaces=self.replaces)
        elif self.leaving:
            log.warning("%s was leaving the ring when it stopped: resuming the decommission",
                        self.config.node_id)
            self.streamer.start_decommission()

    async def _record_place(self) -> None:
        """A member that starts NORMAL (or LEAVING, resuming a decommission) is recorded
        so, with its tokens: a cluster created together, or before its ring was recorded,
        records each member on its first start (repeats are accepted)."""
        status = Status.LEAVING if self.leaving else Status.NORMAL
        await self.ring_log.commit(self.node_id, int(status), self.ring_tokens)

    def _on_committed_ring(self, view) -> None:
        """Trust the committed ring over gossip for members that left: a member the group
        records LEFT stays off this node's ring (once its replacement, if any, is NORMAL
        here, so its tokens never go unowned in between)."""
        left = {}
        for node, record in view.items():
            if record.status != int(Status.LEFT) or node == self.node_id:
                continue
            if record.replaced_by and \
                    self.membership.status(record.replaced_by) != Status.NORMAL.name:
                continue
            left[node] = record.revision
        self.membership.trust_committed_left(left)

    async def stop(self) -> None:
        await self.ring_log.stop()
        await self.txn.stop()
        if self.raft is not None:
            await self.raft.stop()
        await self.streamer.stop()
        await self.antientropy.stop()
        await self.handoff.stop()
        await self.membership.stop()
        await self.coordinator.drain()
        await self.transport.close()  # closes the raft lane too

    async def handle_peer_batch(self, source: str,
                                messages: Sequence[pb.PeerMessage]) -> list[pb.PeerResult]:
        """One inbound peer batch: its plain replica writes are merged with ONE storage call
        (Replica.merge_many: one group-commit item, one future); every other message goes
        through `handle_peer` on its own, concurrently. Results in message order."""
        plain = [i for i, m in enumerate(messages)
                 if m.WhichOneof("body") == "write" and not m.request_id
                 and (not m.write.hint_for or m.write.hint_for == self.node_id)]
        if len(plain) < 2:
            return list(await asyncio.gather(*(self._safe_peer(source, m) for m in messages)))
        results: list[pb.PeerResult | None] = [None] * len(messages)
        chosen = set(plain)
        others = [i for i in range(len(messages)) if i not in chosen]
        rest = asyncio.gather(*(self._safe_peer(source, messages[i]) for i in others))
        items, states, decoded = [], [], []
        for i in plain:
            write = messages[i].write
            try:
                purged, purged_at = versions.marker_from_pb(write.state)
                items.append((write.key, versions.from_pb(write.state), purged, purged_at,
                              versions.fence_from_pb(write.fence)))
                states.append(write.state)
                decoded.append(i)
            except KVError as exc:
                results[i] = pb.PeerResult(error=exc.to_pb())
            except Exception as exc:  # as _safe_peer: this message fails, not the batch
                log.exception("internode write from %s does not decode", source)
                results[i] = pb.PeerResult(error=common_pb2.Error(
                    code=common_pb2.INTERNAL, message=repr(exc)))
        try:
            merged = await self.replica.merge_many(items, states) if items else []
        except asyncio.CancelledError:
            rest.cancel()
            raise
        except Exception as exc:  # a bug: these messages fail, the rest are answered
            log.exception("internode writes from %s failed", source)
            error = common_pb2.Error(code=common_pb2.INTERNAL, message=repr(exc))
            merged = []
            for i in decoded:
                results[i] = pb.PeerResult(error=error)
            decoded = []
        for i, answer in zip(decoded, merged, strict=True):
            write = messages[i].write
            if isinstance(answer, KVError):
                results[i] = pb.PeerResult(error=answer.to_pb())
            elif write.reply_state:
                results[i] = pb.PeerResult(state=versions.to_pb(answer), found=True)
            else:
                results[i] = pb.PeerResult(found=True)
        for i, result in zip(others, await rest, strict=True):
            results[i] = result
        assert all(r is not None for r in results), "every message of the batch is answered"
        return results  # type: ignore[return-value]

    async def _safe_peer(self, source: str, message: pb.PeerMessage) -> pb.PeerResult:
        try:
            return await self.handle_peer(source, message)
        except Exception as exc:  # one bad message must not fail the whole batch
            log.exception("internode handler failed for a message from %s", source)
            return pb.PeerResult(error=common_pb2.Error(code=common_pb2.INTERNAL,
                                                        message=repr(exc)))

    async def handle_peer(self, source: str, message: pb.PeerMessage) -> pb.PeerResult:
        kind = message.WhichOneof("body")
        if message.request_id:  # a named client request: log this step under its id
            REQUEST_ID.set(message.request_id)  # (each inbound message has its own context)
            body = getattr(message, kind) if kind else None
            log.info("%s from %s%s", kind, source,
                     f" key {body.key!r}" if kind in ("read", "write") else "")
        try:
            if kind == "read":
                # the stored bytes as they are (a live purge marker included: anti-entropy
                # spreads purges; coordinators ignore it)
                # a transaction's intent, looked up before the read (resolution merges the
                # version before it drops the intent: the reply shows one or the other)
                txn_id = self.replica.read_intent_of(message.read.key)
                state = await self.replica.read_state(message.read.key)
                result = pb.PeerResult(state=state, found=bool(state.versions))
                if txn_id:  # the read's coordinator resolves it first (services/txn.py)
                    result.intent_txn = txn_id
                return result
            if kind == "write":
                write = message.write
                incoming = versions.from_pb(write.state)
                if write.hint_for and write.hint_for != self.node_id:
                    await self.handoff.store(write.hint_for, write.key, incoming)
                    return pb.PeerResult(state=write.state if write.reply_state else None,
                                         found=True)
                purged, purged_at = versions.marker_from_pb(write.state)
                merged = await self.replica.merge(write.key, incoming, marker=purged,
                                                  marker_at_ms=purged_at,
                                                  fence=versions.fence_from_pb(write.fence),
                                                  state=write.state)
                if not write.reply_state:
                    return pb.PeerResult(found=True)
                return pb.PeerResult(state=versions.to_pb(merged), found=True)
            if kind == "forward":
                reply = await self.coordinator.execute(message.forward.request, forwarded=True)
                return pb.PeerResult(reply=reply)
            if kind == "txn":
                return pb.PeerResult(txn=await self.txn.on_peer(source, message.txn))
            if kind == "stream":
                return pb.PeerResult(page=await self.streamer.serve(source, message.stream))
            if kind == "antientropy":
                return pb.PeerResult(raw=await self.antientropy.on_message(source,
                                                                          message.antientropy))
            if kind == "meta" and self.raft is not None:
                return pb.PeerResult(meta=await self.raft.handle_meta(message.meta))
            if kind in ("raft", "gossip", "extension", "meta"):
                handler = self.raw_handlers.get(kind)
                if handler is None:
                    return pb.PeerResult(error=common_pb2.Error(
                        code=common_pb2.INVALID_ARGUMENT,
                        message=f"{self.node_id} does not run a {kind} service"))
                return pb.PeerResult(raw=await handler(source, getattr(message, kind)))
            return pb.PeerResult(error=common_pb2.Error(
                code=common_pb2.INVALID_ARGUMENT,
                message=f"unknown internode message {kind!r} from {source}"))
        except KVError as exc:
            return pb.PeerResult(error=exc.to_pb())
