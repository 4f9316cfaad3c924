"""Real processes: metrics, chaos through the admin API, and failure detection (issue 14).

One 3-node cluster (N=3, every key on every node) with --metrics-port and --chaos, driven
with the real `kv` command. The tests run in file order; the last ones pause and kill n3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from conftest import free_ports, start_cluster
from prometheus_client.parser import text_string_to_metric_families

from kvstore._proto import chaos_pb2, chaos_pb2_grpc
from kvstore.cli.observe_cmds import fetch_state
from kvstore.client import Client
from kvstore.node.local_cluster import LocalCluster

pytestmark = pytest.mark.integration

DETECTION_BOUND_S = 3.0


@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("chaos"), metrics_ports=free_ports(3),
                      chaos=True, extra_args=["--raft-voters", "n1,n2,n3"],
                      raft_bootstrap=True)
    try:
        yield c
    finally:
        c.stop()


def kv(cluster: LocalCluster, *args: str, via: str | None = None) -> subprocess.CompletedProcess:
    endpoints = cluster.node(via).address if via else ",".join(cluster.endpoints())
    env = dict(os.environ, KV_ENDPOINTS=endpoints)
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=cluster.data_root.parent)


def scrape(cluster: LocalCluster, node: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a node's /metrics, parsed with prometheus_client's parser."""
    port = cluster.node(node).metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def down_views(cluster: LocalCluster, victim: str, observers: list[str]) -> set[str]:
    """Which observers' failure detectors say `victim` is down now."""
    out = set()
    for node in observers:
        state = fetch_state(cluster.node(node).address, 1.0)
        if any(m["id"] == victim and not m["up"] for m in state.get("members", [])):
            out.add(node)
    return out


