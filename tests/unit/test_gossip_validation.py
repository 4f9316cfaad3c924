"""Strict validation of received gossip: every hostile message is refused, state unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore._proto import gossip_pb2 as pb
from kvstore.core.gossip import Gossiper, GossipError, Limits, Status
from kvstore.core.ring import node_tokens

NOW = 1_700_000_000.0
GEN = 1_600_000_000


def receiver() -> Gossiper:
    g = Gossiper("r", "10.0.0.1:7000", GEN, tokens=node_tokens("r", 4), status=Status.NORMAL)
    peer = Gossiper("p", "10.0.0.2:7000", GEN, tokens=node_tokens("p", 4), status=Status.NORMAL)
    ack = peer.receive(g.make_syn(), NOW)
    g.receive(ack.reply, NOW)
    assert set(g.endpoints) == {"r", "p"}
    return g


def endpoint(node_id: str = "x", **kw) -> pb.GossipEndpoint:
    e = pb.GossipEndpoint(node_id=node_id, generation=GEN, heartbeat=5)
    e.meta.version = 3
    e.meta.address = "10.0.0.9:7000"
    e.meta.status = pb.MEMBER_NORMAL
    e.meta.tokens.extend([1, 2, 3])
    e.load.version = 4
    e.load.load = 100
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def ack(*states: pb.GossipEndpoint, requests: tuple = (), sender: str = "p") -> pb.GossipMessage:
    a = pb.GossipAck(sender=sender)
    a.states.extend(states)
    a.requests.extend(requests)
    return pb.GossipMessage(ack=a)


def test_a_valid_hostile_looking_message_is_accepted() -> None:
    g = receiver()
    out = g.receive(ack(endpoint()).SerializeToString(), NOW)
    assert [c.node_id for c in out.changes] == ["x"]
    assert g.endpoints["x"].tokens == (1, 2, 3)


def _mut(fn: Callable[[pb.GossipMessage], None]) -> bytes:
    msg = ack(endpoint(), endpoint("y"))
    fn(msg)
    return msg.SerializeToString()


def _set(path: str, value: object) -> Callable[[pb.GossipMessage], None]:
    def apply(msg: pb.GossipMessage) -> None:
        obj = msg.ack.states[1]
        *head, last = path.split(".")
        for part in head:
            obj = getattr(obj, part)
        setattr(obj, last, value)

    return apply


def _many_tokens(msg: pb.GossipMessage) -> None:
    del msg.ack.states[1].meta.tokens[:]
    msg.ack.states[1].meta.tokens.extend(range(4097))


def _dup_tokens(msg: pb.GossipMessage) -> None:
    msg.ack.states[1].meta.tokens.extend([1])


def _no_tokens(msg: pb.GossipMessage) -> None:
    del msg.ack.states[1].meta.tokens[:]


def _dup_ids(msg: pb.GossipMessage) -> None:
    msg.ack.states[1].node_id = "x"


def _future_request(msg: pb.GossipMessage) -> None:
    msg.ack.requests.add(node_id="r", generation=int(NOW) + 10**7, max_version=0)


def _negative_request(msg: pb.GossipMessage) -> None:
    msg.ack.requests.add(node_id="r", generation=GEN, max_version=-1)


def _ack_bytes(endpoint_bytes: bytes) -> bytes:
    """A GossipMessage{ack{sender: "p", states: [<endpoint_bytes>]}} encoded by hand."""
    body = b"\x0a\x01p" + b"\x12" + bytes([len(endpoint_bytes)]) + endpoint_bytes
    return b"\x12" + bytes([len(body)]) + body


HOSTILE: list[tuple[str, bytes, str]] = [
    ("garbage", b"\xff\xff\xff\xff\x0f\x00garbage", "malformed"),
    ("empty", b"", "no SYN, ACK or ACK2"),
    ("truncated", ack(endpoint()).SerializeToString()[:-3], "malformed"),
    ("negative generation", _mut(_set("generation", -5)), "generation"),
    ("zero generation", _mut(_set("generation", 0)), "generation"),
    ("future generation", _mut(_set("generation", int(NOW) + 86_401)), "ahead of this node"),
    ("huge generation", _mut(_set("generation", 2**63 - 1)), "generation"),
    ("negative heartbeat", _mut(_set("heartbeat", -1)), "heartbeat"),
    ("overflowing heartbeat", _mut(_set("heartbeat", 2**62 + 1)), "heartbeat"),
    ("zero meta version", _mut(_set("meta.version", 0)), "meta version"),
    ("negative load", _mut(_set("load.load", -1)), "load"),
    ("negative load version", _mut(_set("load.version", -7)), "load version"),
    ("unknown status", _mut(_set("meta.status", 99)), "unknown status"),
    ("unspecified status", _mut(_set("meta.status", 0)), "unknown status"),
    ("absurd token count", _mut(_many_tokens), "4097 tokens"),
    ("duplicate tokens", _mut(_dup_tokens), "duplicate tokens"),
    ("normal without tokens", _mut(_no_tokens), "no tokens"),
    ("bad address", _mut(_set("meta.address", "no-port")), "host:port"),
    ("port out of range", _mut(_set("meta.address", "h:70000")), "host:port"),
    ("address with spaces", _mut(_set("meta.address", "h h:1")), "host:port"),
    ("empty node id", _mut(_set("node_id", "")), "node id"),
    ("node id with newline", _mut(_set("node_id", "a\nb")), "whitespace"),
    ("long node id", _mut(_set("node_id", "n" * 129)), "129 characters"),
    ("duplicate node ids", _mut(_dup_ids), "duplicate node ids"),
    ("future request", _mut(_future_request), "ahead of this node"),
    ("negative request", _mut(_negative_request), "version"),
    ("sender is receiver", ack(endpoint(), sender="r").SerializeToString(), "this node"),
    ("no sender", ack(endpoint(), sender="").SerializeToString(), "sender"),
    (
        "other cluster",
        pb.GossipMessage(syn=pb.GossipSyn(sender="p", cluster="prod")).SerializeToString(),
        "cluster",
    ),
    (
        "syn with generation 0",
        pb.GossipMessage(
            syn=pb.GossipSyn(
                sender="p", cluster="kvstore", digests=[pb.GossipDigest(node_id="q")]
            )
        ).SerializeToString(),
        "generation",
    ),
    # Field 2 (generation, a varint) sent as length-delimited bytes: a wrong wire type.
    # protobuf keeps it as an unknown field, so generation reads as 0 and is refused.
    ("wrong wire type", _ack_bytes(b"\x0a\x01x" + b"\x12\x03abc"), "generation|malformed"),
    ("invalid utf-8 id", _ack_bytes(b"\x0a\x02\xc3\x28"), "malformed"),
]


@pytest.mark.parametrize(("name", "data", "error"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_message_is_rejected_and_changes_nothing(
    name: str, data: bytes, error: str
) -> None:
    g = receiver()
    before = (dict(g.endpoints), g.local)
    with pytest.raises(GossipError, match=error):
        g.receive(data, NOW)
    assert (dict(g.endpoints), g.local) == before
    assert "x" not in g.endpoints  # the valid first state of the message was not applied


def test_oversized_message_is_rejected_before_parsing() -> None:
    g = Gossiper("r", "h:1", GEN, limits=Limits(max_message_bytes=1000))
    with pytest.raises(GossipError, match="exceeds 1000"):
        g.receive(b"\x00" * 1001, NOW)


def test_too_many_endpoints_is_rejected() -> None:
    g = Gossiper("r", "h:1", GEN, limits=Limits(max_endpoints=3))
    msg = ack(*(endpoint(f"n{i}") for i in range(4)))
    with pytest.raises(GossipError, match="4 endpoint states"):
        g.receive(msg.SerializeToString(), NOW)
    assert set(g.endpoints) == {"r"}


def test_non_bytes_input_is_rejected() -> None:
    g = receiver()
    with pytest.raises(GossipError, match="must be bytes"):
        g.receive("a string", NOW)  # type: ignore[arg-type]


def test_member_table_is_bounded() -> None:
    g = Gossiper("r", "h:1", GEN, limits=Limits(max_members=3))
    three = ack(endpoint("x"), endpoint("y"), endpoint("z")).SerializeToString()
    with pytest.raises(GossipError, match="introduces 3 new members"):
        g.receive(three, NOW)
    assert set(g.endpoints) == {"r"}
    g.receive(ack(endpoint("x")).SerializeToString(), NOW)
    g.receive(ack(endpoint("x"), endpoint("y")).SerializeToString(), NOW)  # y is the 3rd
    assert set(g.endpoints) == {"r", "x", "y"}
    with pytest.raises(GossipError, match="limit is 3"):
        g.receive(ack(endpoint("z")).SerializeToString(), NOW)
    assert set(g.endpoints) == {"r", "x", "y"}
