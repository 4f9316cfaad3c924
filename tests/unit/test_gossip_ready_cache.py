"""`GossipMembership.ready` is cached per membership change; its time bound still holds."""

from __future__ import annotations

import random

from kvstore.services.gossip import GossipMembership
from kvstore.transport.memory import MemoryNetwork


def test_ready_follows_the_ready_after_bound_and_membership_changes_through_the_cache():
    now = [0.0]
    network = MemoryNetwork(0)
    m = GossipMembership(
        "n1", "n1:1", ["n1=n1:1", "n2=n2:1"], network.transport("n1", "n1:1"),
        wall_clock=lambda: 1000.0, monotonic=lambda: now[0], rng=random.Random(0),
        vnodes=8, ready_after=5.0)
    # n2 is known from its seed but not heard from: not ready until ready_after has passed
    assert not m.ready and m.unresolved_seeds() == {"n2:1"}
    now[0] = 4.9
    assert not m.ready and m.unresolved_seeds() == {"n2:1"}
    now[0] = 5.0
    assert m.ready and m.unresolved_seeds() == set()
    # the answer is a copy: a caller changing it does not change the cache
    m.unresolved_seeds().add("x:1")
    assert m.ready
    # a membership change (n2 no longer a member: the reset every change path does) is
    # seen at once, not at the next time bound
    m.static.pop("n2")
    m._members = None
    assert not m.ready and m.unresolved_seeds() == {"n2:1"}
