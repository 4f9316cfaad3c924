"""Checks of the ring changes agreed through the Raft group (issue 15), for simulations:
the committed ring as the voters applied it, and a watch on a node's gossip state that
reports every ring change announced before the group recorded it."""

from __future__ import annotations

from kvstore.core.gossip import Status
from kvstore.core.ringlog import STATUS_NAMES
from simkit.cluster import SimCluster


def committed(cluster: SimCluster, voters: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The committed ring as the most advanced live voter has applied it."""
    best = None
    for node_id in voters:
        node = cluster.nodes.get(node_id)
        if node is None or node.raft is None or node_id in cluster.network.faults.crashed:
            continue
        if best is None or node.raft.sm.applied > best.applied:
            best = node.raft.sm
    assert best is not None
    return {n: (STATUS_NAMES[m.status], m.tokens) for n, m in best.ring.members.items()}


def watch_gossip(cluster: SimCluster, node_id: str, violations: list[str],
                 voters: list[str]) -> None:
    """Check, at every ring change the node announces by gossip (its own status or tokens,
    or a status it speaks for a dead member), that the Raft group recorded it first."""
    gossiper = cluster.nodes[node_id].membership.gossiper
    update, speak_for = gossiper.update, gossiper.speak_for

    def checked_update(*, status=None, tokens=None, **kw):
        record = committed(cluster, voters).get(node_id)
        changes_status = status is not None and Status(status) != gossiper.local.status
        if changes_status and (record is None or record[0] != Status(status).name):
            violations.append(f"{node_id} gossiped {Status(status).name} before the "
                              f"group recorded it (record: {record and record[0]})")
        claims = tokens is not None and tuple(sorted(tokens)) != gossiper.local.tokens
        if claims and (record is None or record[1] != tuple(sorted(tokens))):
            violations.append(f"{node_id} gossiped its tokens before the group recorded "
                              f"its claim (record: {record and record[0]})")
        return update(status=status, tokens=tokens, **kw)

    def checked_speak_for(member, status):
        record = committed(cluster, voters).get(member)
        if record is None or record[0] != Status(status).name:
            violations.append(f"{node_id} gossiped {member} {Status(status).name} before the "
                              f"group recorded it (record: {record and record[0]})")
        return speak_for(member, status)

    gossiper.update, gossiper.speak_for = checked_update, checked_speak_for
