"""The gossip side of ring changes agreed through Raft (services/gossip.py): a joining
node without tokens is on no ring until it claims them, and members the Raft group
records as LEFT stay off the ring whatever gossip says."""

from __future__ import annotations

import random

from kvstore.core.gossip import Gossiper, Status
from kvstore.core.ring import node_tokens
from kvstore.services.gossip import GossipMembership
from kvstore.transport.memory import MemoryNetwork


def membership(node_id: str, seeds: list[str], **kw) -> GossipMembership:
    network = MemoryNetwork(0)
    return GossipMembership(
        node_id, f"{node_id}:1", seeds, network.transport(node_id, f"{node_id}:1"),
        wall_clock=lambda: 1000.0, monotonic=lambda: 0.0, rng=random.Random(0), vnodes=8,
        **kw)


def hear(m: GossipMembership, other: Gossiper) -> None:
    """`m` learns everything `other` knows (one SYN/ACK round, `m` initiating)."""
    received = other.receive(m.gossiper.make_syn(), 1000.0)
    m._apply(m.gossiper.receive(received.reply, 1000.0).changes)


def test_a_joining_node_without_tokens_is_on_no_ring_until_it_claims_them():
    joiner = membership("n4", ["n1=n1:1"], status=Status.JOINING, tokens=[])
    assert joiner.pending_ring is None and "n4" not in joiner.ring.nodes
    n1 = Gossiper("n1", "n1:1", 900, tokens=node_tokens("n1", 8), status=Status.NORMAL)
    hear(joiner, n1)
    assert joiner.pending_ring is None  # n4's JOINING without tokens moves nothing
    joiner.set_tokens(node_tokens("n4", 8))
    assert joiner.pending_ring is not None and "n4" in joiner.pending_ring.nodes
    assert "n4" not in joiner.ring.nodes  # JOINING: pending only


def test_members_recorded_left_are_kept_off_the_ring():
    m = membership("n1", ["n1=n1:1", "n2=n2:1", "n3=n3:1"])
    assert m.ring.nodes == {"n1", "n2", "n3"}
    assert m.trust_committed_left({"n2": 7, "n1": 8, "n9": 9}) == ["n2"]
    assert m.ring.nodes == {"n1", "n3"} and "n2" not in m.members
    assert m.trust_committed_left({"n2": 7}) == []  # once
    # a member gossiping JOINING (a fresh join, recorded anew) is left alone
    n3 = Gossiper("n3", "n3:1", 950, tokens=node_tokens("n3", 8), status=Status.JOINING)
    hear(m, n3)
    assert m.trust_committed_left({"n3": 10}) == []
