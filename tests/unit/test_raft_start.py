"""How a raft member starts (kvstore/services/raft_start.py), and the Node's part: the
decision is made before the node writes anything to its data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.node.config import NodeConfig
from kvstore.node.node import Node
from kvstore.services.raft_start import RaftStartRefused, StartMode, plan_start
from kvstore.storage import AsyncStore, MemoryEngine
from kvstore.storage.raftlog import LOG_FILE, RaftLog
from kvstore.transport.memory import MemoryNetwork

VOTERS = ["n1", "n2", "n3"]


def _plan(node="n2", *, has_state=False, joining=False, bootstrap=False, join=False,
          prior=()):
    return plan_start(node, VOTERS, has_state=has_state, joining=joining, bootstrap=bootstrap,
                      join=join, prior_life=list(prior), raft_dir="/d/n2/raft",
                      data_dir="/d/n2")


@pytest.mark.parametrize(("kwargs", "mode", "joining"), [
    ({"has_state": True}, StartMode.RECOVER, False),
    ({"has_state": True, "bootstrap": True, "prior": ["members.json"]}, StartMode.RECOVER,
     False),                                            # the flag is ignored once state exists
    ({"has_state": True, "joining": True}, StartMode.RECOVER, True),  # not promoted yet
    ({"has_state": True, "join": True}, StartMode.RECOVER, False),    # --raft-join: no-op
    ({"bootstrap": True}, StartMode.BOOTSTRAP, False),  # a brand-new cluster
    ({"join": True}, StartMode.JOIN, True),
    ({"join": True, "prior": ["members.json"]}, StartMode.JOIN, True),  # the way back
    ({"node": "n4"}, StartMode.NONE, False),            # not a voter: forwards
    ({"node": "n4", "join": True}, StartMode.JOIN, True),  # a new member, added later
])
def test_start_decisions(kwargs, mode, joining) -> None:
    plan = _plan(**kwargs)
    assert (plan.mode, plan.joining) == (mode, joining)


def test_a_voter_whose_raft_state_is_gone_beside_an_old_data_directory_refuses() -> None:
    for bootstrap in (False, True):  # even when told to create a group
        with pytest.raises(RaftStartRefused) as err:
            _plan(bootstrap=bootstrap, prior=["members.json", "hints.db"])
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith("n2 is a raft voter (--raft-voters n1,n2,n3)")
        assert "/d/n2/raft holds no log or snapshot" in msg
        assert "earlier life (members.json, hints.db)" in msg
        assert "forget its vote" in msg and "two leaders" in msg
        assert ("`kv raft remove n2`; start this node with --raft-join added; then "
                "`kv raft add n2 --learner`") in msg and "`kv raft promote n2`" in msg


def test_a_voter_with_no_state_and_no_bootstrap_flag_refuses() -> None:
    with pytest.raises(RaftStartRefused, match="--raft-bootstrap was not given") as err:
        _plan()
    assert "kv raft remove n2" in str(err.value)


def _node(data_dir: Path, **config) -> Node:
    cfg = NodeConfig(node_id="n2", listen="n2:1", seeds=["n1=n1:1"], data_dir=data_dir,
                     raft_voters=VOTERS, **config)
    net = MemoryNetwork(1)
    return Node(cfg, net.transport("n2"), AsyncStore(MemoryEngine(), inline=True),
                inline_io=True)


def test_node_refuses_before_writing_to_an_old_data_directory(tmp_path: Path) -> None:
    (tmp_path / "members.json").write_text('{"generation": 1, "members": {}}')
    with pytest.raises(RaftStartRefused, match=r"earlier life \(members\.json\)"):
        _node(tmp_path, raft_bootstrap=True)
    assert not (tmp_path / "hints.db").exists()


def test_node_bootstraps_a_new_directory_durably_before_anything_else(tmp_path: Path) -> None:
    node = _node(tmp_path / "n2", raft_bootstrap=True)
    try:
        rec = RaftLog.open(tmp_path / "n2" / "raft").recover()  # what a crash would find now
        assert [e.index for e in rec.entries] == [1, 2, 3] and rec.hard_state.commit == 3
        assert node.raft.core.conf.voters == set(VOTERS)
        assert (tmp_path / "n2" / "members.json").exists()  # written after the raft state
    finally:
        node.handoff.hints.close()
        node.raft.log.close()
    # A second start (the flag may stay set) recovers instead of bootstrapping again.
    again = _node(tmp_path / "n2", raft_bootstrap=True)
    assert again.raft.plan.mode is StartMode.RECOVER
    again.handoff.hints.close()


def test_a_joining_node_keeps_its_marker_until_promoted(tmp_path: Path) -> None:
    (tmp_path / "members.json").write_text('{"generation": 1, "members": {}}')
    node = _node(tmp_path, raft_join=True)
    assert node.raft.core.joining and (tmp_path / "raft" / "raft.joining").read_bytes()
    assert node.raft.status()["joining"] is True
    node.handoff.hints.close()
    node.raft.log.close()
    again = _node(tmp_path)  # restarted without --raft-join: still joining (durable)
    assert again.raft.plan.mode is StartMode.RECOVER and again.raft.core.joining
    again.handoff.hints.close()


def test_damaged_raft_state_refuses_with_the_byte_offset_and_the_way_back(
        tmp_path: Path) -> None:
    node = _node(tmp_path, raft_bootstrap=True)
    node.handoff.hints.close()
    node.raft.log.close()
    raw = bytearray((tmp_path / "raft" / LOG_FILE).read_bytes())
    raw[len(raw) - 5] ^= 0x20  # a bit flip in the last (fsynced) record
    (tmp_path / "raft" / LOG_FILE).write_bytes(bytes(raw))
    with pytest.raises(RaftStartRefused) as err:
        _node(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("n2: the raft state in")
    assert "record at byte 0" in msg and "fails its checksum" in msg
    assert "kv raft remove n2" in msg and "--raft-join" in msg


def test_bootstrap_and_join_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        _node(tmp_path, raft_bootstrap=True, raft_join=True)



def test_cluster_up_raft_join_is_checked_before_starting_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kvstore.cli.main import cli

    run = CliRunner().invoke
    args = ["cluster", "up", "--data-dir", str(tmp_path / "data"), "--base-port", "39101"]
    r = run(cli, [*args, "--raft-join", "n2"])
    assert r.exit_code == 2 and "creates a new cluster" in r.output  # nothing to rejoin
    (tmp_path / "data" / "n1").mkdir(parents=True)
    r = run(cli, [*args, "--raft-join", "n9"])
    assert r.exit_code == 2 and "no node n9" in r.output
    assert not (tmp_path / "data" / "cluster.json").exists()
