"""`kv bench --fault partition`: the benchmark drives the chaos API of its cluster."""

from __future__ import annotations

import pytest

from kvstore.bench.runner import BenchConfig, run

pytestmark = pytest.mark.integration


def test_bench_partition_fault_fails_all_and_recovers_after_heal() -> None:
    cfg = BenchConfig(local_nodes=3, workload="a", levels=["ALL"], duration_s=4.5,
                      warmup_s=0.3, concurrency=8, records=100, interval_s=0.25,
                      ceiling=False, fault=True, fault_kind="partition", sync="normal",
                      seed=5, probes=0)
    results = run(cfg)
    fault = results["levels"][0]["fault"]
    assert fault["kind"] == "partition" and fault["node"] == "n3"
    assert "fault_errors" not in fault, fault
    assert 1.3 <= fault["kill_s"] < fault["restart_s"] < 4.5
    # ALL needs n3, which is cut off from 1/3 to 2/3: requests fail then, and only then
    assert fault["errors_after_kill"] > 0, fault
    assert fault["errors_stopped_s"] <= fault["restart_s"] - fault["kill_s"] + 2.5, fault
    print(f"\n  partition at ALL: {fault}")


def test_network_faults_need_no_local_cluster_but_kill_does() -> None:
    with pytest.raises(ValueError, match="--fault kill needs a cluster"):
        BenchConfig(endpoints=["127.0.0.1:1"], fault=True, fault_kind="kill").validate()
    BenchConfig(endpoints=["127.0.0.1:1"], fault=True, fault_kind="partition").validate()
    with pytest.raises(ValueError, match="fault must be one of"):
        BenchConfig(local_nodes=3, fault=True, fault_kind="flood").validate()
