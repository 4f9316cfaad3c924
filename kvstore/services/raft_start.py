"""How a node's Raft member starts: recover, bootstrap a new group, join, or refuse.

A voter must never forget what it promised: its vote, and the entries it acknowledged.
A voter whose raft directory is empty cannot tell "I never did anything" from "I did, and
lost it"; if it guessed wrong and bootstrapped a fresh copy of the group, it could vote a
second time in a term, or help elect a leader that lacks an entry it had acknowledged, and
a committed entry would be lost (tests/unit/test_raft_rejoin.py shows it). So, as with
etcd's `--initial-cluster-state new|existing` and hashicorp raft's explicit
BootstrapCluster, creating a group is an explicit act:

* state on disk (a log, a snapshot, or a joining marker): recover it. The configuration in
  the log wins over `--raft-voters`, which only seeds a brand-new group and tells nodes
  outside the group where to forward;
* no state, `--raft-join`: start as a joining member, which neither votes nor campaigns
  until the leader has added it as a learner and promoted it (the way back);
* no state, listed in `--raft-voters`: bootstrap only with `--raft-bootstrap` (the
  operator says "this is a new cluster") and only if the data directory shows no earlier
  life (e.g. `members.json`: then the raft state was lost, not never written). Otherwise
  refuse, with one line that says what is missing, why that is unsafe and what to do;
* no state, not a voter, not joining: no raft member here; metadata requests are forwarded.

The decision is pure (`plan_start`), so it is tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["RaftStartRefused", "StartMode", "StartPlan", "plan_start", "way_back"]


class RaftStartRefused(Exception):
    """This node must not start its raft member as configured; the message (one line) says
    why and what to do."""


class StartMode(Enum):
    RECOVER = "recover"      # from the state on disk
    BOOTSTRAP = "bootstrap"  # a new group: configuration entries 1..n
    JOIN = "join"            # empty, waiting to be added as a learner
    NONE = "none"            # no raft member on this node (it forwards)


@dataclass(frozen=True)
class StartPlan:
    mode: StartMode
    joining: bool = False  # must not vote or campaign until promoted from learner


def way_back(node_id: str) -> str:
    return (f"Supported way back: on the running cluster `kv raft remove {node_id}`; start "
            f"this node with --raft-join added; then `kv raft add {node_id} --learner` and, "
            f"once it has caught up, `kv raft promote {node_id}` (docs/raft.md).")


def plan_start(node_id: str, voters: list[str], *, has_state: bool, joining: bool,
               bootstrap: bool, join: bool, prior_life: list[str], raft_dir: str,
               data_dir: str) -> StartPlan:
    """Decide how this node's raft member starts; raise RaftStartRefused if it must not.

    `has_state`/`joining`: what the raft directory holds; `bootstrap`/`join`: the
    --raft-bootstrap/--raft-join flags; `prior_life`: files in the data directory that only
    an earlier run of a node leaves (empty for a brand-new directory)."""
    if has_state:
        return StartPlan(StartMode.RECOVER, joining=joining)
    if join:
        return StartPlan(StartMode.JOIN, joining=True)
    if node_id not in voters:
        return StartPlan(StartMode.NONE)
    listed = f"{node_id} is a raft voter (--raft-voters {','.join(voters)})"
    unsafe = ("starting it as a voter is unsafe: it would forget its vote and the entries it "
              "acknowledged, so committed metadata could be lost or two leaders elected in "
              "one term.")
    if prior_life:
        raise RaftStartRefused(
            f"{listed} but its raft state is missing: {raft_dir} holds no log or snapshot, "
            f"while {data_dir} shows an earlier life ({', '.join(prior_life)}). "
            f"{unsafe[0].upper()}{unsafe[1:]} "
            f"{way_back(node_id)}")
    if not bootstrap:
        raise RaftStartRefused(
            f"{listed} but {raft_dir} holds no raft state and --raft-bootstrap was not given. "
            "If a new cluster is being created now, start every voter with --raft-bootstrap "
            "(kv cluster up does this when it creates the data directory). If this node was "
            f"a voter before and lost its directory, {unsafe} {way_back(node_id)}")
    return StartPlan(StartMode.BOOTSTRAP)
