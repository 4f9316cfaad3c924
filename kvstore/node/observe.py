"""Observability of one node: Prometheus metrics, the node's state view, the chaos API.

* `Observer` keeps the per-request statistics (counts, errors, a window of latencies by
  op and level), the hint-delivery rate, and builds `NodeState` (observe.proto): what
  `kv status` and the dashboard show.
* `NodeCollector` is a prometheus-client collector that reads the node's services at scrape
  time (gossip phi, hints, repair debt per peer, Raft, chaos, storage latency histograms),
  next to the request counters and latency histograms updated on every request.
* `StorageCensus` counts the store's records, tombstones and purge markers with a paged
  scan off the event loop, at most every CENSUS_INTERVAL seconds (and at most
  CENSUS_SHARE of the time), and sums the bytes of
  the data directory: what a scrape or `kv status` reports, never older than that.
* `ChaosServicer` and `ObserveServicer` are the gRPC faces (chaos.proto, observe.proto).
  The chaos API refuses with PERMISSION_DENIED unless the node runs with --chaos.

Each node has its own `CollectorRegistry`, so several nodes can live in one process (tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict, deque
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from kvstore._proto import chaos_pb2, chaos_pb2_grpc, common_pb2, observe_pb2, observe_pb2_grpc
from kvstore._proto import client_pb2 as cpb
from kvstore.core.histogram import LatencyHistogram
from kvstore.core.ring import TOKEN_MIN
from kvstore.node.node import Node
from kvstore.transport.faults import DEFAULT_DURATION, FaultFilter

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
WINDOW = 1000          # latencies kept per (op, level) for p50/p99
RATE_WINDOW = 60.0     # seconds over which the hint delivery rate is measured
CENSUS_INTERVAL = 15.0  # seconds: the storage census runs at most this often ...
CENSUS_SHARE = 0.05    # ... and at most this share of the time (a big store: less often)
CENSUS_PAGE = 1000     # records per scan page (the loop runs other work between pages)
CENSUS_WAIT = 0.5      # seconds a scrape waits for a census running for the first time


def disk_bytes(directory: Path) -> dict[str, int]:
    """Bytes under `directory` by top-level entry (data.db, data.db-wal, raft, ...)."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        total = 0
        try:
            if entry.is_dir(follow_symlinks=False):
                for root, _, files in os.walk(entry.path):
                    for name in files:
                        try:
                            total += os.lstat(os.path.join(root, name)).st_size
                        except OSError:
                            continue  # removed meanwhile (a rotated log file)
            else:
                total = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        out[entry.name] = total
    return out


