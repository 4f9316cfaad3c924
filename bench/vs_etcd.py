"""kvstore next to etcd, in one run on one machine: the same put and get load against both.

    python bench/vs_etcd.py --duration 20 --concurrency 64 --out bench/out/vs-etcd

Starts a 3-member etcd (Debian's `etcd-server`, fsync on: etcd always syncs its WAL) and
a 3-node durable kvstore (`--sync full`) on 127.0.0.1 with free ports in a temp
directory, loads the same records into both, then runs, one after the other and
alternating the order (so a change in machine load hits both alike):

* `put`: blind overwrites of 100-byte values (kvstore: QUORUM, with the context the
  harness last saw for the key, as `kv bench -w w`; etcd: `KV.Put`);
* `get`: kvstore QUORUM reads; etcd linearizable `KV.Range` (its default, a ReadIndex
  round to the leader: the read guarantee closest to R + W > N);
* `put ONE` / `get ONE`: the same kvstore load at consistency ONE (no etcd counterpart:
  etcd has no weaker write, and its serializable read is not measured here);
* `null`: kvstore's pipelined null request, the ceiling of its request path;
* `meta put` (unless `--no-meta`): puts on kvstore's Raft metadata group, next to etcd's
  puts (both are replicated logs with fsync). `--meta-only` runs just etcd put, meta put
  and etcd put again (the ratio uses the etcd phase run right after meta put).

Load generator: this one Python process (asyncio, uvloop when installed), `concurrency`
closed-loop workers per phase. kvstore goes through its own pipelining `AsyncClient`;
etcd through its gRPC API with grpcio (one channel per member, requests round-robin over
the members as etcd's clientv3 balancer does, unary calls multiplexed on HTTP/2). The
messages are built at run time from the field numbers of etcd's `rpc.proto`
(etcdserverpb.PutRequest/RangeRequest), so no etcd client package is needed. The
process's own CPU per operation is reported for every phase: a load generator that uses
most of a core would cap the numbers.

Every phase reports throughput, latency percentiles (HdrHistogram), errors, and the CPU
of the server processes per operation (summed over the 3, from /proc: independent of
machine load) and of the client. Writes DIR/results.json and DIR/results.png (matplotlib).
The ratios kvstore/etcd are taken from this one run. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kvstore.bench import cpu as cpu_meter
from kvstore.bench.keys import key_name
from kvstore.bench.levels import Level
from kvstore.bench.runner import Bench, BenchConfig, free_ports, machine_info, versions
from kvstore.bench.stats import Recorder
from kvstore.bench.workloads import CEILINGS, get_workload
from kvstore.client import AsyncClient
from kvstore.client.meta import AsyncMetaClient
from kvstore.core.errors import KVError
from kvstore.node.local_cluster import LocalCluster

now = time.perf_counter
INSTALL_HINT = ("etcd is not installed (no `etcd` on PATH). Install Debian's etcd-server: "
                "`sudo apt-get install -y etcd-server` (or pass --etcd PATH to an etcd binary). "
                "Its packaged service is not needed: this script starts its own members.")


class EtcdMissing(RuntimeError):
    pass


# -- etcd's wire messages, built from rpc.proto's field numbers ------------------------------
def _etcd_messages() -> dict[str, type]:
    f = descriptor_pb2.FileDescriptorProto(name="kvbench_etcd_subset.proto",
                                           package="etcdserverpb", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            field = m.field.add(name=fname, number=number, type=ftype,
                                label=T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name

    msg("ResponseHeader", ("cluster_id", 1, T.TYPE_UINT64, None, False),
        ("member_id", 2, T.TYPE_UINT64, None, False), ("revision", 3, T.TYPE_INT64, None, False),
        ("raft_term", 4, T.TYPE_UINT64, None, False))
    msg("KeyValue", ("key", 1, T.TYPE_BYTES, None, False),
        ("create_revision", 2, T.TYPE_INT64, None, False),
        ("mod_revision", 3, T.TYPE_INT64, None, False), ("version", 4, T.TYPE_INT64, None, False),
        ("value", 5, T.TYPE_BYTES, None, False), ("lease", 6, T.TYPE_INT64, None, False))
    msg("PutRequest", ("key", 1, T.TYPE_BYTES, None, False),
        ("value", 2, T.TYPE_BYTES, None, False))
    msg("PutResponse", ("header", 1, T.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader", False))
    msg("RangeRequest", ("key", 1, T.TYPE_BYTES, None, False),
        ("serializable", 7, T.TYPE_BOOL, None, False))
    msg("RangeResponse", ("header", 1, T.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader", False),
        ("kvs", 2, T.TYPE_MESSAGE, ".etcdserverpb.KeyValue", True),
        ("count", 4, T.TYPE_INT64, None, False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"etcdserverpb.{name}")) for name in ("PutRequest", "PutResponse", "RangeRequest",
                                              "RangeResponse")}


class EtcdClient:
    """Put and linearizable get over etcd's gRPC API, round-robin over the members."""

    def __init__(self, endpoints: list[str]) -> None:
        m = _etcd_messages()
        self.PutRequest, self.RangeRequest = m["PutRequest"], m["RangeRequest"]
        self.channels = [grpc.aio.insecure_channel(ep) for ep in endpoints]
        self.puts = [c.unary_unary("/etcdserverpb.KV/Put",
                                   request_serializer=m["PutRequest"].SerializeToString,
                                   response_deserializer=m["PutResponse"].FromString)
                     for c in self.channels]
        self.ranges = [c.unary_unary("/etcdserverpb.KV/Range",
                                     request_serializer=m["RangeRequest"].SerializeToString,
                                     response_deserializer=m["RangeResponse"].FromString)
                       for c in self.channels]
        self.next = 0

    def _pick(self) -> int:
        self.next = (self.next + 1) % len(self.channels)
        return self.next

    async def put(self, key: bytes, value: bytes, timeout: float) -> None:
        await self.puts[self._pick()](self.PutRequest(key=key, value=value), timeout=timeout)

    async def get(self, key: bytes, timeout: float) -> bytes | None:
        reply = await self.ranges[self._pick()](self.RangeRequest(key=key), timeout=timeout)
        return reply.kvs[0].value if reply.kvs else None

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


