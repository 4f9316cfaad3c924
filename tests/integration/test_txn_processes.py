"""Transactions against real node processes (issue 12; docs/transactions.md): `kv txn`
put/get/status with their --json and exit codes, and the bank workload with one node
SIGKILLed and another paused (SIGSTOP) during it: at the end the total is unchanged and
every committed transfer is reflected."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import kv_in_process as kv
from conftest import start_cluster

from kvstore.bench.bank import run_bank

pytestmark = pytest.mark.integration




def jkv(eps: str, *args: str) -> tuple[int, dict]:
    r = kv(eps, *args, "--json")
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("txn"),
                      extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
    try:
        yield c
    finally:
        c.stop()


def test_txn_put_get_status_and_bad_input(cluster) -> None:
    eps = ",".join(cluster.endpoints())
    code, put = jkv(eps, "txn", "put", "a=1", "b=2", "--if-absent", "c")
    assert code == 0 and put["state"] == "COMMITTED" and set(put["contexts"]) == {"a", "b"}
    code, got = jkv(eps, "txn", "get", "a", "b", "c")
    assert code == 0
    assert {k: v["values"] for k, v in got["values"].items()} == {
        "a": ["1"], "b": ["2"], "c": []}
    # plain reads see the committed values too, and their context works in --if
    code, plain = jkv(eps, "get", "a")
    assert code == 0 and [v["value"] for v in plain["siblings"]] == ["1"], plain
    ctx = plain["context"]
    r = kv(eps, "txn", "put", "a=3", "c=4", "--if", f"a@{ctx}", "--trace")
    assert r.returncode == 0, r.stderr
    assert "intent on a" in r.stdout and "COMMITTED" in r.stdout and "decision" not in r.stderr
    # the same (now stale) context again: refused, nothing written
    code, again = jkv(eps, "txn", "put", "a=9", "b=9", "--if", f"a@{ctx}")
    assert code == 1 and again["state"] == "ABORTED" and "changed" in again["error"]
    code, got = jkv(eps, "txn", "get", "a", "b", "c")
    assert {k: v["values"] for k, v in got["values"].items()} == {
        "a": ["3"], "b": ["2"], "c": ["4"]}
    # status: who decided and when
    code, st = jkv(eps, "txn", "status", again["txn_id"])
    assert code == 0 and st["state"] == "ABORTED" and st["decided_by"]
    code, st = jkv(eps, "txn", "status", put["txn_id"])
    assert code == 0 and st["state"] == "COMMITTED" and st["decided_revision"] > 0
    assert kv(eps, "txn", "status", "nosuchtxn").returncode == 3
    # the same through three-phase commit
    code, three = jkv(eps, "txn", "put", "p=1", "q=2", "--protocol", "3pc")
    assert code == 0 and three["state"] == "COMMITTED" and three["commit_hlc"], three
    code, got3 = jkv(eps, "txn", "get", "p", "q")
    assert {k: v["values"] for k, v in got3["values"].items()} == {"p": ["1"], "q": ["2"]}
    # bad input: clear errors, exit 2, nothing applied
    for args, text in [(("a=1", "a=2"), "duplicate key"),
                       (("a=1", "--if", "a"), "KEY@CONTEXT"),
                       (("a=1", "--if", "a@garbage!"), "context"),
                       (("x",), "KEY=VALUE")]:
        r = kv(eps, "txn", "put", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    many = [f"k{i}=1" for i in range(65)]
    r = kv(eps, "txn", "put", *many)
    assert r.returncode == 2 and "at most 64 keys" in r.stderr
    code, got = jkv(eps, "txn", "get", "a", "b", "c")
    assert {k: v["values"] for k, v in got["values"].items()} == {
        "a": ["3"], "b": ["2"], "c": ["4"]}


def test_bank_transfers_survive_a_killed_and_a_paused_node(cluster) -> None:
    result = asyncio.run(run_bank(cluster.endpoints(), accounts=10, duration_s=12.0,
                                  concurrency=4, seed=3, cluster=cluster, fault=True,
                                  note=lambda text: None))
    assert result["total_ok"], result
    assert result["reflected_ok"], result
    assert result["committed"] > 0, result
    assert len(result["faults"]) == 4, result
    cluster.wait_healthy(timeout=30)
