"""The raft wire format: round trips, strict validation, and a malformed message never
reaching (or changing) the core."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageDecodeError,
    MsgType,
    RaftNode,
    Snapshot,
    decode_message,
    encode_message,
)

ids = st.sampled_from(["n1", "n2", "node-ü", "x" * 40])


@st.composite
def messages(draw) -> Message:
    typ = draw(st.sampled_from(list(MsgType)))
    term = draw(st.integers(1, 2**40))
    index = draw(st.integers(0, 2**40))
    log_term = draw(st.integers(0, term))
    entries = []
    if typ is MsgType.APP:
        t = log_term
        for i in range(draw(st.integers(0, 5))):
            t = draw(st.integers(t, term))
            entries.append(Entry(index + 1 + i, t, draw(st.sampled_from(list(EntryType))),
                                 draw(st.binary(max_size=40))))
    snap = None
    if typ is MsgType.SNAP:
        snap = Snapshot(draw(st.integers(1, 2**40)), draw(st.integers(1, 2**40)),
                        ConfState(frozenset({"n1", "n2"}), frozenset({"n3"})),
                        draw(st.binary(max_size=100)))
    return Message(typ, draw(ids), draw(ids), term, log_term, index,
                   draw(st.integers(0, 2**40)), draw(st.booleans()),
                   draw(st.integers(0, 2**40)), entries, snap, draw(st.binary(max_size=20)))


@given(messages())
def test_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@settings(max_examples=300)
@given(messages(), st.data())
def test_corrupted_bytes_raise_a_clear_error_or_decode_to_a_valid_message(m, data) -> None:
    raw = bytearray(encode_message(m))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decode_message(bytes(raw[:cut]))
    except MessageDecodeError:
        pass  # the only exception allowed


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:-1], "truncated|trailing|flag"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: bytes([9]) + b[1:], "version"),
        (lambda b: b[:1] + bytes([99]) + b[2:], "unknown raft message type"),
    ],
)
def test_specific_malformations(mutate, why) -> None:
    m = Message(MsgType.APP, "a", "b", 3, 1, 4, 2, entries=[Entry(5, 2, data=b"x")])
    with pytest.raises(MessageDecodeError, match=why):
        decode_message(mutate(encode_message(m)))


def test_semantic_checks() -> None:
    bad_index = Message(MsgType.APP, "a", "b", 3, 1, 4, entries=[Entry(9, 2)])
    with pytest.raises(MessageDecodeError, match="expected 5"):
        decode_message(encode_message(bad_index))
    future_term = Message(MsgType.APP, "a", "b", 3, 1, 4, entries=[Entry(5, 7)])
    with pytest.raises(MessageDecodeError, match="impossible term"):
        decode_message(encode_message(future_term))
    entries_on_vote = Message(MsgType.VOTE, "a", "b", 3, entries=[Entry(1, 1)])
    with pytest.raises(MessageDecodeError, match="must not carry entries"):
        decode_message(encode_message(entries_on_vote))
    with pytest.raises(MessageDecodeError, match="expected bytes"):
        decode_message("text")  # type: ignore[arg-type]


def test_misaddressed_message_is_refused_without_changing_state() -> None:
    n = RaftNode(Config("a"), random.Random(0), bootstrap_voters=["a", "b", "c"])
    before = (n.term, n.vote, n.commit, n.last_index(), n.role)
    with pytest.raises(MessageDecodeError, match="delivered to"):
        n.step(Message(MsgType.VOTE, "zz", "b", term=50, index=10, log_term=9))
    with pytest.raises(MessageDecodeError, match="from this node"):
        n.step(Message(MsgType.HEARTBEAT, "a", "a", term=50))
    with pytest.raises(MessageDecodeError):
        n.step(b"\x01\x02")  # type: ignore[arg-type]
    assert (n.term, n.vote, n.commit, n.last_index(), n.role) == before
