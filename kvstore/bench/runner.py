"""The benchmark runner: load phase, ceilings, one measured phase per consistency level.

Closed-loop mode (default): `concurrency` workers each issue the next operation as soon as
the previous one finished. Fixed-rate mode (`rate`): operations are scheduled at
start + i/rate and latency is measured from that *intended* start, so a stalled server is
charged for the requests it delayed (coordinated-omission correction, as wrk2 does); the
time from the actual send is kept as `service_time`.

Everything runs in one asyncio loop in this process with one pipelining AsyncClient; the
harness's own CPU cost is part of what is measured, the same for every level and for the
ceiling, which is why they are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
import os
import platform
import random
import signal
import socket
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kvstore._proto import client_pb2 as cpb
from kvstore.bench import cpu as cpu_meter
from kvstore.bench.keys import key_name, make_keys
from kvstore.bench.levels import Level, parse_levels
from kvstore.bench.staleness import StalenessDetector, decode_write_id, encode_value
from kvstore.bench.stats import Recorder
from kvstore.bench.workloads import (
    CEILINGS,
    NULL,
    PING,
    READ,
    RMW,
    UPDATE,
    Workload,
    get_workload,
)
from kvstore.client import AsyncClient, InvalidArgument, KVError, Unavailable
from kvstore.node.local_cluster import LocalCluster

RESULTS_SCHEMA = 1
# Every timestamp comes from here: loop.time() is cached per loop iteration (uvloop: 1 ms
# granularity), which would quantize latencies and blur the order of an ack and a read.
now = time.perf_counter
PROBE_KEYS = 16
FAULT_KINDS = ("kill", "partition", "delay", "drop")
RECOVERED_SHARE = 2 / 3  # of the pre-fault throughput, averaged to the end of the run
PROBE_DELAYS_S = (0.0, 0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclass
class BenchConfig:
    """What to run. Durations are seconds; `local_nodes` > 0 starts a private cluster."""

    endpoints: list[str] = field(default_factory=list)
    workload: str = "a"
    levels: list[str] = field(default_factory=lambda: ["ONE", "QUORUM", "ALL"])
    duration_s: float = 30.0
    warmup_s: float = 2.0
    concurrency: int = 64
    records: int = 10_000
    value_size: int = 100
    distribution: str = "uniform"
    rate: float | None = None
    seed: int = 1
    load: bool = True
    load_consistency: str = "ALL"
    ceiling: bool = True
    ceiling_duration_s: float | None = None  # default: duration_s
    local_nodes: int = 0
    replication_factor: int = 3
    sync: str = "full"
    fault: bool = False
    fault_node: str | None = None  # default: the last node
    # kill: SIGKILL and restart (local clusters); partition | delay | drop: through the
    # nodes' chaos API (any cluster whose nodes run with --chaos), from 1/3 to 2/3 of a run
    fault_kind: str = "kill"
    probes: int = 2  # staleness probe workers per level (write, wait, read); 0: none
    interval_s: float = 1.0
    timeout_s: float = 5.0
    uvloop: bool = True
    route: bool = True  # token-aware routing in the client (False: round-robin)

    def validate(self) -> None:
        get_workload(self.workload)
        parse_levels(self.levels)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.records < 1:
            raise ValueError("records must be at least 1")
        if self.value_size < 8:
            raise ValueError("value size must be at least 8 bytes (the write id)")
        if self.distribution not in ("uniform", "zipfian"):
            raise ValueError("distribution must be uniform or zipfian")
        if self.probes < 0:
            raise ValueError("probes must not be negative")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.fault_kind not in FAULT_KINDS:
            raise ValueError(f"fault must be one of {', '.join(FAULT_KINDS)}")
        if self.fault and self.fault_kind == "kill" and not self.local_nodes:
            raise ValueError("--fault kill needs a cluster the harness owns: use --local N "
                             "(partition, delay and drop work on any cluster run with "
                             "--chaos)")
        if not self.local_nodes and not self.endpoints:
            raise ValueError("give endpoints, or --local N to start a local cluster")


class Progress(Protocol):
    """Live display hooks (the CLI draws a rich table; scripts may pass None)."""

    def start(self, phase: str, total: float, unit: str) -> None: ...

    def update(self, phase: str, done: float, snapshot: dict[str, Any]) -> None: ...

    def finish(self, phase: str, result: dict[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...


def error_kind(exc: BaseException) -> str:
    """The name errors are counted under: the client's error class, else the Python type."""
    if isinstance(exc, KVError):
        return type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "Timeout"
    return f"other:{type(exc).__name__}"