class StorageCensus:
    """Counts of the store's records by kind, from a paged full scan (see module doc)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.records = self.tombstones = self.markers = -1  # -1: no census finished yet
        self.disk: dict[str, int] = {}
        self.finished_at: float | None = None  # monotonic
        self.took = 0.0  # seconds the last census took
        self._task: asyncio.Task | None = None

    def interval(self) -> float:
        """Seconds between censuses: CENSUS_INTERVAL, or longer when a census takes more
        than CENSUS_SHARE of that (a million records take seconds to decode)."""
        return max(CENSUS_INTERVAL, self.took / CENSUS_SHARE)

    def age(self) -> float:
        return -1.0 if self.finished_at is None else time.monotonic() - self.finished_at

    async def refresh(self) -> None:
        """Start a census when the last one is older than CENSUS_INTERVAL; wait for it (a
        little) only when there is none yet, so a scrape never waits for a long scan."""
        stale = self.finished_at is None or self.age() >= self.interval()
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self.finished_at is None and self._task is not None:
            await asyncio.wait([self._task], timeout=CENSUS_WAIT)

    async def _run(self) -> None:
        started = time.monotonic()
        store = self.node.store
        records = tombstones = markers = 0
        after = None
        while True:
            page = await store.scan_chunk(TOKEN_MIN, TOKEN_MIN, after, CENSUS_PAGE)
            for _, _, record in page:
                records += 1
                state = common_pb2.VersionSet()  # the wire form: no Sibling objects needed
                try:
                    state.ParseFromString(record)
                except Exception:  # a damaged record still counts as a record
                    continue
                if state.versions and all(v.tombstone for v in state.versions):
                    tombstones += 1
                if state.purged:
                    markers += 1
            if len(page) < CENSUS_PAGE:
                break
            after = (page[-1][0], page[-1][1])
        data_dir = self.node.config.data_dir
        if data_dir is not None:
            self.disk = await asyncio.to_thread(disk_bytes, Path(data_dir))
        self.records, self.tombstones, self.markers = records, tombstones, markers
        self.finished_at = time.monotonic()
        self.took = self.finished_at - started

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def level_name(request: cpb.ClientRequest) -> str:
    op = request.WhichOneof("op")
    if op is None:
        return "NONE"
    quorum = getattr(request, op).quorum
    if quorum.count:
        return f"{'R' if op == 'get' else 'W'}={quorum.count}"
    if quorum.level == cpb.CONSISTENCY_UNSPECIFIED:
        return "DEFAULT"
    return cpb.Consistency.Name(quorum.level)


def outcome_name(reply: cpb.ClientReply) -> str:
    if reply.WhichOneof("result") != "error":
        return "ok"
    return common_pb2.ErrorCode.Name(reply.error.code).lower()


class Observer:
    def __init__(self, node: Node, faults: FaultFilter | None, metrics_url: str = "") -> None:
        self.node = node
        self.faults = faults
        self.metrics_url = metrics_url
        self.started = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("kv_requests", "Client requests by op, level and outcome",
                                ["op", "level", "outcome"], registry=self.registry)
        self.latency = Histogram("kv_request_latency_seconds",
                                 "Client request latency by op and level", ["op", "level"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(NodeCollector(self))
        self._window: dict[tuple[str, str], deque[float]] = defaultdict(
            lambda: deque(maxlen=WINDOW))
        self._counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._cache: dict[tuple, tuple] = {}
        self._delivered: deque[tuple[float, int]] = deque(maxlen=256)
        self.hints_cache: dict[str, int] = {}  # refreshed (off the loop) before a scrape
        self.census = StorageCensus(node)

    async def refresh(self) -> None:
        """Read what the collector must not read on the event loop (the hint store, the
        storage census)."""
        self.hints_cache = await self.node.handoff.pending_by_target()
        await self.refresh_census()

    async def refresh_census(self) -> None:
        try:
            await self.census.refresh()
        except Exception as exc:  # a failed census must not fail a scrape or the state
            log.warning("storage census failed: %s", exc)

    # -- requests ------------------------------------------------------------------
    def record(self, request: cpb.ClientRequest, reply: cpb.ClientReply, seconds: float) -> None:
        """Count and time one request (a few microseconds: the label children, names and
        windows of each (op, level, outcome) are looked up once and cached)."""
        op = request.WhichOneof("op")
        quorum = getattr(request, op).quorum if op else None
        code = reply.error.code if reply.WhichOneof("result") == "error" else -1
        key = (op, quorum.level if quorum else 0, quorum.count if quorum else 0, code)
        cached = self._cache.get(key)
        if cached is None:
            op_name, level = op or "none", level_name(request)
            outcome = outcome_name(reply)
            cached = self._cache[key] = (
                self.requests.labels(op_name, level, outcome),
                self.latency.labels(op_name, level),
                self._window[(op_name, level)], self._counts[(op_name, level)],
                outcome != "ok")
        counter, histogram, window, counts, failed = cached
        counter.inc()
        histogram.observe(seconds)
        window.append(seconds * 1000)
        counts[0] += 1
        counts[1] += failed

    async def execute(self, request: cpb.ClientRequest) -> cpb.ClientReply:
        started = time.perf_counter()
        reply = await self.node.coordinator.execute(request)
        self.record(request, reply, time.perf_counter() - started)
        return reply

    # -- hint delivery rate --------------------------------------------------------
    def delivery_rate(self) -> float:
        """Hints delivered per second over the last RATE_WINDOW seconds (sampled here)."""
        now = time.monotonic()
        delivered = self.node.handoff.metrics["delivered"]
        samples = self._delivered
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, delivered))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        first_t, first_n = samples[0]
        return (delivered - first_n) / (now - first_t) if now - first_t >= 1.0 else 0.0

    # -- state ---------------------------------------------------------------------
    async def state(self) -> observe_pb2.NodeState:
        node = self.node
        membership = node.membership
        shares = membership.ring.ownership()
        hints = await node.handoff.pending_by_target()
        rate = self.delivery_rate()
        now_ms = node.antientropy.clock_ms()
        members = []
        for member, address in sorted(membership.members.items()):
            last = node.antientropy.last_session.get(member)
            members.append(observe_pb2.MemberView(
                id=member, address=address, status=membership.status(member),
                up=membership.is_up(member), phi=_finite(membership.phi(member)),
                ownership=round(shares.get(member, 0.0), 6),
                hints_pending=hints.get(member, 0),
                hints_delivered_per_s=round(rate, 2) if hints.get(member) else 0.0,
                repair_age_s=-1.0 if last is None else max(0.0, (now_ms - last[0]) / 1000),
                repair_leaves_differing=0 if last is None else last[1],
                repair_keys_moved=0 if last is None else last[2],
                repair_ranges=2 ** node.antientropy.depth))
        state = observe_pb2.NodeState(
            node_id=node.node_id, address=node.config.address, wall_time=time.time(),
            uptime_s=time.monotonic() - self.started, members=members,
            keys_stored=await node.store.count(), metrics_url=self.metrics_url,
            replication_factor=node.config.replication_factor, vnodes=node.config.vnodes)
        await self.refresh_census()
        census = self.census
        state.storage.records, state.storage.tombstones = census.records, census.tombstones
        state.storage.purge_markers = census.markers
        state.storage.disk_bytes = sum(census.disk.values())
        state.storage.census_age_s = round(census.age(), 1)
        state.storage.write_p99_ms = node.store.write_latency.quantile(0.99) * 1000
        fsync = getattr(node.store.engine, "commit_latency", None)
        if fsync is not None:
            state.storage.fsync_p99_ms = fsync.quantile(0.99) * 1000
        if node.raft is not None:
            s = node.raft.status()
            raft = state.raft
            raft.voter = "term" in s
            if raft.voter:
                raft.term, raft.leader, raft.role = s["term"], s["leader"] or "", s["role"]
                raft.commit_index, raft.applied_index = s["commit_index"], s["applied_index"]
                raft.last_index = s["last_index"]
                for m in s["members"]:
                    raft.members.add(id=m["id"], role=m["role"],
                                     lag=-1 if m["lag"] is None else m["lag"])
        for (op, level), window in sorted(self._window.items()):
            ordered = sorted(window)
            count, errors = self._counts[(op, level)]
            state.requests.add(op=op, level=level, count=count, errors=errors,
                               p50_ms=round(_pct(ordered, 0.5), 3),
                               p99_ms=round(_pct(ordered, 0.99), 3))
        if self.faults is not None:
            _chaos_state(self.faults, state.faults, state.events)
        return state


def _finite(x: float) -> float:
    return x if x < 1e9 else 1e9


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _chaos_state(faults: FaultFilter, out_faults, out_events) -> None:
    now = asyncio.get_running_loop().time()
    faults.expire(now, time.time())
    for f in faults.active(now):
        out_faults.add(id=f.id, kind=f.kind, peers=sorted(f.peers),
                       expires_in_s=round(f.expires_at - now, 1), description=f.describe())
    for at, text in list(faults.events)[-50:]:
        out_events.add(at=at, text=text)


class NodeCollector:
    """Gauges and counters read from the node's services at scrape time."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def describe(self):
        return []

    def collect(self):
        node = self.observer.node
        membership = node.membership
        phi = GaugeMetricFamily("kv_gossip_phi", "Phi-accrual suspicion of each peer",
                                labels=["peer"])
        up = GaugeMetricFamily("kv_member_up", "1 if the failure detector says up",
                               labels=["peer"])
        for member in sorted(membership.members):
            if member == node.node_id:
                continue
            phi.add_metric([member], _finite(membership.phi(member)))
            up.add_metric([member], 1.0 if membership.is_up(member) else 0.0)
        yield phi
        yield up
        pending = GaugeMetricFamily("kv_hints_pending", "Hints held for each target",
                                    labels=["target"])
        for target, count in sorted(self.observer.hints_cache.items()):
            pending.add_metric([target], count)
        yield pending
        for name, source, help_text in (
            ("kv_hints", node.handoff.metrics, "Hint events (stored, delivered, dropped_*)"),
            ("kv_repair", node.antientropy.metrics,
             "Anti-entropy events (sessions, keys_pushed, keys_fetched, tombstones_purged)"),
            ("kv_gossip", membership.metrics, "Gossip events (rounds, marked_down, ...)"),
            ("kv_coordinator", node.coordinator.metrics,
             "Quorum acks (replica or hint, counted or extra), read repairs and writes "
             "forwarded to a replica"),
        ):
            family = CounterMetricFamily(name, help_text, labels=["event"])
            for event, value in sorted(source.items()):
                family.add_metric([event], value)
            yield family
        store = node.store
        for metric, attr, help_text in (
            ("kv_storage_commits", "batches", "Group commits (engine batches) of the store"),
            ("kv_storage_rows", "steps", "Rows written by those commits (rows / commits: "
                                         "the mean batch size)"),
            ("kv_storage_commit_seconds", "apply_seconds",
             "Seconds spent committing (with fsync; / commits: the mean commit latency)"),
        ):
            if hasattr(store, attr):
                yield CounterMetricFamily(metric, help_text, value=getattr(store, attr))
        yield from _storage_families(self.observer)
        yield from _repair_debt_families(node)
        if node.raft is not None:
            s = node.raft.status()
            if "term" in s:
                for metric, key in (("kv_raft_term", "term"),
                                    ("kv_raft_commit_index", "commit_index"),
                                    ("kv_raft_applied_index", "applied_index"),
                                    ("kv_raft_last_index", "last_index")):
                    yield GaugeMetricFamily(metric, f"Raft {key.replace('_', ' ')}",
                                            value=s[key])
                yield GaugeMetricFamily("kv_raft_is_leader", "1 on the Raft leader",
                                        value=1.0 if s["role"] == "leader" else 0.0)
                lag = GaugeMetricFamily("kv_raft_follower_lag",
                                        "Entries a member is behind (on the leader)",
                                        labels=["member"])
                for m in s["members"]:
                    if m["lag"] is not None:
                        lag.add_metric([m["id"]], m["lag"])
                yield lag
        faults = self.observer.faults
        if faults is not None:
            active = GaugeMetricFamily("kv_chaos_faults_active", "Active chaos faults",
                                       labels=["kind"])
            counts: dict[str, int] = defaultdict(int)
            for f in faults.faults.values():
                counts[f.kind] += 1
            for kind in ("partition", "delay", "drop"):
                active.add_metric([kind], counts[kind])
            yield active
            applied = CounterMetricFamily("kv_chaos_applied",
                                          "Batches cut, dropped or delayed by chaos",
                                          labels=["kind"])
            for kind, value in sorted(faults.counts.items()):
                applied.add_metric([kind], value)
            yield applied


