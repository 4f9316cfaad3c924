"""Property and fuzz tests of the gossip core.

* Random bytes never raise anything but GossipError, and a refused message changes nothing.
* Well-typed messages with arbitrary (often hostile) field values either are refused
  whole, or leave the state valid; local state is never touched by remote messages.
* A valid message with one injected violation is always refused and changes nothing.
* Random schedules of beats, updates, restarts and exchanges: every view only ever moves
  forward (generation, then version), and a final full sync makes all views equal.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvstore._proto import gossip_pb2 as pb
from kvstore.core.gossip import RING_STATUSES, Gossiper, GossipError, Limits, Status
from kvstore.core.ring import node_tokens

NOW = 1_700_000_000.0
GEN = 1_600_000_000
FAST = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def receiver() -> Gossiper:
    g = Gossiper("r", "10.0.0.1:7000", GEN, tokens=node_tokens("r", 4), status=Status.NORMAL)
    peer = Gossiper("p", "10.0.0.2:7000", GEN, tokens=node_tokens("p", 4), status=Status.NORMAL)
    g.receive(peer.receive(g.make_syn(), NOW).reply, NOW)
    return g


def snapshot(g: Gossiper) -> dict:
    return dict(g.endpoints)


def assert_valid(g: Gossiper, now: float = NOW) -> None:
    lim = g.limits
    for node_id, s in g.endpoints.items():
        assert s.node_id == node_id and node_id and len(node_id) <= lim.max_id_chars
        assert 1 <= s.generation <= now + lim.max_generation_ahead_s
        assert 0 <= s.heartbeat <= lim.max_version
        assert 0 <= s.meta_version <= lim.max_version
        assert 0 <= s.load_version <= lim.max_version
        assert 0 <= s.load <= lim.max_load
        assert isinstance(s.status, Status)
        assert len(s.tokens) <= lim.max_tokens and len(set(s.tokens)) == len(s.tokens)
        assert list(s.tokens) == sorted(s.tokens)
        assert s.status not in RING_STATUSES or s.tokens


# -- random bytes -------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_nor_change_state(data: bytes) -> None:
    g = receiver()
    before = snapshot(g)
    try:
        g.receive(data, NOW)
    except GossipError:
        assert snapshot(g) == before
    assert_valid(g)


@FAST
@given(st.binary(max_size=64), st.integers(0, 200), st.data())
def test_mutated_valid_messages_never_crash(junk: bytes, pos: int, data: st.DataObject) -> None:
    g = receiver()
    sender = Gossiper("s", "10.0.0.3:7000", GEN, tokens=[1, 2], status=Status.NORMAL)
    base = bytearray(sender.receive(g.make_syn(), NOW).reply)  # a real ACK
    op = data.draw(st.sampled_from(["insert", "overwrite", "truncate", "flip"]))
    pos = pos % (len(base) + 1)
    if op == "insert":
        base[pos:pos] = junk
    elif op == "overwrite":
        base[pos : pos + len(junk)] = junk
    elif op == "truncate":
        del base[pos:]
    elif base:
        base[pos % len(base)] ^= 1 << data.draw(st.integers(0, 7))
    before = snapshot(g)
    local = g.local
    try:
        g.receive(bytes(base), NOW)
    except GossipError:
        assert snapshot(g) == before
    assert g.local == local
    assert_valid(g)


# -- well-typed, arbitrary values -----------------------------------------------------------

# Each strategy mixes plausible values (so whole messages are sometimes valid and applied)
# with hostile ones (negative, overflowing, out-of-range, unprintable).
int64 = st.one_of(
    st.integers(0, 50),
    st.integers(GEN - 5, GEN + 5),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-1, int(NOW) + 86_400, int(NOW) + 86_401, 2**62, 2**62 + 1]),
)
ids = st.one_of(
    st.sampled_from(["r", "p", "x", "y", "z"]),
    st.sampled_from(["", " ", "a b", "\x00"]),
    st.text(max_size=140),
)
addresses = st.one_of(
    st.integers(1, 65535).map(lambda p: f"10.0.0.5:{p}"),
    st.sampled_from(["h:0", "h:65536", ":1", "h:", "h:1x", "h:\u0661"]),
    st.text(max_size=20),
)
statuses = st.one_of(st.integers(1, 4), st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))
token_lists = st.one_of(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20, unique=True),
    st.lists(st.integers(-5, 5), max_size=20),
    st.integers(4090, 4100).map(lambda n: list(range(n))),
)


@st.composite
def valid_endpoints(draw: st.DrawFn, node_id: str) -> pb.GossipEndpoint:
    e = pb.GossipEndpoint(
        node_id=node_id,
        generation=draw(st.integers(1, int(NOW))),
        heartbeat=draw(st.integers(0, 10**9)),
    )
    e.meta.version = draw(st.integers(1, 10**9))
    e.meta.address = f"10.1.0.{draw(st.integers(0, 255))}:{draw(st.integers(1, 65535))}"
    e.meta.status = draw(st.sampled_from([1, 2, 3, 4]))
    e.meta.tokens.extend(
        draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30, unique=True))
    )
    e.load.version = draw(st.integers(1, 10**9))
    e.load.load = draw(st.integers(0, 2**40))
    return e


@st.composite
def endpoints(draw: st.DrawFn) -> pb.GossipEndpoint:
    """A plausible endpoint state with 0-3 of its fields replaced by arbitrary values."""
    e = draw(valid_endpoints(draw(st.sampled_from(["x", "y", "z", "p", "r"]))))
    if draw(st.booleans()):
        e.ClearField("load")
    if draw(st.integers(0, 4)) == 0:
        e.ClearField("meta")
    fields = {
        "node_id": lambda: setattr(e, "node_id", draw(ids)),
        "generation": lambda: setattr(e, "generation", draw(int64)),
        "heartbeat": lambda: setattr(e, "heartbeat", draw(int64)),
        "meta.version": lambda: setattr(e.meta, "version", draw(int64)),
        "meta.address": lambda: setattr(e.meta, "address", draw(addresses)),
        "meta.status": lambda: setattr(e.meta, "status", draw(statuses)),
        "meta.tokens": lambda: e.meta.tokens.extend(draw(token_lists)),
        "load.version": lambda: setattr(e.load, "version", draw(int64)),
        "load.load": lambda: setattr(e.load, "load", draw(int64)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        fields[name]()
    return e


digests = st.builds(pb.GossipDigest, node_id=ids, generation=int64, max_version=int64)


@st.composite
def messages(draw: st.DrawFn) -> pb.GossipMessage:
    kind = draw(st.sampled_from(["syn", "ack", "ack2"]))
    sender = "p" if draw(st.integers(0, 3)) else draw(ids)
    if kind == "syn":
        cluster = draw(st.sampled_from(["kvstore", "kvstore", "other", ""]))
        found = draw(st.lists(digests, max_size=5))
        return pb.GossipMessage(syn=pb.GossipSyn(sender=sender, cluster=cluster, digests=found))
    states = draw(st.lists(endpoints(), max_size=4))
    if kind == "ack":
        reqs = draw(st.lists(digests, max_size=4))
        return pb.GossipMessage(ack=pb.GossipAck(sender=sender, states=states, requests=reqs))
    return pb.GossipMessage(ack2=pb.GossipAck2(sender=sender, states=states))


@FAST
@given(messages())
def test_arbitrary_typed_messages_leave_a_valid_state(msg: pb.GossipMessage) -> None:
    g = receiver()
    before = snapshot(g)
    local = g.local
    try:
        out = g.receive(msg.SerializeToString(), NOW)
    except GossipError:
        assert snapshot(g) == before
        event("refused")
    else:
        event(f"accepted {out.kind}, {len(out.changes)} changes")
        if out.reply is not None:  # what we send back is itself acceptable to a peer
            peer = Gossiper("q", "10.0.0.4:7000", GEN)
            try:
                peer.receive(out.reply, NOW)
            except GossipError as exc:
                assert "cluster" in str(exc) or "no SYN" in str(exc), exc
    assert g.local == local
    assert_valid(g)


# -- valid message plus exactly one violation ---------------------------------------------

VIOLATIONS = {
    "generation_negative": lambda e: setattr(e, "generation", -1),
    "generation_future": lambda e: setattr(e, "generation", int(NOW) + 86_401),
    "heartbeat_negative": lambda e: setattr(e, "heartbeat", -3),
    "heartbeat_overflow": lambda e: setattr(e, "heartbeat", 2**62 + 1),
    "status_unknown": lambda e: setattr(e.meta, "status", 17),
    "tokens_absurd": lambda e: e.meta.tokens.extend(range(10_000, 14_100)),
    "tokens_duplicate": lambda e: e.meta.tokens.append(e.meta.tokens[0]),
    "address_bad": lambda e: setattr(e.meta, "address", "nowhere"),
    "load_negative": lambda e: setattr(e.load, "load", -1),
    "id_empty": lambda e: setattr(e, "node_id", ""),
    "id_space": lambda e: setattr(e, "node_id", "a b"),
}


@FAST
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True),
    st.sampled_from(sorted(VIOLATIONS)),
    st.data(),
)
def test_one_violation_rejects_the_whole_message(
    names: list[str], violation: str, data: st.DataObject
) -> None:
    states = [data.draw(valid_endpoints(n)) for n in names]
    victim = data.draw(st.integers(0, len(states) - 1))
    VIOLATIONS[violation](states[victim])
    kind = data.draw(st.sampled_from(["ack", "ack2"]))
    if kind == "ack":
        msg = pb.GossipMessage(ack=pb.GossipAck(sender="p", states=states))
    else:
        msg = pb.GossipMessage(ack2=pb.GossipAck2(sender="p", states=states))
    g = receiver()
    before = snapshot(g)
    try:
        g.receive(msg.SerializeToString(), NOW)
    except GossipError:
        pass
    else:
        raise AssertionError(f"{violation} was accepted")
    assert snapshot(g) == before


# -- schedules ----------------------------------------------------------------------------


def _full_sync(nodes: list[Gossiper], now: float) -> None:
    for _ in range(2):
        for a in nodes:
            for b in nodes:
                if a is not b:
                    b_ack = b.receive(a.make_syn(), now)
                    ack2 = a.receive(b_ack.reply, now)
                    if ack2.reply is not None:
                        b.receive(ack2.reply, now)


@settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["beat", "update", "restart", "exchange", "lossy"]),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(0, 2**16),
        ),
        max_size=60,
    )
)
def test_views_only_move_forward_and_converge(
    steps: list[tuple[str, int, int, int]],
) -> None:
    names = ["a", "b", "c", "d"]
    gens = dict.fromkeys(names, GEN)

    def make(n: str) -> Gossiper:
        return Gossiper(
            n, f"10.0.0.{names.index(n) + 1}:7000", gens[n], tokens=node_tokens(n, 4),
            status=Status.NORMAL, seeds=["a"],
        )

    nodes = [make(n) for n in names]
    progress: dict[tuple[str, str], tuple[int, int]] = {}

    def check_forward() -> None:
        for g in nodes:
            for n, s in g.endpoints.items():
                key = (g.node_id, n)
                mark = (s.generation, s.max_version)
                if g.node_id == n:
                    progress.pop(key, None)  # a restart starts a new life for itself
                assert mark >= progress.get(key, (0, 0)), (key, mark, progress.get(key))
                progress[key] = mark
            assert_valid(g)

    for op, i, j, arg in steps:
        if op == "beat":
            nodes[i].beat()
        elif op == "update":
            nodes[i].update(load=arg, status=[Status.NORMAL, Status.LEAVING][arg % 2])
        elif op == "restart":
            gens[names[i]] += 1
            nodes[i] = make(names[i])
            progress = {k: v for k, v in progress.items() if k[0] != names[i]}
        elif i != j:
            a, b = nodes[i], nodes[j]
            ack = b.receive(a.make_syn(), NOW)
            ack2 = a.receive(ack.reply, NOW)
            if ack2.reply is not None and (op == "exchange" or arg % 2):  # "lossy": lost
                b.receive(ack2.reply, NOW)
        check_forward()
    _full_sync(nodes, NOW)
    check_forward()
    views = [snapshot(g) for g in nodes]
    assert all(v == views[0] for v in views)
    assert set(views[0]) == set(names)
    for g in nodes:
        assert views[0][g.node_id] == g.local


def test_limits_are_honoured_by_what_we_send() -> None:
    """A node at the token cap still produces messages a peer accepts."""
    big = Gossiper("big", "10.0.0.9:7000", GEN, tokens=range(4096), status=Status.NORMAL)
    small = Gossiper("small", "10.0.0.8:7000", GEN, limits=Limits())
    small.receive(big.receive(small.make_syn(), NOW).reply, NOW)
    assert len(small.endpoints["big"].tokens) == 4096
    rng = random.Random(0)
    assert small.targets(rng) == ["big"]
