"""When a tombstone may be collected, and how deleted data is kept from coming back (pure).

Two rules, both decisions over values the caller passes in (times are milliseconds of
the caller's clock; nothing here reads a clock):

1. **Collection** (`purge_decision`): a key whose siblings are all tombstones may be
   purged only when the newest tombstone is older than the grace period AND every
   replica of the key's preference list is confirmed to hold exactly this version set
   (same version digest). Confirmations come from anti-entropy (`Result.matched` of a
   session: the peer reported the same digest) and are kept in `Confirmations`. A replica
   that is down simply never confirms, so its keys' tombstones wait for it.

2. **No resurrection** (`split_purged`): a replica that missed the delete and whose copy
   survives past the purge (it was down longer than the grace period, was replaced in
   the preference list, or was restored from an old disk) still holds the deleted live
   version, and nothing is left to supersede it. So a purge does not forget everything:
   it leaves a *marker*, the clock the collected tombstones covered, for another grace
   period (`Replica.purge`). An incoming version whose dot the marker covers is refused;
   every other version is accepted. That refuses exactly the data a purged tombstone
   deleted (and the purged tombstones themselves, so they do not ping-pong), never a
   write made after the delete, never data of a key this node never purged: a new write
   has a fresh dot (core/versions.py), which no marker covers. An old copy that returns
   after the marker expired can still resurrect: replicas must complete anti-entropy
   within twice the grace period (Cassandra's rule, with its gc_grace_seconds).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kvstore.core.versions import Sibling, covers, live

DEFAULT_GRACE_MS = 10 * 24 * 3600 * 1000  # 10 days, as Cassandra's gc_grace_seconds
DEFAULT_SKEW_MS = 60_000  # the largest coordinator clock skew we tolerate


@dataclass(frozen=True, slots=True)
class PurgeDecision:
    """Whether a tombstone may be collected, and why (for logs and `kv` output)."""

    allowed: bool
    reason: str
    missing: frozenset[str] = frozenset()  # preference-list replicas not yet confirmed

    def __bool__(self) -> bool:
        return self.allowed


def check_settings(grace_ms: int, skew_ms: int = DEFAULT_SKEW_MS,
                   hint_ttl_ms: int | None = None) -> None:
    """Reject settings under which the rules above would refuse fresh writes or hints."""
    if skew_ms < 0:
        raise ValueError(f"clock skew allowance must be >= 0, not {skew_ms}")
    if grace_ms <= 2 * skew_ms:
        raise ValueError(f"tombstone grace period ({grace_ms} ms) must exceed twice the clock "
                         f"skew allowance ({skew_ms} ms)")
    if hint_ttl_ms is not None and hint_ttl_ms >= grace_ms - skew_ms:
        raise ValueError(f"hints must expire ({hint_ttl_ms} ms) before the tombstone grace "
                         f"period minus the skew allowance ({grace_ms - skew_ms} ms), or a "
                         f"hint could outlive the purge marker of the delete that "
                         f"superseded it and bring the deleted data back")


def may_purge(
    written_at_ms: int,
    *,
    now_ms: int,
    grace_ms: int,
    preference_list: Sequence[str],
    confirmed: Collection[str],
) -> PurgeDecision:
    """The collection rule for one tombstone written at `written_at_ms`."""
    if grace_ms < 0:
        raise ValueError(f"grace period must be >= 0, not {grace_ms}")
    if not preference_list:
        return PurgeDecision(False, "the key's preference list is unknown")
    age = now_ms - written_at_ms
    missing = frozenset(preference_list) - frozenset(confirmed)
    if age <= grace_ms:
        return PurgeDecision(False, f"tombstone is {age} ms old; grace period is {grace_ms} ms",
                             missing)
    if missing:
        return PurgeDecision(
            False, f"not confirmed by {', '.join(sorted(missing))} (repair must reach them)",
            missing,
        )
    return PurgeDecision(True, f"older than the grace period and held by all "
                               f"{len(set(preference_list))} replicas")


def purge_decision(
    siblings: Sequence[Sibling],
    *,
    now_ms: int,
    grace_ms: int,
    preference_list: Sequence[str],
    confirmed: Collection[str],
) -> PurgeDecision:
    """The collection rule for a key's whole sibling set (all must be tombstones)."""
    if not siblings:
        return PurgeDecision(False, "nothing stored")
    if live(siblings):  # tombstones, and versions fenced out beside them, may go
        return PurgeDecision(False, "the key has a live sibling")
    newest = max(s.written_at_ms for s in siblings)
    return may_purge(newest, now_ms=now_ms, grace_ms=grace_ms,
                     preference_list=preference_list, confirmed=confirmed)


class Confirmations:
    """Which replicas are known to hold which version digest of each purge candidate.

    Only the latest digest per key is kept: a confirmation of an older digest says nothing
    about the current tombstone, so a new digest starts a fresh set.
    """

    def __init__(self) -> None:
        self._by_key: dict[bytes, tuple[bytes, set[str]]] = {}

    def record(self, key: bytes, digest: bytes, node: str) -> None:
        current = self._by_key.get(key)
        if current is None or current[0] != digest:
            self._by_key[key] = (digest, {node})
        else:
            current[1].add(node)

    def record_all(self, matched: Iterable[tuple[bytes, bytes]], nodes: Iterable[str]) -> None:
        """Record a session's `Result.matched` (key, digest) pairs as held by `nodes`."""
        names = list(nodes)
        for key, digest in matched:
            for node in names:
                self.record(key, digest, node)

    def holders(self, key: bytes, digest: bytes) -> frozenset[str]:
        current = self._by_key.get(key)
        if current is None or current[0] != digest:
            return frozenset()
        return frozenset(current[1])

    def forget(self, key: bytes) -> None:
        self._by_key.pop(key, None)

    def __len__(self) -> int:
        return len(self._by_key)


def split_purged(
    marker: Mapping[str, int], incoming: Sequence[Sibling]
) -> tuple[list[Sibling], list[Sibling]]:
    """Split incoming siblings into (accepted, refused): refused are those the purge marker
    (the clock of collected tombstones) covers."""
    accepted: list[Sibling] = []
    refused: list[Sibling] = []
    for s in incoming:
        (refused if covers(marker, s.node, s.counter) else accepted).append(s)
    return accepted, refused


def needs_catch_up(last_alive_ms: int, now_ms: int, grace_ms: int) -> bool:
    """Whether a starting node was away longer than the grace period.

    `last_alive_ms` is the last time it durably recorded being up. Such a node must
    neither serve reads nor push data until it has caught up (see the module docstring).
    """
    return now_ms - last_alive_ms > grace_ms
