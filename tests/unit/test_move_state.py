"""What a node's move.json makes of its next start: a decommission that did not finish is
resumed LEAVING; one that finished refuses to start with the same data."""

from __future__ import annotations

import json

import pytest

from kvstore.services.streaming import MoveRefused, RangeStreamer
from kvstore.storage.durable import StateFileError, write_atomic


def streamer(path) -> RangeStreamer:
    return RangeStreamer("n2", None, None, None, None, None, replication_factor=3,
                         ring_delay=0.0, rate_bytes_per_s=1, timeout=1.0, state_path=path)


def test_an_unfinished_decommission_is_resumed_with_the_ranges_it_pushed(tmp_path):
    path = tmp_path / "move.json"
    write_atomic(path, json.dumps({"kind": "decommission", "state": "leaving",
                                   "done": [[1, 5], [9, 12]]}).encode())
    assert RangeStreamer.was_leaving(path)
    s = streamer(path)
    assert s.load() == {"kind": "decommission", "state": "leaving"}
    assert s._done_ranges == {(1, 5), (9, 12)}


@pytest.mark.parametrize("state", ["left", "done"])
def test_a_node_that_left_refuses_to_start_with_its_data(tmp_path, state):
    path = tmp_path / "move.json"
    write_atomic(path, json.dumps({"kind": "decommission", "state": state}).encode())
    assert not RangeStreamer.was_leaving(path)
    with pytest.raises(MoveRefused, match="was decommissioned"):
        streamer(path).load()


def test_a_damaged_move_file_is_reported_not_ignored(tmp_path):
    path = tmp_path / "move.json"
    write_atomic(path, b'{"kind": "decommission"}')
    assert not RangeStreamer.was_leaving(path)
    with pytest.raises(StateFileError, match="damaged"):
        streamer(path).load()


def test_no_move_file_is_a_plain_start(tmp_path):
    assert not RangeStreamer.was_leaving(tmp_path / "move.json")
    assert streamer(tmp_path / "move.json").load() == {}


def test_replace_settings_are_checked():
    from kvstore.node.config import NodeConfig

    with pytest.raises(ValueError, match="--replace needs --join"):
        NodeConfig(node_id="n6", listen="127.0.0.1:1", replace="n3").validate()
    with pytest.raises(ValueError, match="cannot replace itself"):
        NodeConfig(node_id="n6", listen="127.0.0.1:1", join=True, replace="n6").validate()


def test_a_replacement_remembers_whom_it_replaced(tmp_path):
    """A restart keeps the dead node's tokens without --replace, and refuses another one."""
    from kvstore.node.config import NodeConfig
    from kvstore.node.node import Node
    from kvstore.transport.memory import MemoryNetwork

    write_atomic(tmp_path / "move.json", json.dumps(
        {"kind": "replace", "state": "done", "done": [], "replaces": "n3"}).encode())

    def node(replace: str) -> Node:
        config = NodeConfig(node_id="n6", listen="n6:1", seeds=["n1=n1:1"], join=True,
                            replace=replace)
        return Node(config, MemoryNetwork(0).transport("n6", "n6:1"), None,
                    move_file=tmp_path / "move.json")

    assert node("").replaces == "n3" and node("n3").replaces == "n3"
    with pytest.raises(MoveRefused, match="took the place of n3"):
        node("n4")


def test_a_join_that_failed_before_streaming_joins_again_on_restart(tmp_path):
    """The join is recorded before the node claims anything, so a restart after an early
    failure (a claim the Raft group refused) joins again instead of starting NORMAL."""
    import asyncio

    from kvstore.node.config import NodeConfig
    from kvstore.node.node import Node
    from kvstore.transport.memory import MemoryNetwork

    config = NodeConfig(node_id="n6", listen="n6:1", seeds=["n1=n1:1"], join=True,
                        data_dir=tmp_path)

    def node() -> Node:
        return Node(config, MemoryNetwork(0).transport("n6", "n6:1"), None, inline_io=True)

    first = node()
    assert first.joining

    async def start_join() -> None:  # the seed never answers: the join waits at its start
        first.streamer.start_join()
        await asyncio.sleep(0.05)
        await first.streamer.stop()

    asyncio.run(start_join())
    assert RangeStreamer.peek(tmp_path / "move.json")["state"] == "claiming"
    assert (tmp_path / "members.json").exists()  # an earlier life, yet:
    assert node().joining


def test_a_replacement_that_is_decommissioned_keeps_the_tokens_it_took(tmp_path):
    """move.json keeps whom a replacement replaced when a later decommission rewrites it:
    a crash while LEAVING brings it back with the tokens it owns, not its id's."""
    from kvstore.core.ring import node_tokens
    from kvstore.node.config import NodeConfig
    from kvstore.node.node import Node
    from kvstore.transport.memory import MemoryNetwork

    path = tmp_path / "move.json"
    write_atomic(path, json.dumps(
        {"kind": "replace", "state": "done", "done": [], "replaces": "n3"}).encode())
    s = streamer(path)
    s.load()
    s._save("decommission", "leaving", force=True)
    assert RangeStreamer.peek(path) == {"kind": "decommission", "state": "leaving",
                                        "done": [], "replaces": "n3"}
    config = NodeConfig(node_id="n6", listen="n6:1", seeds=["n1=n1:1"], vnodes=8)
    node = Node(config, MemoryNetwork(0).transport("n6", "n6:1"), None, move_file=path)
    assert node.leaving and node.replaces == "n3"
    assert node.membership.gossiper.local.tokens == tuple(node_tokens("n3", 8))
    assert node.membership.status("n6") == "LEAVING"


def test_a_new_decommission_does_not_skip_ranges_an_earlier_join_pulled(tmp_path):
    """The ranges a join recorded done are the ones it pulled in; a replacement gives away
    exactly those when it is decommissioned later, so they must not count as pushed
    (the membership simulation lost writes this way: seed 45 of KV_MOVE_SEEDS=48)."""
    import asyncio
    import random

    from kvstore.services.gossip import GossipMembership
    from kvstore.transport.memory import MemoryNetwork

    path = tmp_path / "move.json"
    write_atomic(path, json.dumps({"kind": "replace", "state": "done", "done": [[1, 5]],
                                   "replaces": "n3"}).encode())
    transport = MemoryNetwork(0).transport("n2", "n2:1")
    membership = GossipMembership("n2", "n2:1", [], transport, wall_clock=lambda: 1000.0,
                                  monotonic=lambda: 0.0, rng=random.Random(0), vnodes=8)
    s = RangeStreamer("n2", None, transport, membership, None, None, replication_factor=3,
                      ring_delay=0.0, rate_bytes_per_s=1, timeout=1.0, state_path=path)
    s.load()
    assert s._done_ranges == {(1, 5)}

    async def decommission() -> None:
        s.start_decommission()
        assert s._done_ranges == set()
        await s.stop()

    asyncio.run(decommission())