class Bench:
    """One benchmark session against one cluster (a client, contexts, the staleness record)."""

    def __init__(self, config: BenchConfig, client: AsyncClient, *,
                 cluster: LocalCluster | None = None, progress: Progress | None = None) -> None:
        self.config = config
        self.client = client
        self.cluster = cluster
        self.progress = progress
        self.detector = StalenessDetector()
        self.contexts: dict[str, bytes] = {}
        self.next_write_id = 1
        self.endpoint_cycle = 0
        self.payload = b"p" * config.value_size
        self.replication_factor = config.replication_factor
        self.origin = now()  # start of the phase being measured (timeline zero)
        self.probe_requests = 0  # probe puts and gets sent in the measured window

    # -- operations ------------------------------------------------------------------
    def _write_id(self) -> int:
        wid = self.next_write_id
        self.next_write_id += 1
        return wid

    async def _read(self, key: str, level: Level, started: float, judge: bool,
                    rec: Recorder | None) -> bytes:
        result = await self.client.get(key, consistency=level.read,
                                       timeout=self.config.timeout_s)
        self.contexts[key] = result.context
        if judge:
            ids = [decode_write_id(v.value) for v in result.siblings if not v.tombstone]
            if self.detector.read(key, started, ids) and rec is not None:
                rec.stale(now() - self.origin)
        if rec is not None:
            rec.siblings(len(result.siblings))
        return result.context

    async def _update(self, key: str, level: Level, context: bytes | None = None,
                      rec: Recorder | None = None) -> None:
        wid = self._write_id()
        if context is None:
            context = self.contexts.get(key, b"")
        result = await self.client.put(key, encode_value(wid, self.config.value_size),
                                       context=context, consistency=level.write,
                                       timeout=self.config.timeout_s)
        # The put's context covers what this write had seen plus the write itself, never
        # the concurrent siblings kept beside it, so reusing it does not resolve them.
        self.contexts[key] = result.context
        self.detector.write_acked(key, wid, now())
        if rec is not None:
            rec.write(result.concurrent)

    async def do(self, op: str, key: str, level: Level | None, started: float,
                 rec: Recorder | None) -> None:
        """Run one operation; raises what the client raised."""
        if op == READ:
            await self._read(key, level, started, rec is not None, rec)
        elif op == UPDATE:
            await self._update(key, level, rec=rec)
        elif op == RMW:
            context = await self._read(key, level, started, rec is not None, rec)
            await self._update(key, level, context, rec)
        elif op == PING:
            endpoints = self.client.endpoints
            self.endpoint_cycle = (self.endpoint_cycle + 1) % len(endpoints)
            await self.client.ping(self.payload, endpoint=endpoints[self.endpoint_cycle].address)
        elif op == NULL:
            try:
                await self.client.execute(
                    cpb.ClientRequest(timeout_ms=int(self.config.timeout_s * 1000)))
            except InvalidArgument:
                return  # the expected answer: rejected before any storage work
            raise RuntimeError("the server accepted a request naming no operation")
        else:
            raise ValueError(f"unknown operation {op!r}")

    # -- phases ----------------------------------------------------------------------
    async def load(self) -> dict[str, Any]:
        """Write every record once (at load_consistency) so reads find data and a write id.

        Each record is read first (for its context) and then written, so it is safe to
        load again into a cluster that holds an earlier run's data.
        """
        cfg = self.config
        level = Level.parse(cfg.load_consistency)
        rec = Recorder(cfg.interval_s)
        loop = asyncio.get_running_loop()
        start = now()
        next_index = 0
        if self.progress:
            self.progress.start("load", cfg.records, "records")

        async def worker() -> None:
            nonlocal next_index
            while next_index < cfg.records:
                index = next_index
                next_index += 1
                key = key_name(index)
                rec.issue()
                t0 = now()
                try:
                    # read the context first: a rerun against the same cluster then
                    # supersedes the old value instead of adding a sibling to it
                    context = (await self.client.get(key, consistency=level.read,
                                                     timeout=cfg.timeout_s)).context
                    await self._update(key, level, context)
                except Exception as exc:
                    rec.failure(UPDATE, error_kind(exc), now() - start, str(exc))
                    continue
                done = now()
                rec.success(UPDATE, done - t0, done - start)

        ticker = loop.create_task(self._tick("load", rec, start, lambda: rec.completed))
        try:
            await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, cfg.records))))
        finally:
            ticker.cancel()
        result = {"records": cfg.records, "consistency": level.name,
                  **rec.to_json(now() - start)}
        result.pop("timeline")
        if self.progress:
            self.progress.finish("load", result)
        return result

    async def _tick(self, phase: str, rec: Recorder, origin: float, done) -> None:
        if self.progress is None:
            return
        last_ok, last_t = 0, now()
        while True:
            await asyncio.sleep(0.5)
            t = now()
            rate = (rec.ok - last_ok) / max(1e-9, t - last_t)
            last_ok, last_t = rec.ok, t
            p99 = rec.hist.get_value_at_percentile(99.0) / 1000 if rec.ok else None
            self.progress.update(phase, done(), {"ops": rec.ok, "ops_per_s": rate,
                                                 "p99_ms": p99,
                                                 "errors": sum(rec.errors.values())})

    async def phase(self, name: str, workload: Workload, level: Level | None,
                    duration_s: float, *, fault: bool = False) -> dict[str, Any]:
        """One measured run: warm up, then measure for `duration_s`; returns its figures."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        rec = Recorder(cfg.interval_s)
        self.detector.reset_stats()
        begin = now()
        measure_start = begin + cfg.warmup_s
        self.origin = measure_start
        end = measure_start + duration_s
        seed_base = zlib.crc32(f"{cfg.seed}:{name}".encode())  # stable across processes
        slots = 0
        rate = cfg.rate if workload.name not in CEILINGS else None

        async def closed_worker(wid: int) -> None:
            rng = random.Random(seed_base * 1000 + wid)
            choose, keys = workload.chooser(rng), make_keys(cfg.distribution, cfg.records, rng)
            while True:
                started = now()
                if started >= end:
                    return
                measured = started >= measure_start
                op, key = choose(), key_name(keys.next_index())
                await self._one(op, key, level, rec if measured else None, started, started,
                                measure_start)

        async def rate_worker(wid: int) -> None:
            nonlocal slots
            rng = random.Random(seed_base * 1000 + wid)
            choose, keys = workload.chooser(rng), make_keys(cfg.distribution, cfg.records, rng)
            give_up = end + max(1.0, 0.1 * duration_s)  # a hopeless backlog is not drained
            while True:
                intended = begin + slots / rate
                if intended >= end or now() >= give_up:
                    return
                slots += 1
                delay = intended - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                measured = intended >= measure_start
                op, key = choose(), key_name(keys.next_index())
                await self._one(op, key, level, rec if measured else None, intended,
                                now(), measure_start)

        if self.progress:
            self.progress.start(name, cfg.warmup_s + duration_s, "s")
        ticker = loop.create_task(self._tick(name, rec, begin, lambda: now() - begin))
        fault_task = loop.create_task(self._fault(measure_start, duration_s)) if fault else None
        worker = rate_worker if rate else closed_worker
        probes = StalenessDetector()
        probe_errors: Counter[str] = Counter()
        tasks = [worker(i) for i in range(cfg.concurrency)]
        if level is not None:
            tasks += [self._probe(i, level, measure_start, end, probes, probe_errors)
                      for i in range(cfg.probes)]
        meter = self._cpu_meter()
        self.probe_requests = 0
        if meter is not None:  # started when the measured window opens
            loop.call_at(loop.time() + max(0.0, measure_start - now()), meter.start)
        try:
            await asyncio.gather(*tasks)
        finally:
            ticker.cancel()
        elapsed = now() - measure_start
        cpu = meter.stop() if meter is not None and meter.started else None
        result: dict[str, Any] = {"phase": name, "workload": workload.name}
        if level is not None:
            r, w = level.counts(self.replication_factor)
            result.update(level=level.name, read=level.read, write=level.write, r=r, w=w,
                          r_plus_w_gt_n=r + w > self.replication_factor)
        result.update(rec.to_json(elapsed))
        if cpu is not None:
            requests = rec.issued + self.probe_requests
            result["cpu"] = {**cpu, "requests": requests, "probe_requests": self.probe_requests,
                             **cpu_meter.per_op(cpu, requests)}
        if rate:
            result["target_rate"] = rate
            # slots due in the measured window that were never sent (backlog given up):
            # their latency is unknown, so say how many there were
            due = math.ceil((end - begin) * rate) - math.ceil((measure_start - begin) * rate)
            result["rate_unsent"] = max(0, due - rec.issued)
        if workload.reads and level is not None:
            result["staleness"] = self.detector.stats.to_json()
        if level is not None and cfg.probes:
            result["staleness_probes"] = {**probes.stats.to_json(), "workers": cfg.probes,
                                          "errors": dict(probe_errors)}
        if fault_task is not None:
            events = await fault_task
            result["fault"] = analyze_fault(result["timeline"], cfg.interval_s, duration_s,
                                            events)
        if self.progress:
            self.progress.finish(name, result)
        return result

    def _cpu_meter(self) -> cpu_meter.CpuMeter | None:
        """A meter of the node processes' CPU (only for a cluster this harness started)."""
        if self.cluster is None or not cpu_meter.available():
            return None
        return cpu_meter.CpuMeter({n.id: n.pid for n in self.cluster.nodes if n.pid})

    async def _probe(self, wid: int, level: Level, measure_start: float, end: float,
                     detector: StalenessDetector, errors: Counter[str]) -> None:
        """Write a key, wait a little, read it back at the level: the PBS measurement.

        Each probe worker owns its keys (no concurrent writers), cycles through
        PROBE_DELAYS_S, and its read goes to whichever node the client's round-robin picks,
        usually not the write's coordinator. Probe operations are not in the workload's
        figures; they add a trickle of writes (one per probe per round) to every workload.
        """
        contexts: dict[str, bytes] = {}
        round_ = 0
        while now() < end:
            key = f"probe:{wid}:{round_ % PROBE_KEYS}"
            delay = PROBE_DELAYS_S[round_ % len(PROBE_DELAYS_S)]
            round_ += 1
            write_id = self._write_id()
            if now() >= measure_start:
                self.probe_requests += 2  # its put and its get
            try:
                put = await self.client.put(key, encode_value(write_id, self.config.value_size),
                                            context=contexts.get(key, b""),
                                            consistency=level.write,
                                            timeout=self.config.timeout_s)
                detector.write_acked(key, write_id, now())
                contexts[key] = put.context
                if delay:
                    await asyncio.sleep(delay)
                started = now()
                got = await self.client.get(key, consistency=level.read,
                                            timeout=self.config.timeout_s)
                contexts[key] = got.context
            except Exception as exc:
                errors[error_kind(exc)] += 1
                await asyncio.sleep(0.01)  # do not spin on a dead cluster
                continue
            if started >= measure_start:
                detector.read(key, started, [decode_write_id(v.value) for v in got.siblings
                                             if not v.tombstone])

    async def _one(self, op: str, key: str, level: Level | None, rec: Recorder | None,
                   intended: float, sent: float, origin: float) -> None:
        if rec is not None:
            rec.issue()
        try:
            await self.do(op, key, level, sent, rec)
        except Exception as exc:
            if rec is not None:
                rec.failure(op, error_kind(exc), now() - origin, str(exc))
            return
        if rec is not None:
            done = now()
            service = done - sent if intended != sent else None
            rec.success(op, done - intended, done - origin, service)

    async def _fault(self, measure_start: float, duration_s: float) -> dict[str, Any]:
        """Kill a node a third of the way in, restart it at two thirds; when things happened.
        Network faults (partition, delay, drop) go through the nodes' chaos API instead."""
        if self.config.fault_kind != "kill":
            return await self._chaos_fault(measure_start, duration_s)
        assert self.cluster is not None
        node = self.config.fault_node or self.cluster.nodes[-1].id
        events: dict[str, Any] = {"node": node}
        await asyncio.sleep(max(0.0, measure_start + duration_s / 3 - now()))
        events["kill_s"] = now() - measure_start
        await asyncio.to_thread(self.cluster.kill, node, signal.SIGKILL)
        if self.progress:
            self.progress.note(f"fault: killed {node} (SIGKILL)")
        await asyncio.sleep(max(0.0, measure_start + 2 * duration_s / 3 - now()))
        events["restart_s"] = now() - measure_start
        await asyncio.to_thread(self.cluster.start_node, node)
        try:
            await asyncio.to_thread(self.cluster.wait_healthy, 60.0, [node])
            events["healthy_s"] = now() - measure_start
        except (TimeoutError, RuntimeError) as exc:
            events["healthy_error"] = str(exc)
        if self.progress:
            self.progress.note(f"fault: {node} restarted, serving again at "
                               f"{events.get('healthy_s', float('nan')):.1f} s")
        return events

    async def _chaos_fault(self, measure_start: float, duration_s: float) -> dict[str, Any]:
        """A network fault on one node's links from 1/3 to 2/3 of the run (it also expires
        by itself shortly after, should the heal be lost). Keys kill_s / restart_s mark its
        start and end, as for a kill."""
        import grpc

        from kvstore._proto import chaos_pb2, chaos_pb2_grpc

        kind = self.config.fault_kind
        info = await self.client.info()
        members = {m.id: m.address for m in info.members}
        # Reach each member through the endpoint given for it where there is one: from a
        # host, a compose node's own address (nN:7001) does not resolve.
        for ep in self.client.endpoints:
            try:
                members[(await self.client.info(ep.address)).node_id] = ep.address
            except KVError:
                continue
        node = self.config.fault_node or sorted(members)[-1]
        if node not in members:
            raise ValueError(f"fault node {node!r} is not a member ({sorted(members)})")
        others = [m for m in members if m != node]
        params = {"delay": {"delay_ms": 200.0, "jitter_ms": 50.0},
                  "drop": {"rate": 0.3}}.get(kind, {})
        expiry = duration_s / 3 + 5.0
        plan = {node: chaos_pb2.FaultRequest(kind=kind, peers=others, duration_s=expiry,
                                             note=f"kv bench --fault {kind}", **params)}
        plan.update({m: chaos_pb2.FaultRequest(kind=kind, peers=[node], duration_s=expiry,
                                               note=f"kv bench --fault {kind}", **params)
                     for m in others})
        events: dict[str, Any] = {"node": node, "kind": kind, **params}

        async def each(method: str, requests: dict[str, Any]) -> list[str]:
            # The benchmark's own credentials (kv --tls/--cert/--user, as every other
            # command): a secure cluster's nodes refuse a plaintext or anonymous chaos call.
            errors = []
            for member, request in requests.items():
                async with self.client.credentials.aio_channel(members[member],
                                                               None) as channel:
                    try:
                        await getattr(chaos_pb2_grpc.ChaosStub(channel), method)(
                            request, timeout=5, metadata=await self.client.metadata())
                    except grpc.aio.AioRpcError as exc:
                        errors.append(f"{member}: {exc.code().name}: {exc.details()}")
                    except KVError as exc:  # could not log in
                        errors.append(f"{member}: {type(exc).__name__}: {exc}")
            return errors

        await asyncio.sleep(max(0.0, measure_start + duration_s / 3 - now()))
        events["kill_s"] = now() - measure_start
        errors = await each("Inject", plan)
        if errors:
            events["fault_errors"] = errors
        if self.progress:
            self.progress.note(f"fault: {kind} on {node}'s links"
                               + (f" (refused: {errors[0]})" if errors else ""))
        await asyncio.sleep(max(0.0, measure_start + 2 * duration_s / 3 - now()))
        events["restart_s"] = now() - measure_start
        heal_errors = await each("Heal", {m: chaos_pb2.HealRequest() for m in members})
        if heal_errors:  # the fault then ends when it expires (duration / 3 + 5 s)
            events["heal_errors"] = heal_errors
        events["healthy_s"] = now() - measure_start
        if self.progress:
            self.progress.note(f"fault: healed at {events['restart_s']:.1f} s")
        return events

    # -- the whole session -----------------------------------------------------------
    async def cluster_info(self) -> dict[str, Any]:
        nodes = []
        for ep in list(self.client.endpoints):
            try:
                info = await self.client.info(ep.address)
            except Exception as exc:
                nodes.append({"address": ep.address, "error": str(exc)})
                continue
            nodes.append({"id": info.node_id, "address": info.address,
                          "version": info.version, "vnodes": info.vnodes,
                          "replication_factor": info.replication_factor,
                          "members": len(info.members), "keys_stored": info.keys_stored})
        known = [n for n in nodes if "error" not in n]
        if not known:
            raise Unavailable("no node answered: " + "; ".join(
                f"{n['address']}: {n['error']}" for n in nodes) + ". Is the cluster running? "
                "Start one with `kv cluster up`, or use --local N.")
        if known:
            self.replication_factor = known[0]["replication_factor"]
        return {"endpoints": [ep.address for ep in self.client.endpoints],
                "size": max((n["members"] for n in known), default=len(nodes)),
                "replication_factor": self.replication_factor, "nodes": nodes}

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        workload = get_workload(cfg.workload)
        levels = parse_levels(cfg.levels)
        results: dict[str, Any] = {"schema": RESULTS_SCHEMA,
                                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime())}
        machine = machine_info()
        results["cluster"] = await self.cluster_info()
        results["config"] = {**asdict(cfg), "workload_description": workload.ycsb,
                             "mix": dict(workload.mix)}
        results["versions"] = versions()
        results["load"] = await self.load() if cfg.load else None
        ceilings: dict[str, Any] = {}
        if cfg.ceiling:
            duration = cfg.ceiling_duration_s or cfg.duration_s
            for name, ceiling in CEILINGS.items():
                ceilings[name] = await self.phase(f"ceiling:{name}", ceiling, None, duration)
        results["ceiling"] = ceilings
        results["levels"] = []
        for level in levels:
            result = await self.phase(level.name, workload, level, cfg.duration_s,
                                      fault=cfg.fault)
            for name, ceiling in ceilings.items():
                if ceiling["ops_per_s"]:
                    result[f"fraction_of_{name}_ceiling"] = (result["ops_per_s"]
                                                             / ceiling["ops_per_s"])
            results["levels"].append(result)
        machine["loadavg_end"] = list(os.getloadavg())
        results["machine"] = machine
        results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return results


