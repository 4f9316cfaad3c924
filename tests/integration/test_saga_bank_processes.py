"""The bank workload through sagas against real node processes (issue 12;
docs/transactions.md, "Protocols compared"): with one transfer at a time the total holds,
every transfer commits and every committed one is reflected, at a fixed number of round
trips per saga; and the comparison table's exit code tells a protocol that broke its own
promise from the sagas' documented lack of isolation."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import kv_in_process, start_cluster

from kvstore.cli.bank_cmd import _report_all

pytestmark = pytest.mark.integration


def test_saga_bank_one_at_a_time_keeps_the_total(tmp_path) -> None:
    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    try:
        eps = ",".join(cluster.endpoints())
        run = kv_in_process(eps, "bench", "--workload", "bank", "--txn-protocol", "saga",
                            "--accounts", "4", "--concurrency", "1", "--duration", "3s",
                            "--seed", "7", "--json")
    finally:
        cluster.stop()
    assert run.returncode == 0, (run.stdout, run.stderr)
    r = json.loads(run.stdout)
    assert r["protocol"] == "saga" and r["isolation"] is False and r["concurrency"] == 1
    assert r["committed"] > 0, r
    # alone, no saga meets another's write: none compensates, none is left unknown
    assert (r["compensated"], r["unknown"], r["errors"]) == (0, 0, 0), r
    assert r["total_ok"] and r["reflected_ok"] and r["total"] == 4000, r
    assert r["note"] is None and r["siblings"] == {}
    # the round trips docs/transactions.md counts: two balance reads; per saga in the Raft
    # group the definition, lease grant, lock, log read and five log appends (start/done
    # per step, end); per step one store read and one store write
    assert r["round_trips_per_saga"] == {"balance_reads": 2.0, "meta": 9.0, "store": 4.0}


def _result(protocol: str, *, total_ok: bool, concurrency: int = 4) -> dict:
    return {"protocol": protocol, "concurrency": concurrency, "total_ok": total_ok,
            "reflected_ok": total_ok, "total": 1000 if total_ok else 990,
            "expected_total": 1000, "transfers_per_s": 1.0, "attempts_per_s": 1.0,
            "latency_ms": {"p50": 1.0, "p99": 2.0}, "aborted": 0, "compensated": 0,
            "unknown": 0}


def _exit(results: list[dict]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _report_all(results, as_json=False, load="test")
        except SystemExit as exc:
            return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_all_table_exit_code_separates_broken_promises_from_saga_anomaly() -> None:
    # sagas under concurrency changed the total: shown and explained, not a failure
    code, out, err = _exit([_result("raft", total_ok=True), _result("3pc", total_ok=True),
                            _result("saga", total_ok=False)])
    assert code == 0 and "sagas give no isolation" in out and "CHANGED (990 of 1000)" in out
    # one transfer at a time a saga must keep the total: then it is a bug
    code, _, err = _exit([_result("saga", total_ok=False, concurrency=1)])
    assert code == 1 and "saga broke its guarantee" in err
    # raft or 3pc changing the total is always a bug
    code, _, err = _exit([_result("raft", total_ok=True), _result("3pc", total_ok=False)])
    assert code == 1 and "3pc broke its guarantee" in err
