"""Whole clusters in one process: Nodes over a MemoryNetwork with in-memory inline stores.

Fault injection beyond the network's own (partitions, loss, duplication, delay): per-node
clock skew (`skew_ms`), crashes that stop a node and abandon what it was doing (`kill`),
restarts with or without its disk (`revive`), and a replica losing or corrupting one
record (`lose_record`, `corrupt_record`). Observers (`on_mint`, `on_refused`) see every
version a replica mints and every version its resurrection guard refuses, without
changing what the production code does, and `on_hint_dropped` every hint a node drops
undelivered.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import common_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.node.config import NodeConfig
from kvstore.node.node import Node
from kvstore.storage import DISCARD, AsyncStore, MemoryEngine
from kvstore.storage.epochs import EpochAllocator
from kvstore.storage.hints import HintStore
from kvstore.storage.intents import IntentStore
from kvstore.storage.raftlog import MemoryFiles
from kvstore.transport.memory import MemoryNetwork

LEVELS = {"ONE": cpb.ONE, "TWO": cpb.TWO, "THREE": cpb.THREE, "QUORUM": cpb.QUORUM,
          "ALL": cpb.ALL, "ANY": cpb.ANY}


class SimCluster:
    def __init__(self, size: int = 3, *, seed: int = 0, replication_factor: int = 3,
                 timeout_ms: int = 500, vnodes: int = 64, read_all_chance: float = 0.1,
                 hinted_handoff: bool = True, move_dir: Path | None = None,
                 **config) -> None:
        self.hinted_handoff = hinted_handoff
        self.move_dir = move_dir  # each node's move.json (part of its disk) lives here
        self.config = config  # further NodeConfig fields for every node
        self.seed = seed
        self.read_all_chance = read_all_chance
        self.network = MemoryNetwork(seed)
        self.ids = [f"n{i + 1}" for i in range(size)]
        self.replication_factor = replication_factor
        self.timeout_ms = timeout_ms
        self.vnodes = vnodes
        self.engines = {node_id: MemoryEngine() for node_id in self.ids}
        self.hints = {node_id: HintStore(None) for node_id in self.ids}
        self.raft_files = {node_id: MemoryFiles() for node_id in self.ids}  # the raft "disk"
        self.intents: dict[str, IntentStore] = {}  # transaction intents (part of the disk)
        # Each node's actor-epoch allocator: part of its "disk" (lost with it).
        self.epochs: dict[str, EpochAllocator] = {}
        self.nodes: dict[str, Node] = {}
        self.skew_ms: dict[str, int] = {}  # per-node wall-clock offset (changeable any time)
        self.incarnation: dict[str, int] = {}
        self.down: set[str] = set()  # killed and not yet revived
        # handlers running per node (a dict: cancelled in a deterministic order)
        self._inflight: dict[str, dict[asyncio.Task, None]] = {}
        self._stopping: dict[str, asyncio.Task] = {}
        # Observers: on_mint(node, key, sibling) after every mint; on_refused(node, key,
        # refused siblings) when a merge's resurrection guard refuses versions.
        self.on_mint = None
        self.on_refused = None
        self.on_hint_dropped = None  # on_hint_dropped(node, key, reason)

    EPOCH_MS = 1_800_000_000_000  # virtual wall clock: a plausible epoch plus loop time

    def _clock_ms(self) -> int:
        return self.EPOCH_MS + int(asyncio.get_running_loop().time() * 1000)

    def _node_clock(self, node_id: str):
        return lambda: self._clock_ms() + self.skew_ms.get(node_id, 0)

    def _make(self, node_id: str, seeds: list[str] | None = None, *,
              first_start: bool = False, **overrides) -> Node:
        # A raft group is created (--raft-bootstrap) only when the cluster first starts,
        # as `kv cluster up` does; restarts recover (or refuse) like real nodes.
        fields = {"raft_bootstrap": first_start, **self.config, **overrides}
        config = NodeConfig(
            node_id=node_id, listen=f"{node_id}:1",
            seeds=seeds if seeds is not None else [f"{n}={n}:1" for n in self.ids],
            replication_factor=self.replication_factor, vnodes=self.vnodes,
            timeout_ms=self.timeout_ms, hinted_handoff=self.hinted_handoff, **fields,
        )
        transport = self.network.transport(node_id, config.address)
        store = AsyncStore(self.engines[node_id], inline=True)
        if node_id not in self.epochs:  # part of its disk: lost with it
            self.epochs[node_id] = EpochAllocator(None, self._node_clock(node_id))
        incarnation = self.incarnation.get(node_id, 0)
        # a restarted process draws fresh randomness (session ids must not repeat)
        rng = random.Random(f"{self.seed}/{node_id}" + (f"/{incarnation}" if incarnation else ""))
        node = Node(config, transport, store, clock_ms=self._node_clock(node_id),
                    monotonic=lambda: asyncio.get_running_loop().time(),
                    rng=rng, hints=self.hints[node_id], epochs=self.epochs[node_id],
                    inline_io=True, raft_files=self.raft_files.setdefault(node_id, MemoryFiles()),
                    move_file=self._move_file(node_id),
                    intents=self.intents.setdefault(node_id, IntentStore(None)))
        node.coordinator.config.read_all_chance = self.read_all_chance
        self._observe(node_id, node)
        return node

    def _move_file(self, node_id: str) -> Path | None:
        if self.move_dir is None:
            return None
        (self.move_dir / node_id).mkdir(parents=True, exist_ok=True)
        return self.move_dir / node_id / "move.json"

    def _observe(self, node_id: str, node: Node) -> None:
        """Wrap the replica's mint and guard to report to the observers (behaviour unchanged)."""
        replica = node.replica
        mint = replica.mint

        async def observed_mint(key, context, value, **kwargs):
            out = await mint(key, context, value, **kwargs)
            if self.on_mint is not None:
                self.on_mint(node_id, key, out[-1])
            return out

        replica.mint = observed_mint
        self._observe_hints(node_id, node.handoff.hints)
        # the resurrection guard: `admit(current, incoming)` (a purge watermark) or
        # `_admit(record, incoming, now)` (purge markers); both return what they accept
        name = "admit" if getattr(replica, "admit", None) is not None else "_admit"
        admit = getattr(replica, name, None)
        if admit is None:
            return
        # the guard sees no key: Replica.merge passes the key through this cell
        current_key: list[bytes] = [b""]
        merge = replica.merge

        async def keyed_merge(key, incoming, **kwargs):
            current_key[0] = key
            return await merge(key, incoming, **kwargs)

        def observed_admit(*args):
            accepted = admit(*args)
            incoming = args[1]
            if self.on_refused is not None and len(accepted) < len(incoming):
                kept = {s.dot for s in accepted}
                refused = [s for s in incoming if s.dot not in kept]
                # Replica._admit names its key (merge_many runs several keys' merges in one
                # storage call); the cell is for a guard that does not
                key = args[3] if len(args) > 3 and args[3] else current_key[0]
                self.on_refused(node_id, key, refused)
            return accepted

        replica.merge = keyed_merge
        setattr(replica, name, observed_admit)

    def _observe_hints(self, node_id: str, hints: HintStore) -> None:
        """Report hints dropped undelivered (expired, owner left, corrupt) to on_hint_dropped."""
        if getattr(hints, "_sim_observed", False):
            return  # the same store across restarts: wrap it once
        for name in ("expire", "take_dropped"):
            def dropping(*args, _fn=getattr(hints, name)):
                dropped = _fn(*args)
                if self.on_hint_dropped is not None:
                    for hint in dropped:
                        self.on_hint_dropped(node_id, hint.key, hint.reason)
                return dropped

            setattr(hints, name, dropping)
        hints._sim_observed = True

    async def _start_node(self, node_id: str, node: Node) -> None:
        await node.start()
        handler = self.network.handlers[node_id]
        running = self._inflight.setdefault(node_id, {})

        async def guarded(source: str, message: pb.PeerMessage) -> pb.PeerResult:
            # each handler runs in its own task (the network gathers them): a crash cancels
            # it where it waits, as a killed process stops mid-request
            task = asyncio.current_task()
            running[task] = None
            try:
                return await handler(source, message)
            except asyncio.CancelledError:
                if node_id not in self.down:
                    raise
                return pb.PeerResult()  # never seen: the network reports a lost reply
            finally:
                running.pop(task, None)

        self.network.handlers[node_id] = guarded
        batch_handler = self.network.batch_handlers.get(node_id)
        if batch_handler is None:
            return

        async def guarded_batch(source: str, messages: list) -> list[pb.PeerResult]:
            # the network runs each batch in its own task: a crash cancels it where it
            # waits (the messages it hands to handle_peer run inside it)
            task = asyncio.current_task()
            running[task] = None
            try:
                return await batch_handler(source, messages)
            except asyncio.CancelledError:
                if node_id not in self.down:
                    raise
                return [pb.PeerResult() for _ in messages]  # never seen: the reply is lost
            finally:
                running.pop(task, None)

        self.network.batch_handlers[node_id] = guarded_batch

    async def start(self) -> SimCluster:
        for node_id in self.ids:
            self.nodes[node_id] = self._make(node_id, first_start=True)
            await self._start_node(node_id, self.nodes[node_id])
        await self.wait_ready()
        return self

    async def wait_ready(self, limit: float = 30.0) -> None:
        """Until every node has heard from its seeds (health SERVING in a real node)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not all(n.membership.ready for n in self.nodes.values()):
            assert loop.time() < deadline, "the simulated cluster never became ready"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    async def join(self, node_id: str, seeds: list[str], **overrides) -> Node:
        """Start a node that knows only `seeds` (plain addresses): it joins by gossip
        (with join=True among `overrides`, by streaming its ranges first)."""
        self.engines[node_id] = MemoryEngine()
        self.hints[node_id] = HintStore(None)
        self.ids.append(node_id)
        self.nodes[node_id] = self._make(node_id, seeds, **overrides)
        await self._start_node(node_id, self.nodes[node_id])
        return self.nodes[node_id]  # readiness: the caller waits for it

    def crash(self, node_id: str) -> None:
        self.network.crash(node_id)

    async def restart(self, node_id: str, **overrides) -> None:
        """A crashed node comes back with what its engine held (memory engine = its disk);
        `overrides` change its NodeConfig for this start (e.g. raft_join=True)."""
        seeds = self.nodes[node_id].config.seeds
        await self.nodes[node_id].stop()
        self.network.restart(node_id)
        self.nodes[node_id] = self._make(node_id, seeds, **overrides)
        await self._start_node(node_id, self.nodes[node_id])
        await self.wait_ready()

    def kill(self, node_id: str) -> None:
        """Crash a node the hard way: it stops answering at once, requests it was handling
        are abandoned where they wait, and its services stop (in the background)."""
        assert node_id not in self.down, f"{node_id} is down already"
        self.down.add(node_id)
        self.network.crash(node_id)
        for task in list(self._inflight.get(node_id, ())):
            task.cancel()
        self.nodes[node_id].streamer.halt()  # a join or decommission stops where it is
        self._stopping[node_id] = asyncio.ensure_future(self.nodes[node_id].stop())

    async def revive(self, node_id: str, *, lose_disk: bool = False) -> Node:
        """Start a killed node again: with what its disk held, or with an empty disk (its
        records and hints are gone) when `lose_disk`. Does not wait for it to be ready."""
        assert node_id in self.down, f"{node_id} is not down"
        await self._stopping.pop(node_id)
        if lose_disk:
            self.engines[node_id] = MemoryEngine()
            self.hints[node_id] = HintStore(None)
            self.epochs.pop(node_id, None)
            self.raft_files[node_id] = MemoryFiles()
            self.intents.pop(node_id, None)
            if self.move_dir is not None:
                self._move_file(node_id).unlink(missing_ok=True)
        seeds = self.nodes[node_id].config.seeds
        self.incarnation[node_id] = self.incarnation.get(node_id, 0) + 1
        self.down.discard(node_id)
        self.network.restart(node_id)
        self.nodes[node_id] = self._make(node_id, seeds)
        await self._start_node(node_id, self.nodes[node_id])
        return self.nodes[node_id]

    def lose_record(self, node_id: str, key: bytes) -> bool:
        """The replica's record of `key` vanishes (as a repair tool dropping a damaged row)."""
        had = self.engines[node_id].get_many([key])[0] is not None
        self.engines[node_id].apply([(key, DISCARD)])
        return had

    def corrupt_record(self, node_id: str, key: bytes) -> bool:
        """Flip a byte of the replica's record of `key` (checksum kept); False if absent."""
        try:
            self.engines[node_id].corrupt_for_test(key)
        except KeyError:
            return False
        return True

    async def lose_disk(self, node_id: str) -> None:
        """The node restarts with an empty data directory: records, hints, epochs and raft
        state gone (a raft voter then refuses to start: RaftStartRefused)."""
        self.crash(node_id)
        self.engines[node_id] = MemoryEngine()
        self.hints[node_id] = HintStore(None)
        self.raft_files[node_id] = MemoryFiles()
        self.intents.pop(node_id, None)
        del self.epochs[node_id]
        if self.move_dir is not None:
            self._move_file(node_id).unlink(missing_ok=True)
        await self.restart(node_id)

    async def restore(self, node_id: str, backup: MemoryEngine) -> None:
        """The node restarts from an old copy of its disk, as an operator would
        (`kv node start --restored`)."""
        self.crash(node_id)
        self.engines[node_id] = backup.snapshot()
        del self.epochs[node_id]  # its epoch file came back old too
        await self.restart(node_id, restored=True)

    def wipe_raft(self, node_id: str) -> None:
        """Lose the node's raft directory (the rest of its data stays)."""
        self.raft_files[node_id] = MemoryFiles()

    # -- the raft metadata group (SimCluster(..., raft_voters=[...])) ------------------
    def raft_leader(self) -> str | None:
        """The one node that leads the raft group now, if exactly one does."""
        leads = [n for n, node in self.nodes.items()
                 if node.raft is not None and node.raft.status().get("role") == "leader"
                 and n not in self.network.faults.crashed]
        return leads[0] if len(leads) == 1 else None

    async def wait_raft_leader(self, limit: float = 30.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while (lead := self.raft_leader()) is None:
            assert loop.time() < deadline, "no raft leader in the simulated cluster"
            await asyncio.sleep(0.05)
        return lead

    async def meta(self, via: str, request: dict) -> dict:
        """A metadata request (get, put, cas, status, ...) served through node `via`."""
        if request.get("op") in ("status", "conf"):
            return await self.nodes[via].raft.handle(request)
        if not hasattr(self, "_dict_meta"):
            from metahelp import DictMeta

            self._dict_meta = DictMeta()
        return await self._dict_meta(self.nodes[via].raft.handle_meta, request)

    def replicas(self, key: bytes) -> list[str]:
        return self.nodes[self.ids[0]].membership.ring.preference_list(key,
                                                                       self.replication_factor)

    def stored(self, node_id: str, key: bytes) -> list[versions.Sibling]:
        return versions.decode(self.engines[node_id].get(key))

    # -- client operations through any coordinator ------------------------------------
    async def request(self, via: str, request: cpb.ClientRequest) -> cpb.ClientReply:
        return await self.nodes[via].coordinator.execute(request)

    async def get(self, via: str, key: bytes, level: str = "QUORUM", *, trace: bool = False,
                  r: int = 0) -> cpb.ClientReply:
        return await self.request(via, cpb.ClientRequest(
            get=cpb.GetRequest(key=key, quorum=cpb.Quorum(level=LEVELS[level], count=r)),
            trace=trace))

    async def put(self, via: str, key: bytes, value: bytes, level: str = "QUORUM", *,
                  context: bytes = b"", trace: bool = False, w: int = 0, strict: bool = False,
                  sloppy: bool = False,
                  fence: tuple[str, int] | None = None) -> cpb.ClientReply:
        return await self.request(via, cpb.ClientRequest(
            put=cpb.PutRequest(key=key, value=value, context=context,
                               quorum=cpb.Quorum(level=LEVELS[level], count=w),
                               strict=strict, sloppy=sloppy, fence=_fence(fence)),
            trace=trace))

    async def delete(self, via: str, key: bytes, level: str = "QUORUM", *,
                     context: bytes = b"", strict: bool = False,
                     sloppy: bool = False,
                     fence: tuple[str, int] | None = None) -> cpb.ClientReply:
        return await self.request(via, cpb.ClientRequest(
            delete=cpb.DeleteRequest(key=key, context=context,
                                     quorum=cpb.Quorum(level=LEVELS[level]),
                                     strict=strict, sloppy=sloppy, fence=_fence(fence))))

    async def settle(self) -> None:
        """Let background replica calls finish."""
        for node in self.nodes.values():
            await node.coordinator.drain()
        await asyncio.sleep(0.05)


def _fence(fence: tuple[str, int] | None) -> common_pb2.Fence | None:
    return None if fence is None else common_pb2.Fence(lock=fence[0], token=fence[1])


def values(reply: cpb.ClientReply) -> list[bytes]:
    assert reply.HasField("get"), reply
    return sorted(s.value for s in reply.get.siblings)


def run_scenario(scenario, **kwargs):
    """Run `await scenario(cluster)` on a started SimCluster(**kwargs) in virtual time."""
    from simkit import vtime

    async def main():
        cluster = await SimCluster(**kwargs).start()
        try:
            return await scenario(cluster)
        finally:
            await cluster.stop()

    return vtime.run(main)