def _histogram(name: str, help_text: str, hist: LatencyHistogram) -> HistogramMetricFamily:
    buckets = hist.buckets()
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=hist.sum)


def _storage_families(observer: Observer):
    node = observer.node
    store = node.store
    yield _histogram("kv_storage_write_seconds", "One store update as its caller waits for "
                     "it: queueing, its group-commit batch, the commit", store.write_latency)
    commit = getattr(store.engine, "commit_latency", None)
    if commit is not None:  # the durable engine (none in memory)
        yield _histogram("kv_storage_fsync_seconds", "The COMMIT of one batch: WAL append "
                         "and fsync (with --sync full)", commit)
    yield _histogram("kv_storage_compaction_seconds", "One tombstone collection pass "
                     "(purges to markers, expired markers dropped) after a repair session",
                     node.antientropy.compaction_latency)
    census = observer.census
    if census.finished_at is not None:
        for metric, value, help_text in (
            ("kv_storage_records", census.records, "Records in the store (census)"),
            ("kv_storage_tombstones", census.tombstones,
             "Records whose every sibling is a deletion, not yet collected (census)"),
            ("kv_storage_purge_markers", census.markers,
             "Markers of collected tombstones, until they expire (census)"),
            ("kv_storage_census_age_seconds", census.age(),
             "Seconds since the census behind kv_storage_records/tombstones/markers"),
        ):
            yield GaugeMetricFamily(metric, help_text, value=value)
        disk = GaugeMetricFamily("kv_storage_disk_bytes",
                                 "Bytes on disk under the data directory, by top-level file",
                                 labels=["file"])
        for name, size in sorted(census.disk.items()):
            disk.add_metric([name], size)
        yield disk