def analyze_fault(timeline: list[dict[str, Any]], interval_s: float, duration_s: float,
                  events: dict[str, Any]) -> dict[str, Any]:
    """Errors, latency spike and recovery time around a node kill, from the timeline.

    Baseline: the full intervals before the kill. Recovered: from the first interval after
    the kill from which no interval has errors and the mean throughput to the end is at
    least RECOVERED_SHARE of the baseline (a mean, not every interval: the machine is
    noisy).
    recovery_s counts from the kill; errors_stopped_s is the end of the last interval
    with errors, also from the kill.
    """
    out: dict[str, Any] = dict(events)
    kill = events.get("kill_s")
    if kill is None:
        return out
    full = [iv for iv in timeline if iv["t_s"] + interval_s <= duration_s + 1e-9]
    before = [iv for iv in full if iv["t_s"] + interval_s <= kill]
    after = [iv for iv in timeline if iv["t_s"] + interval_s > kill]
    after_full = [iv for iv in full if iv["t_s"] + interval_s > kill]
    base_ops = sum(iv["ops_per_s"] for iv in before) / len(before) if before else None
    base_p99 = sorted(iv["p99_ms"] for iv in before if iv["p99_ms"] is not None)
    out["baseline_ops_per_s"] = base_ops
    out["baseline_p99_ms"] = base_p99[len(base_p99) // 2] if base_p99 else None
    spikes = [iv["p99_ms"] for iv in after if iv["p99_ms"] is not None]
    out["spike_p99_ms"] = max(spikes) if spikes else None
    out["errors_after_kill"] = sum(iv["errors"] for iv in after)
    out["stale_reads_after_kill"] = sum(iv.get("stale_reads", 0) for iv in after)
    out["min_ops_per_s_after_kill"] = min((iv["ops_per_s"] for iv in after_full), default=None)
    with_errors = [iv for iv in after if iv["errors"]]
    out["errors_stopped_s"] = (max(0.0, with_errors[-1]["t_s"] + interval_s - kill)
                               if with_errors else 0.0)
    recovered_at = None
    last_error = max((i for i, iv in enumerate(after_full) if iv["errors"]), default=-1)
    if not with_errors or with_errors[-1] in after_full:  # no errors in a partial tail
        for k in range(last_error + 1, len(after_full)):
            tail = after_full[k:]
            mean = sum(iv["ops_per_s"] for iv in tail) / len(tail)
            if base_ops is None or mean >= RECOVERED_SHARE * base_ops:
                recovered_at = after_full[k]["t_s"]
                break
    out["recovered_at_s"] = recovered_at
    out["recovery_s"] = max(0.0, recovered_at - kill) if recovered_at is not None else None
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
                break
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "memory_bytes": memory,
            "python": sys.version.split()[0], "loadavg_start": list(os.getloadavg())}


