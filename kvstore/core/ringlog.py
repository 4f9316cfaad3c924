"""The committed ring (issue 15): token assignments and membership states, as the Raft
metadata group records them. Pure and deterministic: part of the metadata state machine
(core/meta.py applies `RingChange` commands here).

Modelled on Cassandra's transactional cluster metadata (CEP-21): a node that changes the
ring (its own join with its tokens, NORMAL, LEAVING, LEFT; a replacement taking a dead
member's place; a forced removal) first commits the change here, and only then announces
it by gossip. The table enforces what gossip alone cannot:

* a member recorded afresh claims tokens that no recorded member holds, unless that member
  LEFT (two joins racing for the same tokens: the first one committed wins, the other is
  refused with the name of the holder);
* a replacement may take the tokens of exactly one dead member, once: the dead member
  turns LEAVING in the same entry (`replaced_by`), so a second replacement of it is
  refused, and it turns LEFT when its replacement turns NORMAL;
* the states follow the lifecycle: JOINING -> NORMAL -> LEAVING -> LEFT (a member of a
  cluster created before its ring was recorded is recorded NORMAL or LEAVING on its
  first change, with its tokens, under the same token check); a LEFT member comes back
  only by joining afresh. Repeating the current state is accepted (a retry, a restart).

The epoch is the revision (Raft index) of the last change: every record carries the
revision that set it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore._proto import meta_pb2 as mpb

__all__ = ["JOINING", "LEAVING", "LEFT", "NORMAL", "STATUS_NAMES", "RingRefused", "RingTable",
           "validate_change"]

JOINING, NORMAL, LEAVING, LEFT = 1, 2, 3, 4
STATUS_NAMES = {JOINING: "JOINING", NORMAL: "NORMAL", LEAVING: "LEAVING", LEFT: "LEFT"}
MAX_TOKENS = 4096  # per member, as gossip allows
MAX_ID = 128


class RingRefused(Exception):
    """The change contradicts the committed ring; the message says why."""


@dataclass(slots=True)
class Member:
    status: int
    tokens: tuple[int, ...]
    revision: int
    replaces: str = ""
    replaced_by: str = ""
    by: str = ""

    def to_pb(self, node: str) -> mpb.RingRecord:
        return mpb.RingRecord(node=node, status=self.status, tokens=self.tokens,
                              revision=self.revision, replaces=self.replaces,
                              replaced_by=self.replaced_by, by=self.by)


def _check_id(value: str, what: str) -> None:
    if not value or len(value) > MAX_ID or not value.isprintable() or " " in value:
        raise ValueError(f"{what} {value[:40]!r} is not a node id")


def validate_change(c: mpb.RingChange) -> None:
    """Raise ValueError if the command is malformed (whatever the ring holds)."""
    _check_id(c.node, "ring change: node")
    if c.status not in STATUS_NAMES:
        raise ValueError(f"ring change: unknown status {c.status}")
    if len(c.tokens) > MAX_TOKENS:
        raise ValueError(f"ring change: {len(c.tokens)} tokens (limit {MAX_TOKENS})")
    if len(set(c.tokens)) != len(c.tokens):
        raise ValueError("ring change: duplicate tokens")
    if c.replaces:
        _check_id(c.replaces, "ring change: replaces")
        if c.status != JOINING or c.replaces == c.node:
            raise ValueError("ring change: only a joining node replaces another one")
    if c.by:
        _check_id(c.by, "ring change: by")


class RingTable:
    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.epoch = 0

    # -- queries --------------------------------------------------------------------------
    def holder(self, tokens, exclude: tuple[str, ...] = ()) -> tuple[str, Member] | None:
        """A recorded member, not LEFT and not in `exclude`, holding any of `tokens`."""
        wanted = set(tokens)
        for node, m in sorted(self.members.items()):
            if node in exclude or m.status == LEFT:
                continue
            if not wanted.isdisjoint(m.tokens):
                return node, m
        return None

    def records(self) -> list[mpb.RingRecord]:
        return [m.to_pb(n) for n, m in sorted(self.members.items())]

    # -- the change -----------------------------------------------------------------------
    def apply(self, index: int, c: mpb.RingChange) -> None:
        """Apply the change at revision `index`, or raise RingRefused (nothing changed)."""
        node, status, tokens = c.node, c.status, tuple(sorted(c.tokens))
        cur = self.members.get(node)
        name = STATUS_NAMES[status]
        if cur is not None and cur.status != LEFT and tokens and tokens != cur.tokens:
            raise RingRefused(f"{node} is recorded {STATUS_NAMES[cur.status]} with other "
                              f"tokens (revision {cur.revision})")
        if (cur is not None and status == JOINING and cur.status == NORMAL
                and tokens == cur.tokens and c.replaces == cur.replaces):
            return  # a join resumed after it was recorded NORMAL (it crashed in between)
        if cur is not None and cur.status == status:
            if status == JOINING and c.replaces != cur.replaces:
                raise RingRefused(f"{node} is recorded JOINING"
                                  + (f" in place of {cur.replaces}" if cur.replaces else "")
                                  + (f", not in place of {c.replaces}" if c.replaces else ""))
            return  # a retry or a restart: already so
        fresh = cur is None or cur.status == LEFT
        if status == JOINING:
            if not fresh:
                raise RingRefused(f"{node} is already a member ({STATUS_NAMES[cur.status]}, "
                                  f"revision {cur.revision}): a member does not join again")
        elif status == NORMAL:
            if cur is not None and cur.status == LEFT:
                raise RingRefused(f"{node} left the ring (revision {cur.revision}); it comes "
                                  "back only as a fresh node joining")
            if cur is not None and cur.status != JOINING:
                raise RingRefused(f"{node} is {STATUS_NAMES[cur.status]}, not JOINING: it "
                                  "cannot turn NORMAL")
        elif status == LEAVING:
            if cur is not None and cur.status != NORMAL:
                raise RingRefused(f"{node} is {STATUS_NAMES[cur.status]}, not NORMAL: only a "
                                  "member on the ring can leave it")
        elif status == LEFT and (cur is None or cur.status != LEAVING):
            state = STATUS_NAMES[cur.status] if cur is not None else "not recorded"
            raise RingRefused(f"{node} is {state}, not LEAVING: it cannot turn LEFT")
        dead = None
        if fresh:
            if not tokens:
                raise RingRefused(f"{node} is not recorded: its first record ({name}) must "
                                  "name its tokens")
            exclude: tuple[str, ...] = (node,)
            if c.replaces:
                dead = self.members.get(c.replaces)
                if dead is not None and dead.status not in (NORMAL, LEAVING):
                    by = f" (replaced by {dead.replaced_by})" if dead.replaced_by else ""
                    raise RingRefused(f"{c.replaces} is {STATUS_NAMES[dead.status]}{by}: "
                                      "there is no place on the ring to take")
                if dead is not None and dead.replaced_by:
                    raise RingRefused(f"{c.replaces} is being replaced by {dead.replaced_by} "
                                      f"already (revision {dead.revision})")
                if dead is not None and dead.status == LEAVING:
                    raise RingRefused(f"{c.replaces} is LEAVING (its ranges are moving out): "
                                      "let that finish, or remove it, instead of replacing it")
                if dead is not None and dead.tokens != tokens:
                    raise RingRefused(f"the tokens given are not those of {c.replaces}")
                exclude += (c.replaces,)
            held = self.holder(tokens, exclude)
            if held is not None:
                other, m = held
                overlap = len(set(tokens) & set(m.tokens))
                what = (f" in place of {m.replaces}" if m.replaces else "")
                raise RingRefused(
                    f"{overlap} of the {len(tokens)} tokens {node} claims are held by {other} "
                    f"({STATUS_NAMES[m.status]}{what}, revision {m.revision}): two members "
                    "cannot own the same tokens")
        record = Member(status, tokens if fresh else cur.tokens, index,
                        replaces=c.replaces if fresh else cur.replaces,
                        replaced_by="" if fresh else cur.replaced_by, by=c.by or node)
        if c.replaces:
            if dead is None:  # recorded afresh: the dead member was never recorded
                dead = Member(NORMAL, tokens, index)
            dead.status, dead.replaced_by, dead.revision, dead.by = LEAVING, node, index, node
            self.members[c.replaces] = dead
        if status == NORMAL and record.replaces:
            gone = self.members.get(record.replaces)
            if gone is not None and gone.replaced_by == node:
                gone.status, gone.revision, gone.by = LEFT, index, node
        self.members[node] = record
        self.epoch = index

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"epoch": self.epoch,
                "members": {n: [m.status, list(m.tokens), m.revision, m.replaces,
                                m.replaced_by, m.by] for n, m in self.members.items()}}

    def restore(self, obj: dict) -> None:
        self.epoch = obj.get("epoch", 0)
        self.members = {n: Member(v[0], tuple(v[1]), v[2], v[3], v[4], v[5])
                        for n, v in obj.get("members", {}).items()}