def _repair_debt_families(node: Node):
    """What the last anti-entropy session with each peer found: the repair debt of the
    ranges this node shares with it (hints pending per target: kv_hints_pending)."""
    ae = node.antientropy
    now_ms = ae.clock_ms()
    leaves = GaugeMetricFamily("kv_repair_ranges_differing",
                               "Merkle leaves (token ranges) that differed at the last "
                               "session with the peer", labels=["peer"])
    keys = GaugeMetricFamily("kv_repair_keys_differing",
                             "Keys that differed (and were moved) at the last session",
                             labels=["peer"])
    age = GaugeMetricFamily("kv_repair_last_session_age_seconds",
                            "Seconds since the last anti-entropy session with the peer",
                            labels=["peer"])
    for peer, (at_ms, differing, moved) in sorted(ae.last_session.items()):
        leaves.add_metric([peer], differing)
        keys.add_metric([peer], moved)
        age.add_metric([peer], max(0.0, (now_ms - at_ms) / 1000))
    yield leaves
    yield keys
    yield age
    yield GaugeMetricFamily("kv_repair_ranges", "Merkle leaves (token ranges) a session "
                            "compares", value=2 ** ae.depth)


class ChaosServicer(chaos_pb2_grpc.ChaosServicer):
    def __init__(self, node: Node, faults: FaultFilter, enabled: bool) -> None:
        self.node = node
        self.faults = faults
        self.enabled = enabled

    async def _check(self, context) -> None:
        if not self.enabled:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the chaos API is off on {self.node.node_id}; start the node "
                                "with --chaos (kv cluster up does) to allow fault injection")

    def _reply(self, healed: int = 0) -> chaos_pb2.ChaosState:
        state = chaos_pb2.ChaosState(node_id=self.node.node_id, healed=healed)
        _chaos_state(self.faults, state.faults, state.events)
        return state

    async def Inject(self, request: chaos_pb2.FaultRequest, context) -> chaos_pb2.ChaosState:
        await self._check(context)
        known = set(self.node.membership.members)
        unknown = sorted(set(request.peers) - known)
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown nodes {unknown}; members are {sorted(known)}")
        try:
            self.faults.add(request.kind, list(request.peers),
                            asyncio.get_running_loop().time(),
                            duration=request.duration_s or DEFAULT_DURATION,
                            delay_ms=request.delay_ms, jitter_ms=request.jitter_ms,
                            rate=request.rate, note=request.note, wall=time.time())
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._reply()

    async def Heal(self, request: chaos_pb2.HealRequest, context) -> chaos_pb2.ChaosState:
        await self._check(context)
        return self._reply(self.faults.heal(asyncio.get_running_loop().time(), time.time()))

    async def State(self, request, context) -> chaos_pb2.ChaosState:
        return self._reply()


class ObserveServicer(observe_pb2_grpc.ObserveServicer):
    def __init__(self, observer: Observer, logs=None) -> None:
        self.observer = observer
        self.logs = logs

    async def State(self, request, context) -> observe_pb2.NodeState:
        return await self.observer.state()

    async def Logs(self, request: observe_pb2.LogsRequest, context) -> observe_pb2.LogsReply:
        if not request.request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        lines = self.logs.find(request.request_id, request.limit or 1000) if self.logs else []
        return observe_pb2.LogsReply(node_id=self.observer.node.node_id, lines=lines)
