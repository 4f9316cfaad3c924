"""Gossip membership: the asyncio driver of the pure gossip core and phi-accrual detector.

Every `interval` the node beats its heartbeat and runs a three-way exchange (SYN, ACK,
ACK2) with the targets the core chooses (a live peer, sometimes an unreachable one or a
seed). Heartbeat news feeds the failure detector; the ring is built from gossiped tokens.

It offers the same seam the coordinator and handoff use: `members`, `ring`, `ready`,
`unresolved_seeds()`, `is_up()`, `phi()`, `status()`. Seeds are addresses (or
`id=address`); until a seed's id is known it is gossiped with as `seed@address`.
A node is ready once every seed address belongs to a known member, so nodes started
together agree on the ring before serving; what was learned is saved in the data
directory, with the generation, which grows across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kvstore._proto import internode_pb2 as pb
from kvstore.core.address import is_host_port
from kvstore.core.errors import InvalidArgument
from kvstore.core.failure_detector import PhiAccrualDetector
from kvstore.core.gossip import Gossiper, GossipError, Status
from kvstore.core.ring import DEFAULT_VNODES, Ring, node_tokens
from kvstore.storage.durable import StateFileError, read_state, write_atomic
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)

SEED_PREFIX = "seed@"
# A round this late (seconds) means the process itself was stalled: see _check_stall. Below
# the ~1.7 s of silence after which a fast-gossiping peer is suspected, above the event
# loop lag of a busy node.
STALL_FORGIVE_AFTER = 1.0


def parse_seed(seed: str) -> tuple[str | None, str]:
    """`id=host:port` or `host:port` -> (id or None, address)."""
    seed = seed.strip()
    node_id, sep, address = seed.partition("=")
    if not sep:
        node_id, address = "", seed
    if not is_host_port(address):
        raise ValueError(f"seed {seed!r} is not host:port or id=host:port")
    return (node_id or None), address


class GossipMembership:
    def __init__(
        self,
        node_id: str,
        address: str,
        seeds: list[str],
        transport: Transport,
        *,
        wall_clock: Callable[[], float],
        monotonic: Callable[[], float],
        rng: random.Random,
        vnodes: int = DEFAULT_VNODES,
        state_path: Path | None = None,
        interval: float = 1.0,
        phi_threshold: float = 8.0,
        timeout: float = 1.0,
        ready_after: float = 5.0,
        status: Status = Status.NORMAL,
        ring_delay: float = 0.0,
        tokens: list[int] | None = None,
    ) -> None:
        """`tokens`: this node's, when not the ones its id gives (it replaced a dead node
        and took that node's tokens)."""
        self.node_id = node_id
        self.address = address
        self.transport = transport
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self.rng = rng
        self.vnodes = vnodes
        self.state_path = state_path
        self.interval = interval
        self.timeout = timeout
        # Seeds known only from configuration or an earlier run count as resolved once
        # this long has passed without hearing from them (a peer may be down for good).
        self.ready_after = ready_after
        self.started = monotonic()
        self.metrics: Counter[str] = Counter()
        self.seed_addresses: set[str] = set()
        known: dict[str, str] = {}
        for seed in seeds:
            seed_id, seed_address = parse_seed(seed)
            self.seed_addresses.add(seed_address)
            if seed_id:
                known[seed_id] = seed_address
        self.seed_ids = {address: node for node, address in known.items()}
        # Members forced out (kv node remove) -> the generation they had: kept off the ring
        # until they come back JOINING with a newer one (wiped, streaming afresh).
        self.removed: dict[str, int] = {}
        # Members whose tokens are not the ones their id gives (replacements), as last
        # heard: a node that restarts places them right before it hears from them.
        self.odd_tokens: dict[str, tuple[int, ...]] = {}
        saved_generation, saved = self._load()
        known = {k: v for k, v in {**saved, **known}.items() if k not in self.removed}
        generation = max(int(wall_clock()), saved_generation + 1, 1)
        self.gossiper = Gossiper(
            node_id, address, generation,
            tokens=tokens if tokens is not None else node_tokens(node_id, vnodes),
            status=status,
            seeds=[self._seed_name(a) for a in self.seed_addresses if a != address],
        )
        self.detector = PhiAccrualDetector(phi_threshold, initial_interval=interval,
                                           max_interval=10 * interval)
        # Members we know of but have not heard from yet (from seeds given as id=address,
        # or saved from an earlier run): on the ring from the start, so a node that restarts
        # while a peer is down still places keys as everyone else does.
        self.static: dict[str, str] = {k: v for k, v in known.items() if k != node_id}
        for member, member_address in self.static.items():
            transport.set_address(member, member_address)
        self._members: dict[str, str] | None = None
        self._settled = False  # `ready_after` has passed since start
        # (members dict it was computed from, before ready_after?, unresolved seeds)
        self._seeds_cache: tuple[dict[str, str], bool, frozenset[str]] | None = None
        self._ring_key: tuple = ()
        self.ring = Ring()
        # The ring after the moves under way (members JOINING added, LEAVING removed), or
        # None when nothing moves: writes also go to its owners (pending ranges).
        self.pending_ring: Ring | None = None
        # The ring before the last change, for `ring_delay` after it: writes keep reaching
        # W of its owners too, so a node that has not yet heard of the change still reads
        # what was written by one that has.
        self.ring_delay = ring_delay
        self.previous_ring: Ring | None = None
        self._previous_until = 0.0
        self._was_ready = False  # a ring change before this node served keeps no previous
        self.on_ring_change: list[Callable[[], None]] = []
        self._rebuild()
        self._task: asyncio.Task | None = None
        self._inflight: dict[str, asyncio.Task] = {}  # exchanges outliving their round
        self._round_due: float | None = None  # when the next round should start
        self._save()

    # -- persistence ------------------------------------------------------------------
    def _load(self) -> tuple[int, dict[str, str]]:
        """(generation, members) saved by an earlier run; (0, {}) when there was none.

        A file that exists but is unreadable or malformed stops the node (StateFileError):
        treating it as empty would restart with a generation that may not exceed the last
        one, and without the members that are down now, so keys would be placed on a
        different ring than everyone else's.
        """
        if not self.state_path:
            return 0, {}
        data = read_state(self.state_path)
        if data is None:
            return 0, {}
        try:
            saved = json.loads(data)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
            generation = saved["generation"]
            members = saved["members"]
            if not isinstance(generation, int) or isinstance(generation, bool) \
                    or generation < 0:
                raise ValueError(f"generation {generation!r} is not a non-negative integer")
            if not isinstance(members, dict) or not all(
                    isinstance(k, str) and k and isinstance(v, str) and is_host_port(v)
                    for k, v in members.items()):
                raise ValueError("members is not a map of node id to host:port")
            removed = saved.get("removed", {})
            if not isinstance(removed, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) for k, v in removed.items()):
                raise ValueError("removed is not a map of node id to generation")
            self.removed = dict(removed)
            odd = saved.get("tokens", {})
            if not isinstance(odd, dict) or not all(
                    isinstance(k, str) and isinstance(v, list)
                    and all(isinstance(t, int) and -2**63 <= t < 2**63 for t in v)
                    for k, v in odd.items()):
                raise ValueError("tokens is not a map of node id to a list of tokens")
            self.odd_tokens = {k: tuple(v) for k, v in odd.items()}
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise StateFileError(
                f"membership file {self.state_path} is damaged ({reason}). It holds this "
                "node's generation and the members it places keys on: restore it, or move "
                "it aside only if --seeds lists every member as id=host:port") from None
        return generation, dict(members)

    def _save(self) -> None:
        if not self.state_path:
            return
        # Rare (start, stop, a membership change): done inline, one small fsync.
        write_atomic(self.state_path, json.dumps(
            {"generation": self.gossiper.local.generation, "members": self.members,
             "removed": self.removed,
             "tokens": {m: list(t) for m, t in sorted(self.odd_tokens.items())}},
            indent=2, sort_keys=True).encode())

    # -- the seam ---------------------------------------------------------------------
    @property
    def members(self) -> dict[str, str]:
        """id -> address of every member that has not left (cached; rebuilt on change)."""
        if self._members is None:
            out = dict(self.static)
            for member, state in self.gossiper.endpoints.items():
                if state.status == Status.LEFT or self._is_removed(member, state):
                    out.pop(member, None)
                else:
                    out[member] = state.address
            self._members = out
        return self._members

    def unresolved_seeds(self) -> set[str]:
        """Seed addresses not yet known as members, or (for `ready_after` seconds after
        start) not yet heard from by gossip."""
        return set(self._unresolved())

    def _unresolved(self) -> frozenset[str]:
        """`unresolved_seeds`, cached: it is asked on every request. It depends on the
        members (ids, addresses, statuses: every change of those resets `_members`, so the
        `members` dict object is the cache key), on `removed` (changed only together with a
        `_members` reset, or while `members` is rebuilt), and on time only through whether
        `ready_after` has passed since start, which, once true, stays true."""
        members = self.members
        early = not self._settled
        if early and self.monotonic() - self.started >= self.ready_after:
            self._settled = True
            early = False
        cached = self._seeds_cache
        if cached is not None and cached[0] is members and cached[1] == early:
            return cached[2]
        result = frozenset(self._compute_unresolved(members, early))
        self._seeds_cache = (members, early, result)
        return result

    def _compute_unresolved(self, members: dict[str, str], early: bool) -> set[str]:
        known = set(members.values())
        if early:
            heard = self.gossiper.endpoints
            known = {a for m, a in members.items() if m in heard}
        # a seed that left the ring (decommissioned) is resolved: it will not come back
        known |= {s.address for m, s in self.gossiper.endpoints.items()
                  if s.status == Status.LEFT or m in self.removed}
        known |= {a for a, m in self.seed_ids.items() if m in self.removed}
        return self.seed_addresses - known - {self.address}

    @property
    def ready(self) -> bool:
        ready = not self._unresolved()
        self._was_ready = self._was_ready or ready
        return ready

    def is_up(self, node: str) -> bool:
        if node == self.node_id:
            return True
        if self.detector.generation(node) is None:
            # never heard from since we started: up if we know it (its timeouts will tell)
            return node in self.members
        return self.detector.is_up(node, self.monotonic())

    def phi(self, node: str) -> float:
        if node == self.node_id or self.detector.generation(node) is None:
            return 0.0
        return self.detector.phi(node, self.monotonic())

    def status(self, node: str) -> str:
        state = self.gossiper.endpoints.get(node)
        return state.status.name if state else "UNKNOWN"

    # -- ring ---------------------------------------------------------------------------
    def _is_removed(self, member: str, state) -> bool:
        """Forced out, and not back as a fresh node (JOINING with a newer generation)."""
        gone = self.removed.get(member)
        if gone is None:
            return False
        if state.status == Status.JOINING and state.generation > gone:
            del self.removed[member]  # wiped and joining again: welcome, it streams afresh
            return False
        return True

    def speak_for(self, member: str, status: Status) -> None:
        """Set a down member's status on its behalf (kv node remove); LEFT quarantines it."""
        state = self.gossiper.speak_for(member, status)
        if status == Status.LEFT:
            self.removed[member] = state.generation
            self.static.pop(member, None)
        self._members = None
        self._rebuild()
        self._save()

    def set_tokens(self, tokens) -> None:
        """Announce this node's tokens by gossip (a joining node with a Raft group starts
        without any, and claims them here once the group has recorded its join)."""
        self.gossiper.update(tokens=tokens)
        self._members = None
        self._rebuild()

    def trust_committed_left(self, left: dict[str, int]) -> list[str]:
        """Members the Raft group records as LEFT (id -> revision) stay off the ring
        whatever gossip says of them (a node that restarts after missing the LEFT, or
        a stale gossip state): they come back only JOINING afresh. Returns those newly
        kept off."""
        out = []
        for member in left:
            if member == self.node_id or member in self.removed:
                continue
            state = self.gossiper.endpoints.get(member)
            if state is None and member not in self.static:
                continue
            if state is not None and state.status == Status.LEFT:
                continue
            if state is not None and state.status == Status.JOINING:
                continue  # joining afresh (its new record is read on the next refresh)
            self.removed[member] = state.generation if state is not None else 0
            self.static.pop(member, None)
            out.append(member)
        if out:
            log.warning("the raft group records %s as LEFT: kept off the ring",
                        ", ".join(out))
            self._members = None
            self._rebuild()
            self._save()
        return out

    def set_status(self, status: Status) -> None:
        """Announce this node's lifecycle change (joining done, leaving, left) by gossip."""
        self.gossiper.update(status=status)
        self._members = None
        self._rebuild()

    def write_rings(self) -> list[Ring]:
        """Besides `ring`: the rings whose owners must also reach W for a write now (the
        pending ring of a move under way; the previous ring for `ring_delay` after a
        change)."""
        out = [self.pending_ring] if self.pending_ring is not None else []
        if self.previous_ring is not None:
            if self.monotonic() < self._previous_until:
                out.append(self.previous_ring)
            else:
                self.previous_ring = None
        return out

    def moving(self) -> dict[str, str]:
        """Members joining or leaving the ring: id -> status name."""
        return {m: s.status.name for m, s in self.gossiper.endpoints.items()
                if s.status in (Status.JOINING, Status.LEAVING)}

    def _rebuild(self) -> None:
        tokens = {m: self.odd_tokens.get(m) or node_tokens(m, self.vnodes)
                  for m in self.static}
        tokens.update(self.gossiper.ring_tokens())
        for member, state in self.gossiper.endpoints.items():
            if state.tokens and state.status != Status.LEFT:
                if tuple(state.tokens) != tuple(node_tokens(member, self.vnodes)):
                    self.odd_tokens[member] = tuple(state.tokens)
                else:
                    self.odd_tokens.pop(member, None)
        for member in [m for m in self.odd_tokens if m in self.removed]:
            del self.odd_tokens[member]
        joining: dict[str, tuple[int, ...]] = {}
        leaving: set[str] = set()
        for member in self.removed:
            tokens.pop(member, None)
        for member, state in self.gossiper.endpoints.items():
            if state.status == Status.LEFT or self._is_removed(member, state):
                tokens.pop(member, None)
                if state.status == Status.LEFT and member != self.node_id:
                    # left (decommissioned or removed): back only as a fresh, joining node
                    self.removed.setdefault(member, state.generation)
            elif state.status == Status.JOINING:
                tokens.pop(member, None)
                if state.tokens:  # none yet: its claim is not recorded (ring_log.py)
                    joining[member] = state.tokens
            elif state.status == Status.LEAVING:
                leaving.add(member)
        key = (tuple(sorted((m, len(t), t[:1]) for m, t in tokens.items())),
               tuple(sorted(joining)), tuple(sorted(leaving)))
        if key != self._ring_key:
            self._ring_key = key
            ring = Ring.build(tokens)
            if self.ring.tokens and ring.tokens != self.ring.tokens and self._was_ready:
                self.previous_ring = self.ring
                self._previous_until = self.monotonic() + self.ring_delay
            self.ring = ring
            future = {m: t for m, t in {**tokens, **joining}.items() if m not in leaving}
            self.pending_ring = Ring.build(future) if joining or leaving else None
            log.info("ring now has %d members: %s%s", len(tokens), sorted(tokens),
                     f"; moving: {self.moving()}" if self.pending_ring else "")
            self._save()
            for callback in self.on_ring_change:
                callback()

    def _apply(self, changes) -> None:
        now = self.monotonic()
        self._check_stall(now)
        meta = False
        for change in changes:
            state = change.state
            if change.new or change.meta or change.restarted:
                meta = True
                self._members = None
                self.transport.set_address(state.node_id, state.address)
            if change.heartbeat:
                restarted = self.detector.heartbeat(state.node_id, now, state.generation)
                if restarted:
                    log.info("%s restarted (generation %d)", state.node_id, state.generation)
        if meta:
            self._rebuild()
        for node, up in self.detector.transitions(now):
            log.info("%s is now %s", node, "UP" if up else "DOWN")
            self.metrics["marked_up" if up else "marked_down"] += 1

    # -- protocol -----------------------------------------------------------------------
    def _seed_name(self, address: str) -> str:
        return SEED_PREFIX + address

    async def on_message(self, source: str, data: bytes) -> bytes:
        """Inbound SYN / ACK2: validate, apply, answer (ACK for a SYN)."""
        try:
            received = self.gossiper.receive(data, self.wall_clock())
        except GossipError as exc:
            self.metrics["rejected"] += 1
            log.warning("rejected a gossip message from %s: %s", source, exc)
            raise InvalidArgument(f"gossip message rejected: {exc}") from None
        self._apply(received.changes)
        return received.reply or b""

    async def _exchange(self, target: str) -> bool:
        if target.startswith(SEED_PREFIX):
            address = target[len(SEED_PREFIX):]
            known = [m for m, a in self.members.items() if a == address]
            if known:
                target = known[0]
            else:
                self.transport.set_address(target, address)
        message = pb.PeerMessage(gossip=self.gossiper.make_syn())
        try:
            result = await self.transport.call(target, message, self.timeout)
        except TransportError:
            self.metrics["unreachable"] += 1
            return False
        if result.HasField("error") or not result.raw:
            return False
        try:
            received = self.gossiper.receive(result.raw, self.wall_clock())
        except GossipError as exc:
            self.metrics["rejected"] += 1
            log.warning("rejected a gossip reply from %s: %s", target, exc)
            return False
        self._apply(received.changes)
        self.metrics["rounds"] += 1
        if received.reply:
            with contextlib.suppress(TransportError):
                await self.transport.call(target, pb.PeerMessage(gossip=received.reply),
                                          self.timeout)
        return True

    async def announce(self, only: set[str] | None = None) -> set[str]:
        """Exchange state with every known member now (not only this round's targets), so
        a status change reaches each of them directly; returns the members reached.
        `only`: just these members (those an earlier announcement missed)."""
        peers = sorted(m for m in self.members if m != self.node_id
                       and (only is None or m in only))
        results = await asyncio.gather(*(self._exchange(p) for p in peers))
        return {peer for peer, ok in zip(peers, results, strict=True) if ok}

    async def round(self) -> None:
        """One gossip round: beat, then exchange with this round's targets."""
        self.gossiper.beat()
        now = self.monotonic()
        down = [p for p in self.detector.peers() if not self.detector.is_up(p, now)]
        targets = self.gossiper.targets(self.rng, down)
        # until every seed is resolved, greet the unresolved ones every round
        targets += [self._seed_name(a) for a in sorted(self.unresolved_seeds())
                    if self._seed_name(a) not in targets]
        if self.interval >= self.timeout:
            await asyncio.gather(*(self._exchange(t) for t in targets))
        else:
            # Gossip faster than a call's timeout: a peer that does not answer (paused,
            # partitioned with timeouts) must not stretch our rounds, or our own heartbeat
            # slows down and healthy peers start suspecting *us*. Exchanges still running
            # after one interval go on in the background (one at a time per target).
            tasks = [self._start_exchange(t) for t in targets if t not in self._inflight]
            if tasks:
                await asyncio.wait(tasks, timeout=self.interval)
        self._apply([])  # let the detector report transitions even without news

    def _check_stall(self, now: float) -> None:
        """When gossiping fast (interval below the call timeout): if this node's next round
        is overdue by more than STALL_FORGIVE_AFTER seconds, the process was stalled
        (paused, starved), so forgive the peers that much before judging them."""
        due = self._round_due
        if due is None or self.interval >= self.timeout:
            return
        lag = now - due
        if lag > STALL_FORGIVE_AFTER:
            self.detector.forgive(lag, now)
            self.metrics["stalls_forgiven"] += 1
            log.warning("this node stalled for %.1f s (paused or starved): peers' silence "
                        "meanwhile is not held against them", lag)
            self._round_due = now

    def _start_exchange(self, target: str) -> asyncio.Task:
        task = asyncio.ensure_future(self._exchange(target))
        self._inflight[target] = task
        task.add_done_callback(lambda _t, target=target: self._inflight.pop(target, None))
        return task

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("gossip round failed")
            pause = self.interval * (0.9 + 0.2 * self.rng.random())
            self._round_due = self.monotonic() + pause
            await asyncio.sleep(pause)
            self._check_stall(self.monotonic())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._save()
