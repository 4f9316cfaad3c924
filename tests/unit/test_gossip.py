"""Gossip core: the three-way exchange, versions, restarts, targets, ring tokens."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvstore._proto import gossip_pb2 as pb
from kvstore.core.gossip import (
    Change,
    Gossiper,
    Status,
    choose_targets,
    ring_tokens,
)
from kvstore.core.ring import Ring, node_tokens

NOW = 1_700_000_000.0


def node(name: str, gen: int = 1_600_000_000, *, status: Status = Status.NORMAL, **kw) -> Gossiper:
    tokens = node_tokens(name, 8) if status != Status.JOINING else ()
    port = 7000 + sum(map(ord, name)) % 1000
    return Gossiper(name, f"127.0.0.1:{port}", gen, tokens=tokens, status=status, **kw)


def exchange(a: Gossiper, b: Gossiper, now: float = NOW) -> tuple[list[Change], list[Change]]:
    """One full round a -> b; the changes each side saw."""
    ack = b.receive(a.make_syn(), now)
    assert ack.kind == "syn" and ack.sender == a.node_id and ack.changes == []
    ack2 = a.receive(ack.reply, now)
    assert ack2.kind == "ack" and ack2.sender == b.node_id
    if ack2.reply is None:  # b asked for nothing
        return ack2.changes, []
    done = b.receive(ack2.reply, now)
    assert done.kind == "ack2" and done.reply is None
    return ack2.changes, done.changes


def decode(data: bytes) -> pb.GossipMessage:
    msg = pb.GossipMessage()
    msg.ParseFromString(data)
    return msg


def test_two_nodes_learn_each_other_in_one_round() -> None:
    a, b = node("a"), node("b")
    seen_by_a, seen_by_b = exchange(a, b)
    assert [c.node_id for c in seen_by_a] == ["b"] and seen_by_a[0].new
    assert [c.node_id for c in seen_by_b] == ["a"] and seen_by_b[0].heartbeat
    assert dict(a.endpoints) == dict(b.endpoints)
    assert a.ring_tokens() == {"a": a.local.tokens, "b": b.local.tokens}


def test_ack_pushes_members_the_initiator_never_heard_of() -> None:
    a, b, c = node("a"), node("b"), node("c")
    exchange(c, b)
    seen_by_a, _ = exchange(a, b)  # a's SYN names only a; b's ACK carries b and c whole
    assert sorted(ch.node_id for ch in seen_by_a) == ["b", "c"]
    assert a.endpoints["c"] == c.local


def test_only_newer_state_travels() -> None:
    a, b = node("a"), node("b")
    exchange(a, b)
    a.beat()
    ack = decode(a.receive(b.make_syn(), NOW).reply).ack
    assert len(ack.states) == 1
    st = ack.states[0]
    assert st.node_id == "a" and st.heartbeat == a.local.heartbeat
    assert not st.HasField("meta") and not st.HasField("load")  # tokens are not resent
    exchange(b, a)
    a.update(load=12345)
    ack = decode(a.receive(b.make_syn(), NOW).reply).ack
    assert ack.states[0].HasField("load") and not ack.states[0].HasField("meta")
    _, changes = exchange(b, a)
    assert changes == [] and b.endpoints["a"] == a.local  # ack2 only had nothing new for a
    # b initiates: b's digest of a is current, so nothing flows at all.
    ack = decode(a.receive(b.make_syn(), NOW).reply).ack
    assert list(ack.states) == [] and list(ack.requests) == []


def test_receiver_requests_what_it_lacks_and_ack2_delivers_it() -> None:
    a, b = node("a"), node("b")
    exchange(a, b)
    a.update(status=Status.LEAVING)
    a.beat()
    ack = decode(b.receive(a.make_syn(), NOW).reply).ack
    assert [(r.node_id, r.max_version) for r in ack.requests] == [("a", 1)]
    seen_by_a, seen_by_b = exchange(a, b)
    assert seen_by_a == []
    (change,) = seen_by_b
    assert change.meta and change.heartbeat and not change.load
    assert b.endpoints["a"].status == Status.LEAVING


def test_restart_with_higher_generation_replaces_state() -> None:
    a, b = node("a", gen=100), node("b")
    exchange(a, b)
    for _ in range(5):
        a.beat()
    exchange(a, b)
    assert b.endpoints["a"].heartbeat == 6
    a2 = node("a", gen=101, status=Status.JOINING)
    _, seen_by_b = exchange(a2, b)
    (change,) = seen_by_b
    assert change.restarted and not change.new and change.previous.generation == 100
    assert b.endpoints["a"].generation == 101 and b.endpoints["a"].heartbeat == 1
    assert b.endpoints["a"].status == Status.JOINING
    assert "a" not in b.ring_tokens()
    # A stale peer still gossiping the old life changes nothing.
    stale = node("c")
    exchange(a, stale)  # stale learns a's old generation 100
    before = dict(b.endpoints)
    exchange(stale, b)
    assert b.endpoints["a"] == before["a"]


def test_restarted_node_learns_old_cluster_state_but_never_its_old_self() -> None:
    a, b = node("a", gen=100), node("b")
    exchange(a, b)
    a2 = node("a", gen=101)
    exchange(a2, b)
    assert a2.local.generation == 101 and b.endpoints["a"].generation == 101
    assert a2.endpoints["b"] == b.local


def test_claims_about_the_receiver_itself_are_ignored() -> None:
    a = node("a", gen=100)
    impostor = node("a", gen=200)
    b = node("b")
    exchange(impostor, b)
    assert b.endpoints["a"].generation == 200
    before = a.local
    changes, _ = exchange(a, b)
    assert a.local == before
    assert all(c.node_id != "a" for c in changes)


def test_update_bumps_versions_and_validates() -> None:
    g = node("a")
    v = g.local.max_version
    g.update(tokens=[3, 1, 2])
    assert g.local.tokens == (1, 2, 3) and g.local.meta_version == v + 1
    g.update(tokens=[3, 2, 1])  # same set: no new version
    assert g.local.meta_version == v + 1
    g.update(load=5)
    assert g.local.load_version == v + 2
    g.beat()
    assert g.local.heartbeat == v + 3 == g.local.max_version
    with pytest.raises(ValueError, match="tokens"):
        g.update(tokens=range(5000))
    with pytest.raises(ValueError, match="no tokens"):
        g.update(tokens=[])
    with pytest.raises(ValueError, match="host:port"):
        g.update(address="nowhere")
    with pytest.raises(ValueError):
        g.update(load=-1)
    with pytest.raises(ValueError):
        Gossiper("bad id", "h:1", 1)
    assert g.local.tokens == (1, 2, 3)


def test_forget_drops_a_member_until_it_shows_a_newer_generation() -> None:
    a, b, c = node("a"), node("b"), node("c", gen=100)
    exchange(c, b)
    exchange(a, b)
    assert a.forget("c") and not a.forget("c") and not a.forget("a")
    exchange(a, b)
    assert "c" not in a.endpoints  # b still gossips c's old life: ignored
    c2 = node("c", gen=101)
    exchange(c2, b)
    exchange(a, b)
    assert a.endpoints["c"].generation == 101


def test_ring_tokens_keep_normal_and_leaving_only() -> None:
    states = [
        node("j", status=Status.JOINING).local,
        node("n").local,
        node("l", status=Status.LEAVING).local,
    ]
    left = node("x")
    left.update(status=Status.LEFT)
    states.append(left.local)
    tokens = ring_tokens(states)
    assert sorted(tokens) == ["l", "n"]
    ring = Ring.build(tokens)
    assert ring.nodes == {"l", "n"}
    assert len(ring.tokens) == 16


def test_choose_targets_rules() -> None:
    rng = random.Random(7)
    # Nothing live: always a seed (and sometimes the dead one).
    for _ in range(50):
        out = choose_targets(rng, [], ["d"], ["s1", "s2"])
        assert any(t in {"s1", "s2"} for t in out)
    # Alone with no seeds and nobody: nothing to do.
    assert choose_targets(rng, [], [], []) == []
    # Unreachable chosen with probability unreachable / (live + 1) = 2/5.
    live = ["a", "b", "c", "d"]
    hits = Counter()
    n = 4000
    for _ in range(n):
        for t in choose_targets(rng, live, ["x", "y"], []):
            hits[t] += 1
    assert abs((hits["x"] + hits["y"]) / n - 2 / 5) < 0.03
    assert abs(hits["a"] / n - 1 / 4) < 0.03
    # A seed is added with probability seeds / (live + unreachable) = 1/6 when the live
    # pick was not a seed.
    hits = Counter()
    for _ in range(n):
        out = choose_targets(rng, ["a", "b", "c", "d", "e"], ["x"], ["s"])
        hits["s"] += "s" in out
    assert abs(hits["s"] / n - 1 / 6) < 0.03


def test_targets_skip_self_and_left_members_and_split_by_detector() -> None:
    a = node("a", seeds=["a", "b"])
    assert a.seeds == {"b"}
    for name in ("b", "c", "d"):
        exchange(node(name), a)
    gone = node("e")
    gone.update(status=Status.LEFT)
    exchange(gone, a)
    rng = random.Random(3)
    picked = Counter()
    for _ in range(500):
        out = a.targets(rng, down={"d"})
        assert "a" not in out and "e" not in out
        picked.update(out)
    assert set(picked) == {"b", "c", "d"}
    assert picked["d"] < picked["c"]


def test_no_ack2_when_nothing_was_requested() -> None:
    a, b = node("a"), node("b")
    exchange(a, b)
    b.beat()
    out = a.receive(b.receive(a.make_syn(), NOW).reply, NOW)
    assert out.reply is None and [c.node_id for c in out.changes] == ["b"]
    a.beat()
    out = a.receive(b.receive(a.make_syn(), NOW).reply, NOW)
    assert out.reply is not None and decode(out.reply).ack2.states[0].node_id == "a"


def test_speak_for_a_down_member_reaches_peers_and_wins_over_its_last_word() -> None:
    a, b, c = node("a"), node("b"), node("c")
    exchange(a, c)
    exchange(b, c)
    exchange(a, b)
    for _ in range(3):
        c.beat()
    exchange(c, a)
    exchange(c, b)
    # c is gone; a removes it on its behalf, and b hears it from a
    state = a.speak_for("c", Status.LEFT)
    assert state.status == Status.LEFT and state.meta_version > b.endpoints["c"].max_version
    exchange(a, b)
    assert b.endpoints["c"].status == Status.LEFT
    assert "c" not in b.ring_tokens()
    with pytest.raises(ValueError):
        a.speak_for("a", Status.LEFT)
    with pytest.raises(ValueError):
        a.speak_for("nobody", Status.LEFT)
