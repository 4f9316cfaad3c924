"""Observability of one node: Prometheus metrics, the node's state view, the chaos API.

* `Observer` keeps the per-request statistics (counts, errors, a window of latencies by
  op and level), the hint-delivery rate, and builds `NodeState` (observe.proto): what
  `kv status` and the dashboard show.
* `NodeCollector` is a prometheus-client collector that reads the node's services at scrape
  time (gossip phi, hints, repair, Raft, chaos), next to the request counters and latency
  histograms updated on every request. Each node has its own `CollectorRegistry`, so
  several nodes can live in one process (tests).
* `ChaosServicer` and `ObserveServicer` are the gRPC faces (chaos.proto, observe.proto).
  The chaos API refuses with PERMISSION_DENIED unless the node runs with --chaos.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kvstore._proto import chaos_pb2, chaos_pb2_grpc, common_pb2, observe_pb2, observe_pb2_grpc
from kvstore._proto import client_pb2 as cpb
from kvstore.node.node import Node
from kvstore.transport.faults import DEFAULT_DURATION, FaultFilter

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
WINDOW = 1000          # latencies kept per (op, level) for p50/p99
RATE_WINDOW = 60.0     # seconds over which the hint delivery rate is measured


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

    async def refresh(self) -> None:
        """Read what the collector must not read on the event loop (the hint store)."""
        self.hints_cache = await self.node.handoff.pending_by_target()

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
                repair_keys_moved=0 if last is None else last[2]))
        state = observe_pb2.NodeState(
            node_id=node.node_id, address=node.config.address, wall_time=time.time(),
            uptime_s=time.monotonic() - self.started, members=members,
            keys_stored=await node.store.count(), metrics_url=self.metrics_url,
            replication_factor=node.config.replication_factor, vnodes=node.config.vnodes)
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
             "Quorum acks (replica or hint, counted or extra) and read repairs"),
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