class EtcdCluster:
    """A 3-member etcd on 127.0.0.1 in `root`, started and stopped by this process."""

    def __init__(self, root: Path, binary: str, ports: list[int]) -> None:
        """`ports`: 2 per member (client, peer), from the same free_ports call as the
        kvstore nodes' ports, so the two clusters never pick the same one."""
        size = len(ports) // 2
        self.root, self.binary, self.size = root, binary, size
        self.client_urls = [f"http://127.0.0.1:{p}" for p in ports[:size]]
        self.peer_urls = [f"http://127.0.0.1:{p}" for p in ports[size:]]
        self.endpoints = [u.removeprefix("http://") for u in self.client_urls]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        initial = ",".join(f"e{i + 1}={u}" for i, u in enumerate(self.peer_urls))
        for i in range(self.size):
            name = f"e{i + 1}"
            log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            self.procs.append(subprocess.Popen(
                [self.binary, "--name", name, "--data-dir", str(self.root / name),
                 "--listen-client-urls", self.client_urls[i],
                 "--advertise-client-urls", self.client_urls[i],
                 "--listen-peer-urls", self.peer_urls[i],
                 "--initial-advertise-peer-urls", self.peer_urls[i],
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"kvbench-{os.getpid()}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
            log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until a put through every member succeeds (a leader is elected)."""
        client = EtcdClient(self.endpoints)
        deadline = now() + timeout
        try:
            for i in range(self.size):
                while True:
                    if self.procs[i].poll() is not None:
                        raise RuntimeError(f"etcd member e{i + 1} exited with code "
                                           f"{self.procs[i].returncode}; see "
                                           f"{self.root / f'e{i + 1}.log'}")
                    try:
                        await client.puts[i](client.PutRequest(key=b"ready", value=b"1"),
                                             timeout=1.0)
                        break
                    except grpc.aio.AioRpcError:
                        if now() > deadline:
                            raise TimeoutError(f"etcd not ready after {timeout:.0f} s") from None
                        await asyncio.sleep(0.2)
        finally:
            await client.close()

    def pids(self) -> dict[str, int]:
        return {f"e{i + 1}": p.pid for i, p in enumerate(self.procs)}

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             check=False).stdout
        return out.splitlines()[0].removeprefix("etcd Version: ") if out else "unknown"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- closed-loop phases for etcd and the metadata group ----------------------------------------
async def closed_loop(name: str, op, *, concurrency: int, warmup_s: float, duration_s: float,
                      records: int, pids: dict[str, int], seed: int) -> dict[str, Any]:
    """`concurrency` workers run `op(key_index)` back to back; figures like kv bench's."""
    rec = Recorder(1.0)
    begin = now()
    measure_start, end = begin + warmup_s, begin + warmup_s + duration_s
    meter = cpu_meter.CpuMeter(pids)
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + warmup_s, meter.start)

    async def worker(wid: int) -> None:
        rng = random.Random(seed * 1000 + wid)
        while (started := now()) < end:
            measured = started >= measure_start
            if measured:
                rec.issue()
            try:
                await op(rng.randrange(records))
            except Exception as exc:
                if measured:
                    rec.failure(name, type(exc).__name__, now() - measure_start, str(exc)[:200])
                continue
            if measured:
                done = now()
                rec.success(name, done - started, done - measure_start)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = now() - measure_start
    out: dict[str, Any] = {"phase": name, **rec.to_json(elapsed)}
    cpu = meter.stop()
    out["cpu"] = {**cpu, "requests": rec.issued, **cpu_meter.per_op(cpu, rec.issued)}
    return out


def _value(size: int, i: int) -> bytes:
    return i.to_bytes(8, "big") + b"v" * (size - 8)


async def run(opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    binary = shutil.which(opts.etcd or "etcd")
    if not binary:
        raise EtcdMissing(INSTALL_HINT if not opts.etcd
                          else f"--etcd {opts.etcd}: no such executable. " + INSTALL_HINT)
    results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": machine_info(), "versions": versions(),
                               "config": {k: v for k, v in vars(opts).items() if k != "out"},
                               "phases": {}}
    # one call for both clusters: ports from separate calls can repeat (a CI run had a
    # kvstore node's port taken by etcd: "unknown service kvstore.KV")
    ports = free_ports(6 + 3)
    etcd = EtcdCluster(root / "etcd", binary, ports[:6])
    (root / "etcd").mkdir()
    kv_args = ["--sync", opts.sync]
    if opts.meta:
        kv_args += ["--raft-voters", "n1,n2,n3"]
    cluster = LocalCluster(root / "kv", nodes=3, ports=ports[6:], replication_factor=3,
                           extra_args=kv_args, raft_bootstrap=opts.meta)
    results["versions"]["etcd"] = etcd.version()
    try:
        etcd.start()
        cluster.start()
        await asyncio.to_thread(cluster.wait_healthy, 60)
        await etcd.wait_ready()
        results["etcd"] = {"members": 3, "endpoints": etcd.endpoints, "fsync": True,
                           "client": "grpcio unary calls, round-robin over the members"}
        results["kvstore"] = {"nodes": 3, "sync": opts.sync, "replication_factor": 3,
                              "client": "kvstore AsyncClient (pipelined)"}
        phases = results["phases"]
        say = (lambda text: print(text, file=sys.stderr, flush=True)) if not opts.quiet \
            else (lambda text: None)

        etcd_client = EtcdClient(etcd.endpoints)
        timeout = opts.timeout
        say(f"loading {opts.records} records of {opts.value_size} B into both")
        sem = asyncio.Semaphore(opts.concurrency)

        async def etcd_load(i: int) -> None:
            async with sem:
                await etcd_client.put(key_name(i).encode(), _value(opts.value_size, i), timeout)

        await asyncio.gather(*(etcd_load(i) for i in range(opts.records)))
        cfg = BenchConfig(endpoints=cluster.endpoints(), workload="w", levels=["QUORUM"],
                          duration_s=opts.duration, warmup_s=opts.warmup,
                          concurrency=opts.concurrency, records=opts.records,
                          value_size=opts.value_size, probes=0, load_consistency="ALL",
                          timeout_s=timeout, seed=opts.seed)
        quorum, one = Level.parse("QUORUM"), Level.parse("ONE")
        async with AsyncClient(cluster.endpoints(), timeout=timeout) as kv_client:
            bench = Bench(cfg, kv_client, cluster=cluster)
            await bench.load()
            etcd_pids, kv_pids = etcd.pids(), {n.id: n.pid for n in cluster.nodes}
            common = dict(concurrency=opts.concurrency, warmup_s=opts.warmup,
                          duration_s=opts.duration, records=opts.records, seed=opts.seed)
            counter = iter(range(10**12))

            async def etcd_put(i: int) -> None:
                await etcd_client.put(key_name(i).encode(),
                                      _value(opts.value_size, next(counter)), timeout)

            async def etcd_get(i: int) -> None:
                if await etcd_client.get(key_name(i).encode(), timeout) is None:
                    raise KeyError(f"etcd lost {key_name(i)}")

            async def kv(name: str, workload: str, level: Level | None) -> dict[str, Any]:
                w = CEILINGS[workload] if workload in CEILINGS else get_workload(workload)
                return await bench.phase(name, w, level, opts.duration)

            steps = [
                ("etcd put", lambda: closed_loop("put", etcd_put, pids=etcd_pids, **common)),
                ("kvstore put QUORUM", lambda: kv("put QUORUM", "w", quorum)),
                ("kvstore get QUORUM", lambda: kv("get QUORUM", "c", quorum)),
                ("etcd get", lambda: closed_loop("get", etcd_get, pids=etcd_pids, **common)),
                ("kvstore put ONE", lambda: kv("put ONE", "w", one)),
                ("kvstore get ONE", lambda: kv("get ONE", "c", one)),
                ("kvstore null ceiling", lambda: kv("ceiling:null", "null", None)),
            ]
            if opts.meta_only:  # etcd put, meta put, etcd put again: the Raft-to-Raft pair
                steps = steps[:1]
            if opts.meta:
                steps += [("kvstore meta put", lambda: meta_phase(cluster, kv_pids, opts)),
                          ("etcd put (again, beside meta)",
                           lambda: closed_loop("put", etcd_put, pids=etcd_pids, **common))]
            for name, start in steps:
                say(f"running {name} for {opts.warmup:g}+{opts.duration:g} s ...")
                load_before = os.getloadavg()
                phase = await start()
                phase["loadavg_start"], phase["loadavg_end"] = list(load_before), list(
                    os.getloadavg())
                phases[name] = slim(phase)
                say("  " + line(name, phase))
        await etcd_client.close()
    finally:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(etcd.stop)
    results["ratios"] = ratios(results["phases"])
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


async def meta_phase(cluster: LocalCluster, pids: dict[str, int],
                     opts: argparse.Namespace) -> dict[str, Any]:
    """Puts on the Raft metadata group through the typed Meta API, as `kv meta put` sends
    them (one client with a session; it finds the leader and batches concurrent calls)."""
    client = AsyncMetaClient([n.address for n in cluster.nodes], timeout=opts.timeout)
    turn = iter(range(10**12))

    async def put(i: int) -> None:
        await client.put(f"bench/{i}", str(next(turn)))

    deadline = now() + 30
    while True:  # the group elects a leader after start
        try:
            await put(0)
            break
        except KVError:
            if now() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        return await closed_loop("meta put", put, pids=pids, concurrency=opts.concurrency,
                                 warmup_s=opts.warmup, duration_s=opts.duration,
                                 records=opts.records, seed=opts.seed)
    finally:
        await client.close()


def slim(phase: dict[str, Any]) -> dict[str, Any]:
    keep = ("ops", "issued", "elapsed_s", "ops_per_s", "p50_ms", "p95_ms", "p99_ms", "p999_ms",
            "mean_ms", "max_ms", "errors", "errors_total", "error_examples", "cpu", "timeline",
            "loadavg_start", "loadavg_end")
    return {k: phase[k] for k in keep if k in phase}


def line(name: str, p: dict[str, Any]) -> str:
    cpu = p.get("cpu") or {}
    node = cpu.get("node_cpu_us_per_op")
    client = cpu.get("client_cpu_us_per_op")
    return (f"{name}: {p['ops_per_s']:,.0f} ops/s, p50 {p['p50_ms']:.1f} ms, p99 "
            f"{p['p99_ms']:.1f} ms, p99.9 {p['p999_ms']:.1f} ms, errors {p['errors_total']}, "
            f"server CPU {node or 0:,.0f} µs/op, client CPU {client or 0:,.0f} µs/op")


def ratios(phases: dict[str, Any]) -> dict[str, float | None]:
    def r(a: str, b: str, key: str = "ops_per_s") -> float | None:
        if a in phases and b in phases and phases[b].get(key):
            return phases[a][key] / phases[b][key]
        return None

    out = {"put_throughput_kv_over_etcd": r("kvstore put QUORUM", "etcd put"),
           "get_throughput_kv_over_etcd": r("kvstore get QUORUM", "etcd get"),
           "put_p99_kv_over_etcd": r("kvstore put QUORUM", "etcd put", "p99_ms"),
           "get_p99_kv_over_etcd": r("kvstore get QUORUM", "etcd get", "p99_ms"),
           "put_fraction_of_null_ceiling": r("kvstore put QUORUM", "kvstore null ceiling"),
           "meta_put_over_etcd_put": r("kvstore meta put", "etcd put (again, beside meta)")}
    return out


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph = results["phases"]
    pairs = [("put", "etcd put", "kvstore put QUORUM"), ("get", "etcd get", "kvstore get QUORUM")]
    if "kvstore meta put" in ph:
        pairs.append(("meta put", "etcd put (again, beside meta)", "kvstore meta put"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [p[0] for p in pairs]
    x = range(len(pairs))
    width = 0.38
    for ax, key, title, log in ((axes[0], "ops_per_s", "throughput (ops/s)", False),
                                (axes[1], "p99_ms", "p99 latency (ms, log)", True)):
        e = [ph[a][key] for _, a, _ in pairs]
        k = [ph[b][key] for _, _, b in pairs]
        ax.bar([i - width / 2 for i in x], e, width, label="etcd 3 members", color="#888")
        ax.bar([i + width / 2 for i in x], k, width, label="kvstore 3 nodes", color="#2a7")
        ax.set_xticks(list(x), labels)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        if key == "ops_per_s" and "kvstore null ceiling" in ph:
            ax.axhline(ph["kvstore null ceiling"]["ops_per_s"], ls="--", color="#2a7", lw=1,
                       label="kvstore null-request ceiling")
        ax.legend(fontsize=8)
    ax = axes[2]
    names = [n for n in ph if ph[n].get("cpu", {}).get("node_cpu_us_per_op")]
    server = [ph[n]["cpu"]["node_cpu_us_per_op"] for n in names]
    client = [ph[n]["cpu"]["client_cpu_us_per_op"] for n in names]
    ax.barh(names, server, label="servers (sum of 3)", color="#2a7")
    ax.barh(names, client, left=server, label="load generator", color="#ccc")
    ax.set_title("CPU per operation (µs)")
    ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"kvstore vs etcd {results['versions'].get('etcd', '')}, same machine, same run: "
                 f"{results['config']['concurrency']} in flight, {results['config']['value_size']}"
                 f" B values; {m['cpu_count']} CPUs, load average {m['loadavg_start'][0]:.1f} -> "
                 f"{m.get('loadavg_end', [0])[0]:.1f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes DIR/results.json and DIR/results.png.")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per phase")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--records", type=int, default=10_000, help="keys (uniform)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (>= 8)")
    p.add_argument("--sync", default="full", choices=("full", "normal", "off"),
                   help="kvstore durability (etcd always fsyncs)")
    p.add_argument("--no-meta", dest="meta", action="store_false",
                   help="skip the Raft metadata puts")
    p.add_argument("--meta-only", action="store_true",
                   help="only etcd put, kvstore meta put, etcd put again (skip the other "
                        "kvstore phases)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--etcd", default=None, help="etcd binary (default: `etcd` on PATH)")
    p.add_argument("--out", type=Path, default=Path("bench/out/vs-etcd"))
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    opts = p.parse_args(argv)
    if opts.value_size < 8 or opts.concurrency < 1 or opts.records < 1 or opts.duration <= 0:
        p.error("need --value-size >= 8, --concurrency >= 1, --records >= 1, --duration > 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with tempfile.TemporaryDirectory(prefix="kv-vs-etcd-") as tmp:
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results = runner.run(run(opts, Path(tmp)))
        except EtcdMissing as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 3
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if opts.plot:
        plot(results, opts.out / "results.png")
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        for name, phase in results["phases"].items():
            print(line(name, phase))
        print("ratios (same run): " + ", ".join(
            f"{k} {v:.2f}" for k, v in results["ratios"].items() if v is not None))
        print(f"wrote {opts.out / 'results.json'}" + (f" and {opts.out / 'results.png'}"
                                                      if opts.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
