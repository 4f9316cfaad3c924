"""Fuzz targets: every decoder that reads bytes from the network or the disk.

Each target takes bytes and either decodes them or refuses them with the decoder's own
documented error; any other exception is a crash (a bug the fuzzer found). A target may
also check a property of what decoded (a round trip). `SEEDS` gives valid inputs per target
so the fuzzer starts from real messages and mutates them.

Run them with atheris through `run.py`; `test_fuzz.py` replays seeds and every saved
regression (tests/fuzz/regressions/TARGET/*) without atheris.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable

from google.protobuf.message import DecodeError

from kvstore._proto import client_pb2 as cpb
from kvstore._proto import internode_pb2 as pb
from kvstore._proto import meta_pb2 as mpb
from kvstore.core import antientropy, auth, gossip, meta, versions
from kvstore.core.merkle import TOKEN_MIN, TOKEN_SPACE, MerkleTree
from kvstore.core.raft import messages as raftmsg
from kvstore.storage import CorruptRecordError
from kvstore.storage.hints import HintStore, hint_crc
from kvstore.storage.raftlog import CorruptRaftLogError, MemoryFiles, RaftLog

TARGETS: dict[str, Callable[[bytes], None]] = {}
SEEDS: dict[str, list[bytes]] = {}


def target(name: str, seeds: Callable[[], list[bytes]]):
    def wrap(fn):
        TARGETS[name] = fn
        SEEDS[name] = seeds()
        return fn
    return wrap


# ---- raft binary format (network: PeerMessage.raft; disk: the raft log) -----------------

def _raft_seeds() -> list[bytes]:
    e = [raftmsg.Entry(5, 2, raftmsg.EntryType.NORMAL, b"put"),
         raftmsg.Entry(6, 2, raftmsg.EntryType.CONF_CHANGE,
                       raftmsg.encode_conf_change(raftmsg.ConfChange(
                           raftmsg.ConfChangeType.ADD_LEARNER, "n4")))]
    return [raftmsg.encode_message(m) for m in (
        raftmsg.Message(raftmsg.MsgType.VOTE, "n1", "n2", 3, 2, 7),
        raftmsg.Message(raftmsg.MsgType.APP, "n2", "n1", 3, 2, 4, 4, entries=e),
        raftmsg.Message(raftmsg.MsgType.APP_RESP, "n1", "n2", 3, reject=True, reject_hint=2),
        raftmsg.Message(raftmsg.MsgType.HEARTBEAT, "n2", "n1", 3, commit=4, context=b"rd"),
    )]


@target("raft_message", _raft_seeds)
def raft_message(data: bytes) -> None:
    try:
        m = raftmsg.decode_message(data)
    except raftmsg.MessageDecodeError:
        return
    again = raftmsg.decode_message(raftmsg.encode_message(m))
    assert again == m, (m, again)


@target("raft_conf_change", lambda: [raftmsg.encode_conf_change(raftmsg.ConfChange(
        raftmsg.ConfChangeType.REMOVE, "n3"))])
def raft_conf_change(data: bytes) -> None:
    try:
        raftmsg.decode_conf_change(data)
    except raftmsg.MessageDecodeError:
        return


def _raftlog_files() -> MemoryFiles:
    files = MemoryFiles()
    log = RaftLog(files)
    log.recover()
    log.save(raftmsg.HardState(2, "n1", 1),
             [raftmsg.Entry(1, 1, raftmsg.EntryType.NORMAL, b"a"),
              raftmsg.Entry(2, 2, raftmsg.EntryType.NORMAL, b"bb")], True)
    log.save_snapshot(raftmsg.Snapshot(1, 1, raftmsg.ConfState(frozenset({"n1"})), b"img"))
    return files


def _raftlog_seeds() -> list[bytes]:
    files = _raftlog_files()
    return [bytes([i]) + files.read(name) for i, name in enumerate(sorted(files.files))]


@target("raft_log_file", _raftlog_seeds)
def raft_log_file(data: bytes) -> None:
    """A raft log or snapshot file as found on disk after a crash (the first byte picks
    which): recover() keeps a torn tail, refuses other damage with CorruptRaftLogError."""
    if not data:
        return
    files = _raftlog_files()
    names = sorted(files.files)
    files.replace(names[data[0] % len(names)], data[1:])
    try:
        RaftLog(files).recover()
    except CorruptRaftLogError:
        return


# ---- gossip (network: PeerMessage.gossip) -------------------------------------------------

def _gossiper(name: str = "n1") -> gossip.Gossiper:
    return gossip.Gossiper(name, f"{name}:1", 1, tokens=[1, 2, 3], seeds=["n2"])


def _gossip_seeds() -> list[bytes]:
    a, b = _gossiper("n1"), _gossiper("n2")
    syn = b.make_syn()
    ack = a.receive(syn, 10.0).reply
    return [syn, ack or b""]


@target("gossip", _gossip_seeds)
def gossip_message(data: bytes) -> None:
    g = _gossiper()
    before = dict(g._states)
    try:
        g.receive(data, 10.0)
    except gossip.GossipError:
        assert g._states == before  # a refused message leaves no trace
        return


# ---- anti-entropy exchange format (network: PeerMessage.antientropy) ----------------------

def _tree(n: int = 40, seed: int = 1) -> MerkleTree:
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        key = f"k{i}".encode()
        entries.append((rng.randrange(TOKEN_MIN, TOKEN_MIN + TOKEN_SPACE), key,
                        hashlib.sha256(key + bytes([seed])).digest()[:16]))
    return MerkleTree.build(TOKEN_MIN, TOKEN_MIN + TOKEN_SPACE - 1, entries, depth=4)


def _ae_seeds() -> list[bytes]:
    init = antientropy.Initiator(_tree(seed=2))
    out = []
    action = init.next_action()
    resp = antientropy.Responder(_tree(seed=1))
    for _ in range(6):
        if not isinstance(action, antientropy.Send):
            break
        out.append(action.data)
        reply = resp.receive(action.data)
        if not isinstance(reply, antientropy.Send):
            break
        out.append(reply.data)
        init.receive(reply.data)
        action = init.next_action()
    return out


@target("antientropy_responder", _ae_seeds)
def antientropy_responder(data: bytes) -> None:
    resp = antientropy.Responder(_tree())
    try:
        out = resp.receive(data)
    except antientropy.ProtocolError:
        return
    if isinstance(out, antientropy.NeedEntries):
        resp.provide_entries([])


@target("antientropy_initiator", _ae_seeds)
def antientropy_initiator(data: bytes) -> None:
    """A reply to the first request of a session."""
    init = antientropy.Initiator(_tree())
    init.next_action()
    try:
        init.receive(data)
    except antientropy.ProtocolError:
        return


# ---- stored records and client contexts ---------------------------------------------------

def _record_seeds() -> list[bytes]:
    sib = versions.Sibling("n1", 3, {"n2": 1}, b"value", written_at_ms=5,
                           fence=("lock", 4), fences={"lock": 4})
    rec = versions.Record([sib, versions.Sibling("n2", 2, tombstone=True)], 7, 3, {"n1": 1}, 9)
    return [versions.encode_record(rec), versions.encode([sib])]


@target("record", _record_seeds)
def record(data: bytes) -> None:
    """A record read from the storage engine (its CRC already matched)."""
    from kvstore.services.replica import _decode

    try:
        rec = _decode(b"k", data)
    except CorruptRecordError:
        return
    versions.encode_record(rec)
    versions.read_context(rec.siblings)


@target("client_context", lambda: [versions.encode_context({"n1": 3, "n2": 1})])
def client_context(data: bytes) -> None:
    try:
        versions.parse_context(data)
    except versions.InvalidContext:
        return


# ---- hints (disk: hints.db rows) ----------------------------------------------------------

def _hint_seeds() -> list[bytes]:
    rec = _record_seeds()[0]
    return [b"n2\x00k1\x00" + rec]


@target("hint_row", _hint_seeds)
def hint_row(data: bytes) -> None:
    """A hint row as read back from hints.db: verified by its CRC, then its record decoded
    by the delivery path."""
    parts = data.split(b"\x00", 2)
    if len(parts) != 3:
        return
    target_b, key, rec = parts
    target_s = target_b.decode("utf-8", "replace")
    for crc in (hint_crc(target_s, key, rec, 5), 0):
        hint, dropped = HintStore._verify((1, target_s, key, rec, 5, crc))
        assert (hint is None) != (dropped is None)
        if hint is not None:
            record(hint.record)


# ---- metadata commands, tokens, user records ----------------------------------------------

@target("meta_command", lambda: [meta.encode_put("a", "b"),
                                  meta.encode_cas("a", None, "c"), meta.encode_delete("a")])
def meta_command(data: bytes) -> None:
    sm = meta.MetaStateMachine()
    res = sm.apply(1, data)
    assert res is None or isinstance(res, mpb.MetaResult)
    sm.restore(sm.snapshot(), 1)


def _token_seeds() -> list[bytes]:
    from kvstore._proto import security_pb2 as spb

    claims = spb.TokenClaims(user="alice", role="readonly", expires_at_ms=10**13, generation=1)
    return [auth.make_token(b"k" * 32, claims).encode()]


@target("token", _token_seeds)
def token(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        auth.read_token(b"k" * 32, text, 0)
    except auth.AuthError:
        return


@target("user_record", lambda: [auth.UserRecord("a", "admin", "00", "11", 1).to_json().encode()])
def user_record(data: bytes) -> None:
    try:
        rec = auth.UserRecord.from_json("a", data.decode("utf-8", "replace"))
    except auth.AuthError:
        return
    auth.check_password(rec, "pw")


# ---- whole protobuf messages as a node handles them ---------------------------------------

_NODE: dict = {}


def _node():
    """One in-memory node (its real handlers, storage and coordinator), started once."""
    if not _NODE:
        from kvstore.node.config import NodeConfig
        from kvstore.node.node import Node
        from kvstore.storage import AsyncStore
        from kvstore.storage.memory import MemoryEngine
        from kvstore.transport.memory import MemoryNetwork

        loop = asyncio.new_event_loop()
        network = MemoryNetwork(0)
        config = NodeConfig(node_id="n1", listen="n1:1", seeds=[], replication_factor=1,
                            vnodes=8, timeout_ms=200, antientropy_interval=0)
        node = Node(config, network.transport("n1", "n1:1"),
                    AsyncStore(MemoryEngine(), inline=True), rng=random.Random(0),
                    hints=HintStore(None), inline_io=True)
        loop.run_until_complete(node.start())
        _NODE.update(loop=loop, node=node)
    return _NODE["loop"], _NODE["node"]


def _batch_seeds() -> list[bytes]:
    state = versions.to_pb([versions.Sibling("n2", 1, value=b"v", written_at_ms=1)])
    return [
        pb.PeerBatch(source="n2", messages=[
            pb.PeerMessage(read=pb.ReplicaRead(key=b"k")),
            pb.PeerMessage(write=pb.ReplicaWrite(key=b"k", state=state, reply_state=True)),
            pb.PeerMessage(write=pb.ReplicaWrite(key=b"h", state=state, hint_for="n3")),
            pb.PeerMessage(forward=pb.Forward(request=cpb.ClientRequest(
                put=cpb.PutRequest(key=b"k", value=b"v")))),
        ]).SerializeToString(),
        pb.PeerBatch(source="n2", messages=[
            pb.PeerMessage(gossip=_gossip_seeds()[0]),
            pb.PeerMessage(antientropy=pb.AntiEntropyStep()),
        ]).SerializeToString(),
    ]


@target("peer_batch", _batch_seeds)
def peer_batch(data: bytes) -> None:
    """An Internode.Exchange request: decoded, and every message handled by a real node.
    The handler may answer with an error, never raise."""
    try:
        batch = pb.PeerBatch.FromString(data)
    except DecodeError:
        return
    loop, node = _node()
    for message in batch.messages[:8]:
        result = loop.run_until_complete(
            asyncio.wait_for(node.handle_peer(batch.source, message), 5))
        assert isinstance(result, pb.PeerResult)


def _client_seeds() -> list[bytes]:
    return [cpb.ClientBatch(requests=[
        cpb.ClientRequest(put=cpb.PutRequest(key=b"k", value=b"v")),
        cpb.ClientRequest(get=cpb.GetRequest(key=b"k"), trace=True),
        cpb.ClientRequest(delete=cpb.DeleteRequest(key=b"k")),
    ]).SerializeToString()]


@target("client_batch", _client_seeds)
def client_batch(data: bytes) -> None:
    """A KV.Execute request, executed by a real (one-node) coordinator."""
    try:
        batch = cpb.ClientBatch.FromString(data)
    except DecodeError:
        return
    loop, node = _node()
    for request in batch.requests[:8]:
        reply = loop.run_until_complete(
            asyncio.wait_for(node.coordinator.execute(request), 5))
        assert isinstance(reply, cpb.ClientReply)
