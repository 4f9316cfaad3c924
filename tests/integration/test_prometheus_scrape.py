"""A real Prometheus server (Debian's `prometheus` package) scrapes a running 3-node cluster;
the series are checked through Prometheus's HTTP query API."""

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


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                               "`prometheus`; .ci/run installs it)")
def test_prometheus_scrapes_every_node(tmp_path):
    metrics_ports = free_ports(3)
    cluster = start_cluster(tmp_path / "c", metrics_ports=metrics_ports,
                            extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
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
        with Client(cluster.endpoints(), timeout=5) as client:
            for i in range(20):
                client.put(f"prom:{i}", "v", consistency="QUORUM")
                client.get(f"prom:{i}", consistency="ONE")
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
    finally:
        prom.terminate()
        prom.wait(timeout=15)
        log.close()
        cluster.stop()
