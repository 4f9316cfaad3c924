"""A short run of every workload against real node processes: counts and output files.

No speed is asserted: the machine is shared. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from kvstore.bench import report
from kvstore.bench.runner import BenchConfig, free_ports, run, run_async

pytestmark = pytest.mark.integration


def free_port() -> int:
    return free_ports(1)[0]


def _config(cluster, **kw) -> BenchConfig:
    base = dict(endpoints=cluster.endpoints(), duration_s=1.0, warmup_s=0.2, concurrency=8,
                records=200, interval_s=0.25, ceiling=False, levels=["ONE"], seed=3)
    base.update(kw)
    return BenchConfig(**base)


def _check_counts(results: dict) -> None:
    if results["load"]:
        load = results["load"]
        assert load["issued"] == results["config"]["records"] == load["ops"] + load[
            "errors_total"]
    for phase in [*results["ceiling"].values(), *results["levels"]]:
        assert phase["issued"] > 0, phase["phase"]
        assert phase["issued"] == phase["ops"] + phase["errors_total"], phase["phase"]
        assert sum(h["count"] for h in phase["by_op"].values()) == phase["ops"]
        assert sum(round(iv["ops_per_s"] * 0.25) for iv in phase["timeline"]) == phase["ops"]
        print(f"\n  {results['config']['workload']} {phase['phase']}: {phase['ops']} ops, "
              f"{phase['ops_per_s']:.0f}/s, p99 {phase['p99_ms']} ms, errors {phase['errors']}",
              end="")


@pytest.mark.parametrize("workload", ["a", "b", "c", "f", "w"])
def test_each_workload_counts_every_operation(shared_cluster, workload) -> None:
    cfg = _config(shared_cluster, workload=workload, load=workload == "a")
    results = asyncio.run(run_async(cfg))
    _check_counts(results)
    level = results["levels"][0]
    # a healthy cluster answers everything; only a deadline blown by a starved machine
    # (the 2 cores are shared) is tolerated
    assert set(level["errors"]) <= {"Timeout"}, level["error_examples"]
    if workload != "w":
        st = level["staleness"]
        assert st["reads_checked"] + st["unjudged_reads"] > 0
        assert sum(b["reads"] for b in st["curve"]) == st["reads_checked"]
    if workload == "f":
        assert set(level["by_op"]) == {"read", "rmw"}


def test_overlapping_quorums_never_read_stale_and_outputs_are_written(shared_cluster,
                                                                      tmp_path) -> None:
    cfg = _config(shared_cluster, levels=["QUORUM", "ONE/ALL", "ONE"], ceiling=True,
                  ceiling_duration_s=0.5, records=50)
    results = asyncio.run(run_async(cfg))
    _check_counts(results)
    for level in results["levels"]:
        if level["r_plus_w_gt_n"]:
            st = level["staleness"]
            assert st["stale_reads"] == 0, (level["level"], st)
        assert "fraction_of_ping_ceiling" in level and "fraction_of_null_ceiling" in level
    assert results["cluster"]["size"] == 3 and results["cluster"]["replication_factor"] == 3
    paths = report.write_outputs(results, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    for level in data["levels"]:
        for key in ("ops_per_s", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "errors"):
            assert key in level
    for key in ("machine", "versions", "cluster", "config"):
        assert data[key]
    assert (tmp_path / "out" / "results.png").stat().st_size > 10_000
    assert len(paths) == 2


def test_kv_bench_command_writes_json(shared_cluster, tmp_path) -> None:
    out = tmp_path / "cli"
    env = dict(os.environ, KV_ENDPOINTS=",".join(shared_cluster.endpoints()))
    r = subprocess.run(
        [sys.executable, "-m", "kvstore", "bench", "--workload", "b", "--consistency",
         "ONE,QUORUM", "--duration", "500ms", "--warmup", "100ms", "--concurrency", "4",
         "--records", "100", "--no-ceiling", "--interval", "250ms", "--json", "--out",
         str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [lv["level"] for lv in results["levels"]] == ["ONE", "QUORUM"]
    assert json.loads((out / "results.json").read_text())["levels"][1]["level"] == "QUORUM"
    assert (out / "results.png").exists()
    bad = subprocess.run([sys.executable, "-m", "kvstore", "bench", "--consistency", "MOST"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "MOST" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "kvstore", "bench", "--endpoints",
                           f"127.0.0.1:{free_port()}", "--no-live"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 1 and "no node answered" in down.stderr, down.stderr


def test_fault_mode_kills_and_restarts_a_node() -> None:
    cfg = BenchConfig(local_nodes=3, workload="a", levels=["QUORUM"], duration_s=3.0,
                      warmup_s=0.3, concurrency=8, records=100, interval_s=0.25,
                      ceiling=False, fault=True, sync="normal", seed=5)
    results = run(cfg)
    _check_counts(results)
    fault = results["levels"][0]["fault"]
    assert fault["node"] == "n3"
    assert 0.9 <= fault["kill_s"] < fault["restart_s"] < 3.5
    assert "healthy_s" in fault, fault
    print(f"\n  fault at QUORUM: {json.dumps({k: v for k, v in fault.items()})}")


def test_node_cpu_per_operation_is_reported_for_a_cluster_it_knows(shared_cluster) -> None:
    """With the cluster's processes known, every phase says what an operation cost them."""
    cfg = _config(shared_cluster, workload="w", levels=["QUORUM", "ONE"], load=False,
                  ceiling=True, ceiling_duration_s=0.5)
    results = asyncio.run(run_async(cfg, cluster=shared_cluster))
    for phase in [*results["ceiling"].values(), *results["levels"]]:
        cpu = phase["cpu"]
        assert cpu["nodes_missing"] == [] and set(cpu["per_node_cpu_s"]) == {"n1", "n2", "n3"}
        assert cpu["requests"] >= phase["issued"] > 0
        assert cpu["node_cpu_us_per_op"] > 0 and cpu["client_cpu_us_per_op"] > 0
        print(f"\n  {phase['phase']}: node CPU {cpu['node_cpu_us_per_op']:.0f} µs/op, "
              f"client {cpu['client_cpu_us_per_op']:.0f} µs/op", end="")
    # without the processes (endpoints only) there is no figure, rather than a wrong one
    plain = asyncio.run(run_async(_config(shared_cluster, workload="c", load=False)))
    assert "cpu" not in plain["levels"][0]
