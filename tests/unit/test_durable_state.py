"""Safety-state files: atomic, durable writes (storage/durable.py) and the members file."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from kvstore.services.gossip import GossipMembership
from kvstore.storage import durable
from kvstore.storage.durable import StateFileError, read_state, write_atomic
from kvstore.storage.raftlog import OsFiles
from kvstore.transport.memory import MemoryNetwork


@pytest.fixture
def io_log(monkeypatch) -> list[tuple[str, str]]:
    """Record fsyncs (of a file or a directory) and renames, in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    return events


def test_write_atomic_fsyncs_the_file_then_renames_then_fsyncs_the_directory(tmp_path, io_log):
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    assert io_log == [("fsync", "file"), ("rename", "state.json"), ("fsync", "dir")]
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    write_atomic(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_read_state_tells_missing_from_unreadable(tmp_path):
    assert read_state(tmp_path / "absent.json") is None
    (tmp_path / "blocked.json").mkdir()  # something that exists and cannot be read as a file
    with pytest.raises(StateFileError, match=r"cannot read .*blocked\.json"):
        read_state(tmp_path / "blocked.json")


def test_raft_files_replace_goes_through_the_durable_helper(tmp_path, io_log):
    files = OsFiles(tmp_path / "raft")
    files.replace("raft.snapshot", b"snap")
    assert files.read("raft.snapshot") == b"snap"
    assert io_log == [("fsync", "file"), ("rename", "raft.snapshot"), ("fsync", "dir")]


# -- members.json -----------------------------------------------------------------------

def membership(path, node_id: str = "n1", seeds: list[str] | None = None,
               now: float = 1000.0) -> GossipMembership:
    network = MemoryNetwork(0)
    return GossipMembership(
        node_id, f"{node_id}:1", seeds if seeds is not None else [f"{node_id}={node_id}:1"],
        network.transport(node_id, f"{node_id}:1"), wall_clock=lambda: now,
        monotonic=lambda: 0.0, rng=random.Random(0), vnodes=8, state_path=path)


def test_members_file_is_written_durably_and_remembers_generation_and_members(tmp_path, io_log):
    path = tmp_path / "members.json"
    first = membership(path, seeds=["n1=n1:1", "n2=n2:1", "n3=n3:1"])
    assert ("rename", "members.json") in io_log and io_log[-1] == ("fsync", "dir")
    saved = json.loads(path.read_text())
    assert saved["members"] == {"n1": "n1:1", "n2": "n2:1", "n3": "n3:1"}
    # restarted with only itself as seed, at a wall clock that went back: the generation
    # still grows, and the members it knew are on its ring
    again = membership(path, seeds=["n1=n1:1"], now=10.0)
    assert again.gossiper.local.generation == first.gossiper.local.generation + 1
    assert set(again.ring.nodes) == {"n1", "n2", "n3"}


@pytest.mark.parametrize("content, reason", [
    (b"", "Expecting value"),                                     # zero-length (torn) file
    (b'{"generation": 5, "members": {"n2": "n2:1"', "Expecting"),  # truncated
    (b"\x80 garbage", "codec can't decode"),
    (b"[]", "not a JSON object"),
    (b'{"members": {}}', "missing 'generation'"),
    (b'{"generation": -1, "members": {}}', "generation -1"),
    (b'{"generation": 3, "members": {"n2": 7}}', "members is not a map"),
    (b'{"generation": 3, "members": {"n2": "no-port"}}', "members is not a map"),
    (b'{"generation": 3, "members": {}, "tokens": {"n2": ["x"]}}', "tokens is not a map"),
    (b'{"generation": 3, "members": {}, "tokens": {"n2": [18446744073709551615]}}',
     "tokens is not a map"),
])
def test_a_damaged_members_file_stops_the_node_instead_of_reading_as_empty(tmp_path, content,
                                                                            reason):
    path = tmp_path / "members.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError) as info:
        membership(path)
    message = str(info.value)
    assert str(path) in message and "damaged" in message and reason in message
    assert "\n" not in message
    assert path.read_bytes() == content  # left as found, for the operator to inspect


def test_a_missing_members_file_is_a_fresh_node(tmp_path):
    path = tmp_path / "members.json"
    fresh = membership(path, now=1234.0)
    assert fresh.gossiper.local.generation == 1234
    assert json.loads(path.read_text())["generation"] == 1234


def test_a_member_that_left_stays_off_the_ring_across_restarts_until_it_rejoins_fresh(tmp_path):
    from kvstore.core.gossip import Gossiper, Status
    from kvstore.core.ring import node_tokens

    def hear(m: GossipMembership, other: Gossiper) -> None:
        """One round other -> m, as the gossip service applies it."""
        ack = m.gossiper.receive(other.make_syn(), 1000.0)
        m._apply(ack.changes)
        answer = other.receive(ack.reply, 1000.0)
        if answer.reply:
            m._apply(m.gossiper.receive(answer.reply, 1000.0).changes)

    path = tmp_path / "members.json"
    m = membership(path, seeds=["n1=n1:1", "n2=n2:1", "n3=n3:1"])
    hear(m, Gossiper("n3", "n3:1", 500, tokens=node_tokens("n3", 8), status=Status.NORMAL))
    m.speak_for("n3", Status.LEFT)  # kv node remove n3
    assert "n3" not in m.ring.nodes and "n3" not in m.members
    assert json.loads(path.read_text())["removed"] == {"n3": 500}
    # after a restart of n1, n3 (still listed in --seeds) stays out; its address is resolved
    again = membership(path, seeds=["n1=n1:1", "n2=n2:1", "n3=n3:1"])
    assert "n3" not in again.ring.nodes and "n3:1" not in again.unresolved_seeds()
    # n3 comes back with its old data (NORMAL, newer generation): still out
    hear(again, Gossiper("n3", "n3:1", 600, tokens=node_tokens("n3", 8), status=Status.NORMAL))
    assert "n3" not in again.ring.nodes and "n3" not in again.members
    # wiped and joining afresh (JOINING, newer generation): welcome, on the pending ring
    hear(again, Gossiper("n3", "n3:1", 700, tokens=node_tokens("n3", 8), status=Status.JOINING))
    assert "n3" in again.members and again.pending_ring is not None
    assert "n3" in again.pending_ring.nodes and "n3" not in again.removed


def hear(m: GossipMembership, other) -> None:
    """One gossip round other -> m, as the gossip service applies it."""
    ack = m.gossiper.receive(other.make_syn(), 1000.0)
    m._apply(ack.changes)
    answer = other.receive(ack.reply, 1000.0)
    if answer.reply:
        m._apply(m.gossiper.receive(answer.reply, 1000.0).changes)


def test_a_replacement_keeps_its_tokens_and_peers_remember_them_across_restarts(tmp_path):
    """n6 took n3's tokens (kv node start --replace n3): a peer that restarts places n6 on
    those tokens before it hears from n6 again, not on the ones n6's id would give."""
    from kvstore.core.gossip import Gossiper, Status
    from kvstore.core.ring import node_tokens

    n3_tokens = node_tokens("n3", 8)
    assert membership(None, "n6").gossiper.local.tokens == tuple(node_tokens("n6", 8))
    n6 = GossipMembership(
        "n6", "n6:1", ["n1=n1:1"], MemoryNetwork(0).transport("n6", "n6:1"),
        wall_clock=lambda: 1000.0, monotonic=lambda: 0.0, rng=random.Random(0), vnodes=8,
        tokens=n3_tokens)
    assert n6.gossiper.local.tokens == tuple(n3_tokens)

    path = tmp_path / "members.json"
    peer = membership(path, seeds=["n1=n1:1", "n2=n2:1"])
    hear(peer, Gossiper("n6", "n6:1", 700, tokens=n3_tokens, status=Status.NORMAL))
    owners = dict(zip(peer.ring.tokens, peer.ring.owners, strict=True))
    assert all(owners[t] == "n6" for t in n3_tokens)
    assert json.loads(path.read_text())["tokens"] == {"n6": n3_tokens}
    again = membership(path, seeds=["n1=n1:1"])  # restarted: n6 not heard from yet
    owners = dict(zip(again.ring.tokens, again.ring.owners, strict=True))
    assert all(owners[t] == "n6" for t in n3_tokens)
