"""Range streaming: a node joins by pulling the ranges it will own, and leaves by pushing
the ranges it owned to their next owners.

A join, as in Cassandra's bootstrap:
1. the node starts JOINING. Gossip carries its tokens, but it is not on the ring, so
   reads never use it. Coordinators put it on a *pending* ring and send it every write of
   the ranges it will own (services/coordinator.py: W is needed among today's owners and
   among the owners after the move);
2. it announces itself to every member directly and waits out `ring_delay`, so writes
   that started before a coordinator heard of the move have finished;
3. for each range whose replicas change (core/ring.py `moves`), it pulls the records
   from the replica the range is taken from. That node's copy plus those of the owners
   that stay hold every acknowledged write. If that node is down, it pulls from every
   live owner and merges. Pages are CRC-checked, and the pull is throttled to
   `rate_bytes_per_s`. Progress is saved, so a restarted join skips the ranges it
   finished;
4. it turns NORMAL, and a Merkle comparison with each source (anti-entropy) shows that
   nothing is missing (`leaves_differing`, expected 0) and repairs anything that is.

A decommission is the mirror image:
1. LEAVING: the node stays on the ring, but the pending ring has the next owners;
2. the node announces, then waits out `ring_delay`;
3. it pushes each record of its ranges to the nodes that gain them;
4. it turns LEFT and is no longer a member. A node that was decommissioned refuses to
   start again with the same data (`move.json`).
A node that crashes while LEAVING starts again LEAVING and resumes: the ranges it had
pushed (recorded in `move.json`) are skipped. A failed decommission is resumed the same
way by running `kv node decommission` again.

A removal (`kv node remove`) is a decommission run by another node on behalf of a member
that is gone: it sets that member LEAVING (gossip `speak_for`), copies each of its ranges
from every surviving replica to the nodes that gain it, and sets it LEFT. Peers keep a
member that left off the ring until it comes back JOINING with a newer generation.

With a Raft group, every one of these status changes (and a join's claim on its tokens)
is committed there first (`ring_log`, services/ring_log.py) and gossiped only after; a
change the committed ring refuses fails the move with the group's reason. An
announcement is repeated until every member the failure detector holds up was reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvstore._proto import admin_pb2
from kvstore._proto import internode_pb2 as pb
from kvstore.core import versions
from kvstore.core.errors import InvalidArgument, KVError, Unavailable
from kvstore.core.gossip import Status
from kvstore.core.ring import Move, moves, node_tokens, token_of
from kvstore.storage.durable import StateFileError, read_state, write_atomic
from kvstore.storage.engine import CorruptRecordError
from kvstore.transport.base import Transport, TransportError

log = logging.getLogger(__name__)

PAGE = 256            # records per streamed page
MAX_PAGE = 1024       # the most a responder sends in one page
PAGE_TRIES = 3        # a page that fails its CRC or its call is asked again this often
SAVE_EVERY_S = 1.0    # progress is saved at most this often (and at the end)
FILE_NAME = "move.json"
REPLACE_DOWN_WAIT_S = 30.0  # how long a replacement waits to see the dead node marked down
ANNOUNCE_WAIT_S = 30.0  # how long a move waits for its announcement to reach every live member


class MoveRefused(Exception):
    """This node must not start as configured (e.g. it was decommissioned)."""


def page_crc(entries) -> int:
    crc = 0
    for entry in entries:
        crc = zlib.crc32(entry.SerializeToString(deterministic=True), crc)
    return crc


@dataclass
class Progress:
    kind: str
    state: str = "announcing"
    ranges_done: int = 0
    ranges_total: int = 0
    keys: int = 0
    bytes: int = 0
    started: float = 0.0
    ended: float | None = None
    error: str = ""
    leaves_differing: int = 0
    corrupt_skipped: int = 0
    replaces: str = ""  # a replacement: the dead member whose place (tokens) it takes

    def to_pb(self, node: str, now: float) -> admin_pb2.MoveProgress:
        seconds = (self.ended or now) - self.started
        left = self.ranges_total - self.ranges_done
        eta = seconds / self.ranges_done * left if self.ranges_done and left else 0.0
        return admin_pb2.MoveProgress(
            node=node, kind=self.kind, state=self.state, ranges_done=self.ranges_done,
            ranges_total=self.ranges_total, keys=self.keys, bytes=self.bytes,
            seconds=seconds, eta_seconds=eta, error=self.error,
            finished=self.state in ("done", "failed"),
            leaves_differing=self.leaves_differing, corrupt_skipped=self.corrupt_skipped,
            replaces=self.replaces)


class RangeStreamer:
    def __init__(self, node_id: str, store, transport: Transport, membership, replica,
                 antientropy, *, replication_factor: int, ring_delay: float,
                 rate_bytes_per_s: int, timeout: float, state_path: Path | None,
                 monotonic: Callable[[], float] = time.monotonic, verify: bool = True) -> None:
        self.node_id = node_id
        self.store = store
        self.transport = transport
        self.membership = membership
        self.replica = replica
        self.antientropy = antientropy
        self.n = replication_factor
        self.ring_delay = ring_delay
        self.rate = rate_bytes_per_s
        self.timeout = timeout
        self.state_path = state_path
        self.monotonic = monotonic
        self.verify = verify
        self.progress: Progress | None = None
        self._task: asyncio.Task | None = None
        self._done_ranges: set[tuple[int, int]] = set()
        self._saved_at = 0.0
        self._budget_start = 0.0
        self._budget_bytes = 0
        # Ring changes are recorded through the Raft group before gossip announces them
        # (services/ring_log.py; without a group, `commit` does nothing). `tokens`: the
        # ones this node claims when it joins (its own, or those of the member it replaces).
        self.ring_log = None
        self.tokens: tuple[int, ...] = ()
        # A replacement carries the tokens of the member it replaced, for good: the saved
        # record keeps whom, also once a later decommission of this node writes it.
        self.replaced = ""

    async def _commit(self, node: str, status: Status, tokens=(), **kw) -> None:
        if self.ring_log is not None:
            await self.ring_log.commit(node, int(status), tokens, **kw)

    async def _claim(self, dead: str = "") -> None:
        """Record this node JOINING with its tokens (in place of `dead`), then gossip the
        tokens: a node of a cluster with a Raft group starts JOINING without any."""
        await self._commit(self.node_id, Status.JOINING, self.tokens, replaces=dead)
        if tuple(self.membership.gossiper.local.tokens) != tuple(sorted(self.tokens)):
            self.membership.set_tokens(self.tokens)

    # -- saved state --------------------------------------------------------------------
    @staticmethod
    def peek(path: Path | None) -> dict:
        """The saved {kind, state} ({} if none or unreadable: load() reports damage)."""
        if path is None:
            return {}
        try:
            data = read_state(path)
            return json.loads(data) if data else {}
        except (StateFileError, ValueError):
            return {}

    def load(self) -> dict:
        """What an earlier run recorded ({} if nothing); refuses a decommissioned node."""
        if self.state_path is None:
            return {}
        data = read_state(self.state_path)
        if data is None:
            return {}
        try:
            saved = json.loads(data)
            kind, state = saved["kind"], saved["state"]
            done = [tuple(r) for r in saved.get("done", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateFileError(f"move file {self.state_path} is damaged ({exc}); it records "
                                 "a join or decommission of this node") from None
        if kind == "decommission" and state in ("done", "left"):
            raise MoveRefused(
                f"{self.node_id} was decommissioned (it left the ring; {self.state_path}). "
                "Its data is no longer its to serve: to bring this machine back, start it "
                "with an empty data directory (and a new --id, or the same one with --join)")
        self._done_ranges = {(int(a), int(b)) for a, b in done}
        self.replaced = str(saved.get("replaces", ""))
        return {"kind": kind, "state": state}

    def _save(self, kind: str, state: str, force: bool = False) -> None:
        if self.state_path is None:
            return
        now = self.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_at = now
        record = {"kind": kind, "state": state, "done": sorted(self._done_ranges)}
        replaces = (self.progress.replaces if self.progress is not None else "") or \
            self.replaced
        if replaces:  # kept by every later move: it says which tokens this node carries
            record["replaces"] = replaces
        write_atomic(self.state_path, json.dumps(record).encode())

    # -- responder ----------------------------------------------------------------------
    async def serve(self, source: str, req: pb.StreamRead) -> pb.StreamPage:
        """One page of the records of (start, end] after the resume point."""
        limit = min(req.limit or PAGE, MAX_PAGE)
        after = (req.after_token, req.after_key) if req.has_after else None
        page = pb.StreamPage()
        while True:
            try:
                rows = await self.store.scan_chunk(req.start, req.end, after, limit)
                break
            except CorruptRecordError as exc:
                # read up to the damaged record one at a time, report it, and go on after it
                # send what precedes the damaged record, report it, resume after it
                rows, resume = await self._before_corrupt(req.start, req.end, after, exc)
                page.corrupt.append(exc.key)
                self._append(page, rows)
                page.has_resume, page.resume_token, page.resume_key = True, *resume
                page.crc = page_crc(page.entries)
                return page
        self._append(page, rows)
        page.done = len(rows) < limit
        page.crc = page_crc(page.entries)
        return page

    async def _before_corrupt(self, start, end, after, exc):
        rows = []
        while True:
            try:
                one = await self.store.scan_chunk(start, end, after, 1)
            except CorruptRecordError:
                return rows, (token_of(exc.key), exc.key)
            if not one:
                return rows, after or (token_of(exc.key), exc.key)
            rows.extend(one)
            after = (one[0][0], one[0][1])

    def _append(self, page: pb.StreamPage, rows) -> None:
        for _token, key, record in rows:
            rec = versions.decode_record(record)
            purged, purged_at = self.replica.live_marker(rec)
            if not rec.siblings and not purged:
                continue
            state = versions.to_pb(rec.siblings)
            if purged:
                versions.marker_to_pb(state, purged, purged_at)
            page.entries.append(pb.StreamEntry(key=key, state=state))
        if rows:  # the next page starts after the last record scanned, sent or not
            page.has_resume, page.resume_token, page.resume_key = True, rows[-1][0], rows[-1][1]

    # -- pacing -------------------------------------------------------------------------
    async def _throttle(self, nbytes: int) -> None:
        now = self.monotonic()
        if now - self._budget_start > 1.0:
            self._budget_start, self._budget_bytes = now, 0
        self._budget_bytes += nbytes
        if self.rate and self._budget_bytes > self.rate:
            await asyncio.sleep(max(0.0, 1.0 - (now - self._budget_start)))

    # -- join ---------------------------------------------------------------------------
    def start_join(self, replaces: str = "") -> None:
        """Join; with `replaces`, in the place of that dead member (this node carries its
        tokens: see Node): it is set LEAVING, its ranges are pulled from the surviving
        replicas, and it is set LEFT as this node turns NORMAL."""
        self.progress = Progress("replace" if replaces else "join", started=self.monotonic(),
                                 replaces=replaces)
        self.replaced = replaces or self.replaced
        self._task = asyncio.get_running_loop().create_task(self._join())

    async def _announce(self) -> None:
        """Tell every member of the change directly, then let old writes finish.

        Every member the failure detector holds up must be reached (a node cut off from
        this one, or this one cut off from all, is tried again every 0.2 s, for at most
        ANNOUNCE_WAIT_S): a coordinator that has not heard of the move would send the
        writes of the moving ranges to the old owners only. A member that goes down
        meanwhile hears of the change by gossip when it is back."""
        self.progress.state = "announcing"
        reached = await self.membership.announce()
        deadline = self.monotonic() + ANNOUNCE_WAIT_S
        while True:
            missing = {m for m in self.membership.members
                       if m != self.node_id and m not in reached and self.membership.is_up(m)}
            if not missing:
                break
            if self.monotonic() > deadline:
                log.warning("%s: the %s announcement did not reach %s within %.0fs; going "
                            "on (gossip will tell them)", self.node_id, self.progress.kind,
                            ", ".join(sorted(missing)), ANNOUNCE_WAIT_S)
                break
            await asyncio.sleep(0.2)
            reached |= await self.membership.announce(only=missing)
        log.info("%s announced its %s to %s; waiting %.1fs (ring delay)", self.node_id,
                 self.progress.kind, ", ".join(sorted(reached)) or "nobody", self.ring_delay)
        await asyncio.sleep(self.ring_delay)

    async def _join(self) -> None:
        kind, dead = self.progress.kind, self.progress.replaces
        try:
            # recorded before anything is claimed: a node restarted after its join failed
            # early (e.g. its claim was refused) joins again, never starts NORMAL
            self._save(kind, "claiming", force=True)
            while not self.membership.ready:
                await asyncio.sleep(0.1)
            if dead:
                await self._take_place_of(dead)
            else:
                await self._claim()
            await self._announce()
            after = self.membership.pending_ring
            if after is None or self.node_id not in after.nodes:
                raise Unavailable("the pending ring does not hold this node; is it JOINING?")
            plan = [m for m in moves(self.membership.ring, after, self.n)
                    if self.node_id in m.gained]
            await self._pull_all(plan)
            await self._commit(self.node_id, Status.NORMAL)  # and `dead` LEFT, in one entry
            if dead:
                self.membership.speak_for(dead, Status.LEFT)
            self.membership.set_status(Status.NORMAL)
            self._save(kind, "done", force=True)
            await self.membership.announce()
            if self.verify:
                await self._verify(plan)
            self.progress.state = "done"
            log.info("%s joined%s: %d ranges, %d keys, %d bytes streamed", self.node_id,
                     f" in place of {dead}" if dead else "", self.progress.ranges_total,
                     self.progress.keys, self.progress.bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the node stays JOINING; a restart resumes
            self.progress.state, self.progress.error = "failed", str(exc)
            log.exception("join failed; restart the node to resume it")
        finally:
            self.progress.ended = self.monotonic()

    async def _pull_all(self, plan: list[Move]) -> None:
        self.progress.state = "streaming"
        self.progress.ranges_total = len(plan)
        self.progress.ranges_done = sum((m.start, m.end) in self._done_ranges for m in plan)
        self._save(self.progress.kind, "streaming", force=True)
        for move in plan:
            if (move.start, move.end) in self._done_ranges:
                continue
            sources = self._sources(move)
            if not sources:
                raise Unavailable(f"no live replica holds range ({move.start}, {move.end}]: "
                                  f"{', '.join(move.before)} are all down")
            for source in sources:
                await self._pull(source, move)
            self._done_ranges.add((move.start, move.end))
            self.progress.ranges_done += 1
            self._save(self.progress.kind, "streaming")

    async def _take_place_of(self, dead: str) -> None:
        """Check that `dead` is a member and down (a live one leaves by decommission), then
        set it LEAVING on its behalf: the pending ring gives its ranges to this node."""
        if dead not in self.membership.members:
            raise InvalidArgument(f"{dead} is not a member: nothing to replace")
        # A member this node never heard from directly counts as up until the failure
        # detector has seen its (relayed) heartbeats stop: give it that long.
        deadline = self.monotonic() + REPLACE_DOWN_WAIT_S
        while self.membership.is_up(dead):
            if self.monotonic() > deadline:
                raise InvalidArgument(f"{dead} is up: a live node leaves with `kv node "
                                      f"decommission {dead}`; replace only a dead one")
            await asyncio.sleep(0.2)
        await self._claim(dead)  # recorded: this node JOINING, `dead` LEAVING (replaced)
        self.membership.speak_for(dead, Status.LEAVING)

    def _sources(self, move: Move) -> list[str]:
        """The replica the range is taken from, if up; else every live replica of it."""
        up = [n for n in move.before if n != self.node_id and self.membership.is_up(n)]
        lost = [n for n in move.lost if n in up]
        return lost[:1] if lost else up

    async def _pull(self, source: str, move: Move) -> None:
        req = pb.StreamRead(start=move.start, end=move.end, limit=PAGE)
        while True:
            page = await self._page(source, req)
            self.progress.corrupt_skipped += len(page.corrupt)
            merges = []
            for entry in page.entries:
                incoming = versions.from_pb(entry.state)
                purged, purged_at = versions.marker_from_pb(entry.state)
                merges.append(self.replica.merge(entry.key, incoming, marker=purged,
                                                 marker_at_ms=purged_at))
                self.progress.keys += 1
            await asyncio.gather(*merges)
            size = page.ByteSize()
            self.progress.bytes += size
            await self._throttle(size)
            if page.done or not page.has_resume:
                return
            req.has_after, req.after_token, req.after_key = (True, page.resume_token,
                                                             page.resume_key)

    async def _page(self, source: str, req: pb.StreamRead) -> pb.StreamPage:
        problem = ""
        for _ in range(PAGE_TRIES):
            try:
                result = await self.transport.call(source, pb.PeerMessage(stream=req),
                                                   self.timeout)
            except TransportError as exc:
                problem = f"{source} unreachable ({exc})"
                await asyncio.sleep(0.2)
                continue
            if result.HasField("error"):
                problem = f"{source}: {result.error.message}"
                await asyncio.sleep(0.2)
                continue
            page = result.page
            if page_crc(page.entries) != page.crc:
                problem = f"a page from {source} failed its CRC"
                log.warning("%s; asking again", problem)
                continue
            return page
        raise Unavailable(f"streaming range ({req.start}, {req.end}] failed: {problem}")

    async def _verify(self, plan: list[Move]) -> None:
        """Merkle comparison with each source: what differs is repaired and counted."""
        self.progress.state = "verifying"
        sources = sorted({s for m in plan for s in m.before if s != self.node_id})
        for source in sources:
            if not self.membership.is_up(source):
                continue
            try:
                stats = await self.antientropy.repair_with(source)
            except (KVError, TransportError) as exc:
                log.warning("verification with %s failed: %s", source, exc)
                continue
            self.progress.leaves_differing += stats.leaves_differing

    # -- decommission -------------------------------------------------------------------
    def start_decommission(self) -> Progress:
        """Start leaving; on a node that is LEAVING already (a decommission that failed, or
        one this node was running when it crashed) resume it: ranges recorded as pushed
        are skipped."""
        if self._task is not None and not self._task.done():
            if self.progress.kind == "decommission":
                return self.progress  # resumed after a restart: follow it
            raise InvalidArgument(f"{self.node_id} is already moving ({self.progress.kind})")
        status = self.membership.status(self.node_id)
        if status not in (Status.NORMAL.name, Status.LEAVING.name):
            raise InvalidArgument(f"{self.node_id} is {status}, not NORMAL: only a member "
                                  "on the ring can leave it")
        if status == Status.NORMAL.name:
            # a new decommission: the ranges recorded done are an earlier join's (pulled
            # in); a replacement gives away exactly the ranges it took, so they would all
            # be skipped, and nothing pushed
            self._done_ranges = set()
        self.progress = Progress("decommission", started=self.monotonic())
        self._task = asyncio.get_running_loop().create_task(self._decommission())
        return self.progress

    @staticmethod
    def was_leaving(path: Path | None) -> bool:
        """An earlier run of this node started a decommission and did not finish it."""
        saved = RangeStreamer.peek(path)
        return saved.get("kind") == "decommission" and saved.get("state") == "leaving"

    async def _decommission(self) -> None:
        try:
            await self._commit(self.node_id, Status.LEAVING,
                               self.membership.gossiper.local.tokens)
            self.membership.set_status(Status.LEAVING)
            self._save("decommission", "leaving", force=True)
            while not self.membership.ready:  # a resumed one: hear the ring first
                await asyncio.sleep(0.1)
            await self._announce()
            after = self.membership.pending_ring
            if after is None or self.node_id in after.nodes:
                raise Unavailable("the pending ring still holds this node; is it LEAVING?")
            plan = [m for m in moves(self.membership.ring, after, self.n)
                    if self.node_id in m.lost]
            self.progress.state = "streaming"
            self.progress.ranges_total = len(plan)
            self.progress.ranges_done = sum((m.start, m.end) in self._done_ranges for m in plan)
            for move in plan:
                if (move.start, move.end) in self._done_ranges:
                    continue  # pushed before a crash (its receivers hold it durably)
                await self._push(move)
                self._done_ranges.add((move.start, move.end))
                self.progress.ranges_done += 1
                self._save("decommission", "leaving")
            # LEFT is told to every member before it is recorded here: a crash in between
            # restarts the node LEAVING and it finishes again (peers that heard LEFT keep
            # it off the ring: only a JOINING node with a newer generation comes back)
            await self._commit(self.node_id, Status.LEFT)
            self.membership.set_status(Status.LEFT)
            await self.membership.announce()
            self._save("decommission", "left", force=True)
            self.progress.state = "done"
            log.info("%s left the ring: %d ranges, %d keys, %d bytes streamed", self.node_id,
                     len(plan), self.progress.keys, self.progress.bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.progress.state, self.progress.error = "failed", str(exc)
            log.exception("decommission failed; the node is still LEAVING")
        finally:
            self.progress.ended = self.monotonic()

    # -- forced removal of a dead member ---------------------------------------------------
    def start_remove(self, member: str) -> Progress:
        """Re-replicate a dead member's ranges from the survivors, then mark it LEFT."""
        if self._task is not None and not self._task.done():
            raise InvalidArgument(f"{self.node_id} is already moving ({self.progress.kind})")
        if member == self.node_id:
            raise InvalidArgument(f"{member} cannot remove itself: use kv node decommission")
        if member not in self.membership.ring.nodes:
            raise InvalidArgument(f"{member} is not on the ring (members: "
                                  f"{', '.join(sorted(self.membership.ring.nodes))})")
        if self.membership.is_up(member):
            raise InvalidArgument(f"{member} is up: take it out with `kv node decommission "
                                  f"{member}`, which streams its data out first; remove is for "
                                  "a node that is gone")
        self.progress = Progress("remove", started=self.monotonic())
        self._task = asyncio.get_running_loop().create_task(self._remove(member))
        return self.progress

    async def _remove(self, member: str) -> None:
        try:
            state = self.membership.gossiper.endpoints.get(member)
            tokens = (state.tokens if state is not None and state.tokens
                      else node_tokens(member, self.membership.vnodes))
            await self._commit(member, Status.LEAVING, tokens, by=self.node_id)
            self.membership.speak_for(member, Status.LEAVING)
            await self._announce()
            after = self.membership.pending_ring
            if after is None or member in after.nodes:
                raise Unavailable(f"the pending ring still holds {member}")
            plan = [m for m in moves(self.membership.ring, after, self.n) if member in m.lost]
            self.progress.state = "streaming"
            self.progress.ranges_total = len(plan)
            for move in plan:
                sources = [n for n in move.before if n != member
                           and (n == self.node_id or self.membership.is_up(n))]
                if not sources:
                    raise Unavailable(f"no live replica of range ({move.start}, {move.end}]")
                for source in sources:  # every surviving copy: the dead one's is gone
                    await self._relay(source, move)
                self.progress.ranges_done += 1
            await self._commit(member, Status.LEFT, by=self.node_id)
            self.membership.speak_for(member, Status.LEFT)
            await self.membership.announce()
            self.progress.state = "done"
            log.info("%s removed %s: %d ranges, %d keys, %d bytes re-replicated", self.node_id,
                     member, len(plan), self.progress.keys, self.progress.bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.progress.state, self.progress.error = "failed", str(exc)
            log.exception("removal of %s failed; it is still LEAVING: run it again", member)
        finally:
            self.progress.ended = self.monotonic()

    async def _relay(self, source: str, move: Move) -> None:
        """Copy a range from `source` (possibly this node) to the nodes that gain it."""
        req = pb.StreamRead(start=move.start, end=move.end, limit=PAGE)
        while True:
            if source == self.node_id:
                page = await self.serve(self.node_id, req)
            else:
                page = await self._page(source, req)
            self.progress.corrupt_skipped += len(page.corrupt)
            await self._send(page, [n for n in move.receivers if n != source])
            if page.done or not page.has_resume:
                return
            req.has_after, req.after_token, req.after_key = (True, page.resume_token,
                                                             page.resume_key)

    async def _push(self, move: Move) -> None:
        targets = list(move.receivers)
        after = None
        while True:
            page = pb.StreamPage()
            try:
                rows = await self.store.scan_chunk(move.start, move.end, after, PAGE)
            except CorruptRecordError as exc:
                rows, after = await self._before_corrupt(move.start, move.end, after, exc)
                self.progress.corrupt_skipped += 1
                self._append(page, rows)
                await self._send(page, targets)
                continue
            self._append(page, rows)
            await self._send(page, targets)
            if len(rows) < PAGE:
                return
            after = (rows[-1][0], rows[-1][1])

    async def _send(self, page: pb.StreamPage, targets: list[str]) -> None:
        async def one(target: str, entry: pb.StreamEntry) -> None:
            if target == self.node_id:
                purged, purged_at = versions.marker_from_pb(entry.state)
                await self.replica.merge(entry.key, versions.from_pb(entry.state),
                                         marker=purged, marker_at_ms=purged_at)
                return
            message = pb.PeerMessage(write=pb.ReplicaWrite(key=entry.key, state=entry.state))
            problem = ""
            for _ in range(PAGE_TRIES):
                try:
                    result = await self.transport.call(target, message, self.timeout)
                except TransportError as exc:
                    problem = str(exc)
                    await asyncio.sleep(0.2)
                    continue
                if not result.HasField("error"):
                    return
                problem = result.error.message
            raise Unavailable(f"could not hand {entry.key!r} to {target}: {problem}")

        entries = list(page.entries)
        await asyncio.gather(*(one(t, e) for e in entries for t in targets))
        self.progress.keys += len(entries)
        size = sum(e.ByteSize() for e in entries) * max(1, len(targets))
        self.progress.bytes += size
        await self._throttle(size)

    def halt(self) -> None:
        """Stop the move where it is, now (a crash; stop() then waits for it)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
