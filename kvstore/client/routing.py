"""Token-aware routing: send each key's request to a node that replicates the key.

A write is minted at a replica of its key (docs/architecture.md, "Writes are minted at a
replica"): a coordinator that is not one forwards the request to one, which costs a
network hop and a second node's CPU. The client avoids that hop by computing the key's
preference list itself, with the ring the nodes use (core/ring.py: tokens derived from
node ids, mmh3 of the key), and sending the request to the first replica it has an
endpoint for. Reads gain too: a replica coordinating a read answers its own copy locally.

The ring comes from one node's `Info` (the call behind `kv ring`): its members, their
gossiped addresses, vnodes and N. Only members on the ring (NORMAL, LEAVING) own
ranges, as on the nodes. A member whose tokens are not derived from its own id (a node
that replaced another takes that one's tokens) would make the rebuilt ring differ from
the node's; the node reports each member's primary ownership, so a view whose ownership
differs from the reported one is not used at all (the client then sends requests in its
usual order).

**A stale or wrong ring is never a correctness problem**: a node asked to coordinate a
write it does not replicate forwards it to a replica, exactly as it does for a client
without routing. Routing only decides which node is asked first; the reply says when the
node forwarded (`ClientReply.forwarded`), and the client takes that as a sign to refresh
its ring.

Endpoints are matched to members by node id: the client asks each of its endpoints for
its `Info`, which names the node that answered, so a node reached under another name than
it gossips (a separate peer listener, `--peer-listen`, as in the secure profile; a docker
port mapping) is still recognised. A member no endpoint answered for is matched by the
address it gossips, exactly as written. Routing never adds endpoints the client was not
given; an endpoint behind a load balancer (a different node each call) must not be used
with routing (`route=False`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from kvstore._proto import admin_pb2
from kvstore.core.gossip import RING_STATUSES
from kvstore.core.ring import Ring, node_tokens

ON_RING = frozenset(s.name for s in RING_STATUSES)
OWNERSHIP_TOLERANCE = 1e-4  # the node rounds the shares it reports to 6 digits


@dataclass(frozen=True)
class RingView:
    """The ring as a client rebuilt it from one node's Info."""

    ring: Ring
    replication_factor: int
    addresses: dict[str, str]  # node id -> the endpoint that reaches it
    source: str = ""  # the node whose view it is

    @classmethod
    def from_info(cls, info: admin_pb2.NodeInfo,
                  identified: Mapping[str, str] | None = None) -> RingView | None:
        """The view a node reports, or None when it cannot be used for routing: no member
        on the ring, or a rebuilt ring whose ownership differs from what the node reports
        (tokens not derived from the member's id, or a different hash). `identified`:
        node id -> the client's endpoint that answered as that node; other members are
        reached at the address they gossip."""
        identified = identified or {}
        on_ring = {m.id: m for m in info.members if m.status in ON_RING}
        if not on_ring or not info.vnodes or not info.replication_factor:
            return None
        ring = Ring.build({m: node_tokens(m, info.vnodes) for m in on_ring})
        shares = ring.ownership()
        if any(abs(shares[m] - member.ownership) > OWNERSHIP_TOLERANCE
               for m, member in on_ring.items()):
            return None
        return cls(ring, info.replication_factor,
                   {m: identified.get(m, member.address) for m, member in on_ring.items()},
                   info.node_id)

    def replicas(self, key: bytes) -> list[str]:
        """The addresses of the key's replicas, in preference-list order."""
        return [self.addresses[node]
                for node in self.ring.preference_list(key, self.replication_factor)]


def route(view: RingView | None, key: bytes, order: Sequence[str],
          down: Collection[str] = ()) -> tuple[list[str], int]:
    """The endpoints to try for `key`, best first, and how many of them lead as replicas.

    `order`: the client's endpoints in its usual order (round-robin, reachable first);
    `down`: those that recently refused a connection. The key's replicas that are among
    `order` and not down come first, in preference-list order; then every other endpoint
    in `order` (so a request still fails over to any node, which forwards a write when it
    is not a replica). Without a view, or with no reachable replica among the endpoints,
    `order` comes back unchanged, with 0 replicas leading.
    """
    if view is None:
        return list(order), 0
    given = set(order)
    first = [a for a in view.replicas(key) if a in given and a not in down]
    if not first:
        return list(order), 0
    chosen = set(first)
    return first + [a for a in order if a not in chosen], len(first)
