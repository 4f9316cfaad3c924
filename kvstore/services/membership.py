"""Static membership: the cluster is the seed list (gossip replaces this later).

Seeds are addresses (`host:port`) or `id=host:port`. A node learns the id behind each seed
address by a Hello exchange; every Hello also carries the sender's whole member map, so a
node restarting while another member is down still learns that member from the others.
What was learned is kept in the data directory, so a restart needs no one to be up.

The ring is derived from the member ids (tokens come from ids, see core/ring.py), so all
nodes that know the same members compute the same ring.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

from kvstore._proto import internode_pb2 as pb
from kvstore.core.ring import DEFAULT_VNODES, Ring
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)


def parse_seed(seed: str) -> tuple[str | None, str]:
    """`id=host:port` or `host:port` -> (id or None, address)."""
    seed = seed.strip()
    node_id, sep, address = seed.partition("=")
    if not sep:
        node_id, address = "", seed
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"seed {seed!r} is not host:port or id=host:port")
    return (node_id or None), address


class StaticMembership:
    def __init__(
        self,
        node_id: str,
        address: str,
        seeds: list[str],
        transport: Transport,
        *,
        vnodes: int = DEFAULT_VNODES,
        state_path: Path | None = None,
        hello_timeout: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.transport = transport
        self.vnodes = vnodes
        self.state_path = state_path
        self.hello_timeout = hello_timeout
        self.members: dict[str, str] = {node_id: address}
        self.seed_addresses: set[str] = set()
        for seed in seeds:
            seed_id, seed_address = parse_seed(seed)
            self.seed_addresses.add(seed_address)
            if seed_id:
                self.members[seed_id] = seed_address
        self._load()
        self.ring = Ring.of_nodes(self.members, vnodes)
        self.listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task | None = None
        for member, member_address in self.members.items():
            if member != node_id:
                transport.set_address(member, member_address)

    # -- state -----------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_path and self.state_path.exists():
            try:
                saved = json.loads(self.state_path.read_text())
                for member, address in saved.get("members", {}).items():
                    self.members.setdefault(str(member), str(address))
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable membership file %s: %s", self.state_path, exc)

    def _save(self) -> None:
        if not self.state_path:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"members": self.members}, indent=2, sort_keys=True))
        tmp.replace(self.state_path)

    def unresolved_seeds(self) -> set[str]:
        return self.seed_addresses - set(self.members.values())

    def is_up(self, node: str) -> bool:
        """Static membership has no failure detector: every member counts as up, and a
        dead one is found out by its timeouts (gossip's phi detector replaces this)."""
        return node in self.members

    def phi(self, node: str) -> float:
        return 0.0

    def status(self, node: str) -> str:
        return "NORMAL"

    @property
    def ready(self) -> bool:
        return not self.unresolved_seeds()

    def learn(self, members: dict[str, str]) -> bool:
        """Merge a member map; returns whether anything changed."""
        changed = False
        for member, address in members.items():
            if not member or not address:
                continue
            if self.members.get(member) != address:
                if member == self.node_id:
                    continue  # nobody else decides where we listen
                self.members[member] = address
                self.transport.set_address(member, address)
                changed = True
        if changed:
            self.ring = Ring.of_nodes(self.members, self.vnodes)
            self._save()
            log.info("membership now %s", sorted(self.members))
            for listener in self.listeners:
                listener()
        return changed

    # -- protocol --------------------------------------------------------------------
    def hello(self) -> pb.Hello:
        return pb.Hello(node_id=self.node_id, address=self.address, members=self.members)

    def on_hello(self, msg: pb.Hello) -> pb.Hello:
        incoming = dict(msg.members)
        if msg.node_id and msg.address:
            incoming[msg.node_id] = msg.address
        self.learn(incoming)
        return self.hello()

    async def _greet(self, address: str) -> None:
        peer = f"seed@{address}"
        self.transport.set_address(peer, address)
        try:
            message = pb.PeerMessage(hello=self.hello())
            result = await self.transport.call(peer, message, self.hello_timeout)
        except TransportError:
            return
        if result.HasField("hello"):
            self.on_hello(result.hello)

    async def _run(self) -> None:
        while True:
            targets = self.unresolved_seeds() or (self.seed_addresses - {self.address})
            await asyncio.gather(*(self._greet(a) for a in sorted(targets)))
            await asyncio.sleep(0.2 if not self.ready else 5.0)

    def start(self) -> None:
        self._save()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