def versions() -> dict[str, str]:
    out = {}
    for dist in ("kvstore", "grpcio", "protobuf", "hdrhistogram", "uvloop", "rich",
                 "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free now (bound together so they differ)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


async def run_async(config: BenchConfig, *, progress: Progress | None = None,
                    cluster: LocalCluster | None = None, credentials=None) -> dict[str, Any]:
    """Run the benchmark against config.endpoints (or `cluster`); returns the results.
    `credentials`: client/security.Credentials for a --tls/--auth cluster."""
    config.validate()
    endpoints = cluster.endpoints() if cluster is not None else config.endpoints
    async with AsyncClient(endpoints, timeout=config.timeout_s, credentials=credentials,
                           route=config.route) as client:
        if config.route:
            await client.refresh_ring()  # route from the first request on
        bench = Bench(config, client, cluster=cluster, progress=progress)
        results = await bench.run()
    if cluster is not None:
        results["cluster"]["local"] = {"nodes": len(cluster.nodes), "sync": config.sync,
                                       "data_root": str(cluster.data_root)}
    results["config"]["event_loop"] = type(asyncio.get_running_loop()).__module__
    return results


def run(config: BenchConfig, *, progress: Progress | None = None,
        credentials=None) -> dict[str, Any]:
    """Blocking entry point: starts a local cluster if asked, runs, always stops it."""
    config.validate()
    loop_factory = None
    if config.uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
    with contextlib.ExitStack() as stack:
        cluster = None
        if config.local_nodes:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kv-bench-")))
            cluster = LocalCluster(root / "data", nodes=config.local_nodes,
                                   ports=free_ports(config.local_nodes),
                                   replication_factor=min(config.replication_factor,
                                                          config.local_nodes),
                                   extra_args=["--sync", config.sync],
                                   chaos=config.fault and config.fault_kind != "kill")
            if progress:
                progress.note(f"starting a local cluster of {config.local_nodes} nodes "
                              f"(sync={config.sync}) in {root}")
            stack.callback(cluster.stop)
            cluster.start()
            cluster.wait_healthy(timeout=60)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run_async(config, progress=progress, cluster=cluster,
                                        credentials=credentials))