def wait_until(what: str, check, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def test_every_node_serves_prometheus_metrics(chaos_cluster):
    c = chaos_cluster
    for i in range(5):
        assert kv(c, "put", f"m:{i}", "v", "--consistency", "ALL").returncode == 0
    assert kv(c, "get", "m:0", "--consistency", "ONE").returncode == 0
    seen_puts = 0.0
    for node in ("n1", "n2", "n3"):
        samples = scrape(c, node)
        seen_puts += total(samples, "kv_requests_total", op="put", level="ALL", outcome="ok")
        peers = {dict(lab)["peer"] for (n, lab) in samples if n == "kv_gossip_phi"}
        assert peers == {"n1", "n2", "n3"} - {node}
        assert all(v == 1.0 for (n, _), v in samples.items() if n == "kv_member_up")
        assert total(samples, "kv_raft_term") >= 1
        assert total(samples, "kv_request_latency_seconds_count") >= 0
        assert ("kv_chaos_faults_active", (("kind", "partition"),)) in samples
        commits = total(samples, "kv_storage_commits_total")
        assert total(samples, "kv_storage_rows_total") >= commits >= 1
        assert total(samples, "kv_storage_commit_seconds_total") > 0
    assert seen_puts == 5
    acks = sum(total(scrape(c, n), "kv_coordinator_total", event="ack_replica_counted")
               for n in ("n1", "n2", "n3"))
    assert acks >= 10  # W=3 per put: at least the two remote acks counted each time


def test_partition_fails_quorum_on_the_minority_and_hints_drain_after_heal(chaos_cluster):
    c = chaos_cluster
    r = kv(c, "chaos", "partition", "n1,n2", "/", "n3", "--for", "60s", "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["nodes"]) == {"n1", "n2", "n3"}
    try:
        minority = kv(c, "put", "p:minority", "x", "--consistency", "QUORUM", via="n3")
        assert minority.returncode == 1, minority
        # n3 says so, or (once its detector marked n1 and n2 down) does not even try them
        assert "Unavailable: W=2 needs 2 replicas, 1 answered" in minority.stderr, minority
        for i in range(10):
            r = kv(c, "put", f"p:{i}", "v", "--consistency", "QUORUM", via="n1")
            assert r.returncode == 0, r.stderr
        hints = sum(total(scrape(c, n), "kv_hints_pending", target="n3") for n in ("n1", "n2"))
        assert hints >= 10
        took = time.monotonic()
        wait_until("n1 and n2 mark n3 down", lambda: down_views(c, "n3", ["n1", "n2"]) ==
                   {"n1", "n2"}, timeout=10)
        print(f"\npartitioned n3 marked down by n1, n2 {time.monotonic() - took:.1f} s "
              "after the hints were counted")
        status = json.loads(kv(c, "status", "--json").stdout)
        n3 = next(m for m in status["members"] if m["id"] == "n3")
        assert n3["hints_pending"] >= 10 and set(n3["down_by"]) == {"n1", "n2"}
    finally:
        healed = kv(c, "chaos", "heal", "--json")
        assert healed.returncode == 0, healed.stderr
    assert sum(json.loads(healed.stdout)["healed"].values()) == 3
    started = time.monotonic()
    wait_until("hints for n3 drain", lambda: sum(
        total(scrape(c, n), "kv_hints_pending", target="n3") for n in ("n1", "n2")) == 0,
        timeout=20, step=0.2)
    print(f"hints drained {time.monotonic() - started:.1f} s after heal")
    r = kv(c, "get", "p:9", "--consistency", "ONE", via="n3")
    # n3 holds the write itself now (a ONE read via n3 may ask n3 only)
    assert r.returncode == 0 and r.stdout.strip() == "v", r
    delivered = sum(total(scrape(c, n), "kv_hints_total", event="delivered") for n in ("n1", "n2"))
    assert delivered >= 10


def test_oneway_partition_cuts_one_direction_only(chaos_cluster):
    c = chaos_cluster
    r = kv(c, "chaos", "partition", "n1", "/", "n3", "--oneway", "--for", "30s")
    assert r.returncode == 0, r.stderr
    try:
        # n1 cannot reach n3: ALL coordinated by n1 fails ...
        r = kv(c, "put", "ow:1", "x", "--consistency", "ALL", "--blind", via="n1")
        assert r.returncode == 1 and "partitioned by chaos" in r.stderr, r
        # ... while n3 still reaches n1 (and gets its answers): ALL via n3 succeeds
        r = kv(c, "put", "ow:2", "x", "--consistency", "ALL", "--blind", via="n3")
        assert r.returncode == 0, r.stderr
    finally:
        assert kv(c, "chaos", "heal").returncode == 0


def test_delay_shows_in_the_latency_histogram(chaos_cluster):
    c = chaos_cluster
    assert kv(c, "put", "d:1", "v", "--consistency", "ALL").returncode == 0
    before = scrape(c, "n1")
    r = kv(c, "chaos", "delay", "n2", "--ms", "200", "--jitter", "20", "--for", "30s")
    assert r.returncode == 0, r.stderr
    try:
        with Client([c.node("n1").address], timeout=5) as client:
            started = time.monotonic()
            for _ in range(5):
                client.get("d:1", consistency="ALL")
            per_read = (time.monotonic() - started) / 5
    finally:
        assert kv(c, "chaos", "heal").returncode == 0
    after = scrape(c, "n1")

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    reads = delta("kv_request_latency_seconds_count", op="get", level="ALL")
    fast = delta("kv_request_latency_seconds_bucket", op="get", level="ALL", le="0.1")
    assert reads == 5 and fast == 0, (reads, fast)
    assert delta("kv_request_latency_seconds_sum", op="get", level="ALL") >= 5 * 0.17
    assert per_read >= 0.17
    assert total(after, "kv_chaos_applied_total", kind="delay") >= 5


def test_every_fault_expires_by_itself(chaos_cluster):
    c = chaos_cluster
    asked = time.monotonic()  # the faults expire 4 s after they were installed: after this
    r = kv(c, "chaos", "drop", "n2", "--rate", "1", "--for", "4s")
    assert r.returncode == 0, r.stderr
    installed = time.monotonic()  # ... and before this
    r = kv(c, "chaos", "status", "--json")
    if time.monotonic() < asked + 4:  # (a slow machine may take that long to ask)
        assert all(len(s["faults"]) == 1 for s in json.loads(r.stdout)["nodes"].values()), \
            r.stdout
    time.sleep(max(0.0, installed + 4.2 - time.monotonic()))
    nodes = json.loads(kv(c, "chaos", "status", "--json").stdout)["nodes"]
    for state in nodes.values():
        assert state["faults"] == []
        assert any(e["text"].startswith("expired: drop 100%") for e in state["events"])
    assert kv(c, "put", "e:1", "v", "--consistency", "ALL").returncode == 0


def test_bad_chaos_requests_are_refused_clearly(chaos_cluster):
    c = chaos_cluster
    r = kv(c, "chaos", "partition", "n1", "/", "n9")
    assert r.returncode == 2 and "unknown node n9" in r.stderr and "Traceback" not in r.stderr
    r = kv(c, "chaos", "drop", "n2", "--rate", "0")
    assert r.returncode == 2
    r = kv(c, "chaos", "delay", "n2", "--ms", "5", "--for", "2d")
    assert r.returncode == 2 and "not a duration" in r.stderr
    r = kv(c, "chaos", "kill", "n2", "--compose", "no-such-compose.yml")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = kv(c, "chaos", "kill", "n9", "--data-dir", str(c.data_root))
    assert r.returncode == 2 and "no node 'n9'" in r.stderr
    with grpc.insecure_channel(c.node("n1").address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            chaos_pb2_grpc.ChaosStub(channel).Inject(
                chaos_pb2.FaultRequest(kind="delay", delay_ms=-1), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_chaos_api_is_refused_unless_enabled(tmp_path):
    node = start_cluster(tmp_path, nodes=1, replication_factor=1)
    try:
        with grpc.insecure_channel(node.node("n1").address) as channel, \
                pytest.raises(grpc.RpcError) as err:
            chaos_pb2_grpc.ChaosStub(channel).Inject(
                chaos_pb2.FaultRequest(kind="partition", peers=["n1"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--chaos" in err.value.details()
    finally:
        node.stop()


def test_kv_logs_gathers_every_nodes_lines_for_one_request(chaos_cluster):
    c = chaos_cluster
    r = kv(c, "put", "log:1", "v", "--consistency", "ALL", "--blind", "--trace", "--json")
    assert r.returncode == 0, r.stderr
    request_id = json.loads(r.stdout)["trace"]["request_id"]
    coordinator = json.loads(r.stdout)["trace"]["coordinator"]
    assert request_id.startswith(coordinator + "-")
    r = kv(c, "logs", "--request", request_id, "--json")
    assert r.returncode == 0, r.stderr
    lines = json.loads(r.stdout)["lines"]
    assert {line["node"] for line in lines} == {"n1", "n2", "n3"}, lines
    assert all(line["request_id"] == request_id for line in lines)
    assert lines[0]["msg"] == "put b'log:1': coordinating" and lines[0]["node"] == coordinator
    assert lines[-1]["msg"].startswith("put b'log:1': ok after")
    # a node that does not answer: its lines come from its log file (local cluster)
    other = next(n for n in ("n1", "n2", "n3") if n != coordinator)
    os.kill(c.procs[other].pid, signal.SIGSTOP)
    try:
        r = kv(c, "logs", "--request", request_id, "--json")
    finally:
        os.kill(c.procs[other].pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["unreachable"] == [] and other in {line["node"] for line in data["lines"]}
    r = kv(c, "logs", "--request", "nope-000")
    assert r.returncode == 1 and "no log lines" in r.stderr


def _load(cluster: LocalCluster, stop: threading.Event, errors: list) -> None:
    with Client(cluster.endpoints()[:2], timeout=5) as client:
        i = 0
        while not stop.is_set():
            try:
                client.put(f"load:{i % 200}", "x" * 100, consistency="ONE")
            except Exception as exc:  # counted, not fatal: the load only makes noise
                errors.append(exc)
            i += 1


def test_a_short_pause_under_load_is_not_suspected(chaos_cluster):
    c = chaos_cluster
    before = {n: total(scrape(c, n), "kv_gossip_total", event="marked_down")
              for n in ("n1", "n2", "n3")}
    stop, errors = threading.Event(), []
    loaders = [threading.Thread(target=_load, args=(c, stop, errors)) for _ in range(2)]
    for t in loaders:
        t.start()
    try:
        time.sleep(2)
        for _ in range(2):
            r = kv(c, "chaos", "pause", "n3", "--for", "700ms",
                   "--data-dir", str(c.data_root))
            assert r.returncode == 0, r.stderr
            time.sleep(2.5)
    finally:
        stop.set()
        for t in loaders:
            t.join()
    after = {n: total(scrape(c, n), "kv_gossip_total", event="marked_down")
             for n in ("n1", "n2", "n3")}
    assert after == before, f"false suspicions (marked_down before/after): {before} {after}"


def test_a_killed_node_is_marked_down_within_the_bound(chaos_cluster):
    c = chaos_cluster
    r = kv(c, "chaos", "kill", "n3", "--data-dir", str(c.data_root))
    killed = time.monotonic()
    assert r.returncode == 0 and "killed n3" in r.stdout, r
    c.procs.pop("n3", None)
    seen: dict[str, float] = {}

    def check() -> bool:
        for node in down_views(c, "n3", [n for n in ("n1", "n2") if n not in seen]):
            seen[node] = time.monotonic() - killed
        return len(seen) == 2

    wait_until("n3 marked down by n1 and n2", check, timeout=30)
    print(f"\nkilled n3 marked down after {seen}")
    assert max(seen.values()) <= DETECTION_BOUND_S + 0.3, seen  # + one polling round
