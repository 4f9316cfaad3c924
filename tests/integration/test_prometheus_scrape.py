"""A real Prometheus server (Debian's `prometheus` package) scrapes a running 3-node cluster;
the series are checked through Prometheus's HTTP query API: requests, gossip, Raft, and
(issue 14's leftovers) storage latency histograms, tombstones, bytes on disk and the
repair debt per peer."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from conftest import free_ports, start_cluster

from kvstore.client import Client

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_query(port: int, expr: str, check, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = query(port, expr)
            if check(last):
                return last
        except OSError as exc:  # prometheus still starting
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{expr}: {last!r}")


def one(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def check_storage_and_repair_series(prom_port: int) -> None:
    # every node committed batches (puts, deletes, hints of the Raft group...) with fsync
    commits = wait_query(prom_port, "kv_storage_fsync_seconds_count",
                         lambda r: len(r) == 3 and all(float(s["value"][1]) > 0 for s in r))
    assert len(commits) == 3
    fsync_p99 = one(wait_query(prom_port, "histogram_quantile(0.99, sum by (le) "
                               "(kv_storage_fsync_seconds_bucket))", lambda r: len(r) == 1))
    assert 0 < fsync_p99 <= 10
    writes = one(wait_query(prom_port, "sum(kv_storage_write_seconds_count)",
                            lambda r: r and float(r[0]["value"][1]) >= 25 * 2))
    assert writes >= 25 * 2  # 25 writes, each on at least a quorum of replicas
    # the 5 deletes (at ALL) left a tombstone on every replica: 3 nodes x 5
    tombstones = wait_query(prom_port, "kv_storage_tombstones", lambda r: len(r) == 3)
    assert [float(s["value"][1]) for s in tombstones] == [5.0, 5.0, 5.0], tombstones
    records = wait_query(prom_port, "kv_storage_records", lambda r: len(r) == 3)
    assert all(float(s["value"][1]) == 20 for s in records), records
    db = wait_query(prom_port, 'kv_storage_disk_bytes{file="data.db"}', lambda r: len(r) == 3)
    assert all(4096 <= float(s["value"][1]) < 1 << 30 for s in db), db
    # repair debt: after background sessions (every 1 s here) every node has a debt gauge
    # for each of its two peers, and the replicas agree (the writes reached all three)
    debt = wait_query(prom_port, "kv_repair_ranges_differing", lambda r: len(r) == 6)
    assert all(0 <= float(s["value"][1]) <= 1024 for s in debt), debt
    ranges = wait_query(prom_port, "kv_repair_ranges", lambda r: len(r) == 3)
    assert all(float(s["value"][1]) >= 1 for s in ranges)
    keys = wait_query(prom_port, "kv_repair_keys_differing", lambda r: len(r) == 6)
    assert all(float(s["value"][1]) >= 0 for s in keys)
    compaction = wait_query(prom_port, "kv_storage_compaction_seconds_count",
                            lambda r: len(r) == 3 and all(float(s["value"][1]) > 0 for s in r))
    assert compaction
    pending = wait_query(prom_port, "sum(kv_hints_pending) or vector(0)", lambda r: len(r) == 1)
    assert one(pending) == 0  # no node was down: no hints held for any target


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                               "`prometheus`; .ci/run installs it)")
def test_prometheus_scrapes_every_node(tmp_path):
    metrics_ports = free_ports(3)
    cluster = start_cluster(tmp_path / "c", metrics_ports=metrics_ports,
                            extra_args=["--raft-voters", "n1,n2,n3",
                                        "--antientropy-interval", "1"], raft_bootstrap=True)
    # Before the first scrape (the storage census behind the tombstone gauge runs at most
    # every 15 s): 20 puts, 5 of them deleted again.
    with Client(cluster.endpoints(), timeout=5) as client:
        for i in range(20):
            client.put(f"prom:{i}", "v", consistency="QUORUM")
            client.get(f"prom:{i}", consistency="ONE")
        for i in range(5):  # with the read's context: the tombstone replaces the value
            seen = client.get(f"prom:{i}", consistency="ALL")
            client.delete(f"prom:{i}", context=seen.context, consistency="ALL")
    prom_port = free_ports(1)[0]
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in metrics_ports)
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                      "scrape_configs:\n  - job_name: kvstore\n"
                      f"    static_configs:\n      - targets: [{targets}]\n")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        up = wait_query(prom_port, 'up{job="kvstore"}',
                        lambda r: len(r) == 3 and all(s["value"][1] == "1" for s in r))
        assert len(up) == 3
        puts = wait_query(prom_port, 'sum(kv_requests_total{op="put",level="QUORUM"})',
                          lambda r: r and float(r[0]["value"][1]) >= 20)
        assert float(puts[0]["value"][1]) == 20
        phi = wait_query(prom_port, "kv_gossip_phi", lambda r: len(r) == 6)
        assert {(s["metric"]["instance"], s["metric"]["peer"]) for s in phi} == {
            (f"127.0.0.1:{p}", peer) for p, me in zip(metrics_ports, ("n1", "n2", "n3"),
                                                    strict=True)
            for peer in ("n1", "n2", "n3") if peer != me}
        leaders = wait_query(prom_port, "sum(kv_raft_is_leader)",
                             lambda r: r and float(r[0]["value"][1]) == 1)
        assert leaders
        p99 = wait_query(prom_port, "histogram_quantile(0.99, sum by (le) "
                         "(kv_request_latency_seconds_bucket))", lambda r: len(r) == 1)
        assert 0 < float(p99[0]["value"][1]) < 10
        check_storage_and_repair_series(prom_port)
    finally:
        prom.terminate()
        prom.wait(timeout=15)
        log.close()
        cluster.stop()
