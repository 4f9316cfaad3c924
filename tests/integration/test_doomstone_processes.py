"""A key deleted, its tombstone purged on ONE replica, then written again: the new value
must survive repair on every replica (the "doomstone" of Riak KV679).

Real processes, N=3 on 3 nodes. Every write goes through n1, so n1 mints every dot. Once
the tombstone is older than the grace period, `kv repair --node <n1>` runs anti-entropy
sessions from n1 alone: n1 is the initiator of both sessions, so only n1 collects the
confirmations of all three replicas and purges; n2 and n3, only responders, keep the
tombstone (background anti-entropy is off). A blind write through n1 then finds no record
of the key. Before per-key actor epochs, n1 minted its counter afresh: the value had been
n1:1 and the tombstone n1:2, so the new write was n1:1 again, an event n2 and n3 had
already seen deleted. They dropped it as superseded although they acknowledged it, repair
carried the tombstone back to n1, and the acknowledged write was lost everywhere (this
test failed with LostWrite). With epochs the re-created key gets a dot nobody has seen.

The nodes run with a 3 s grace period, which they accept with `--max-clock-skew 1` (the
processes share one clock), so the test waits a few seconds for the tombstone to age.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import start_cluster

from kvstore.client import AsyncClient

pytestmark = pytest.mark.integration

GRACE_S = 3
NODE_ARGS = ["--tombstone-grace", str(GRACE_S), "--hint-max-age", "1",
             "--max-clock-skew", "1", "--antientropy-interval", "0"]
KEY = b"doomstone"
PURGE_ATTEMPTS = 10


class LostWrite(AssertionError):
    """The acknowledged re-creation of the key is gone (the failure expected today)."""


def kv(cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KV_ENDPOINTS=",".join(cluster.endpoints()))
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def repair(cluster, *args: str) -> dict:
    r = kv(cluster, "repair", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def describe(versions: list[dict]) -> list[str]:
    return [f"{v['dot']}{' tombstone' if v.get('tombstone') else ' ' + repr(v['value'])}"
            for v in versions]


async def per_replica(address: str) -> dict[str, list[dict]]:
    """Each replica's versions of KEY, read at ALL through `address`."""
    async with AsyncClient([address], timeout=10) as client:
        result = await client.get(KEY, consistency="ALL", trace=True)
    replicas = result.trace["replicas"]
    assert all(r["ok"] for r in replicas) and len(replicas) == 3, replicas
    return {r["node"]: r["versions"] for r in replicas}


def test_a_key_recreated_after_one_replica_purged_its_tombstone_survives_repair(tmp_path):
    cluster = start_cluster(tmp_path, extra_args=NODE_ARGS)
    try:
        n1 = cluster.node("n1").address

        async def put_then_delete():
            async with AsyncClient([n1], timeout=10) as client:
                put = await client.put(KEY, b"before", consistency="ALL", strict=True)
                return await client.delete(KEY, context=put.context, consistency="ALL",
                                           strict=True)

        deleted = asyncio.run(put_then_delete())
        [tombstone] = deleted.stored
        assert tombstone.tombstone, deleted.stored

        # past the grace period (on this machine's clock, which every node shares) ...
        wait = tombstone.written_at_ms / 1000 + GRACE_S + 1 - time.time()
        assert wait < GRACE_S + 5, f"tombstone written {wait:.0f} s in the future?"
        time.sleep(max(0.0, wait))
        # ... n1 alone purges it
        for _ in range(PURGE_ATTEMPTS):
            summary = repair(cluster, "--node", n1)
            if summary["tombstones_purged"]:
                break
            time.sleep(1)
        assert summary["tombstones_purged"] == 1, summary
        before = asyncio.run(per_replica(n1))
        held = [describe(before[n]) for n in ("n1", "n2", "n3")]
        assert held == [[], [f"{tombstone.dot} tombstone"], [f"{tombstone.dot} tombstone"]], held

        async def recreate():
            async with AsyncClient([n1], timeout=10) as client:
                return await client.put(KEY, b"reborn", consistency="ALL", strict=True,
                                        trace=True)

        put = asyncio.run(recreate())  # blind: n1 has no record of the key
        assert put.trace["coordinator"] == "n1" and not put.trace["forwarded_to"], put.trace
        acked_by = sorted(r["node"] for r in put.trace["replicas"] if r["ok"])
        assert acked_by == ["n1", "n2", "n3"], put.trace
        minted = [v.dot for v in put.stored if v.value == b"reborn"]

        summary = repair(cluster)
        after = asyncio.run(per_replica(n1))
        lost = {node: describe(v) for node, v in after.items()
                if not any(x["value"] == "reborn" and not x.get("tombstone") for x in v)}
        if lost:
            raise LostWrite(
                f"the re-created value (dot {minted}, acknowledged by {acked_by} at ALL) is gone "
                f"after kv repair from {sorted(lost)}: they hold {lost}. n1 purged tombstone "
                f"{tombstone.dot} and then minted {minted} afresh, an event the clock of the "
                f"tombstone n2 and n3 kept already covers")

        async def read_quorum():
            async with AsyncClient(cluster.endpoints(), timeout=10) as client:
                return await client.get(KEY, consistency="QUORUM")

        got = asyncio.run(read_quorum())
        assert b"reborn" in [s.value for s in got.siblings], got
        print(f"\ntombstone {tombstone.dot} purged on n1 alone; re-created as {minted}; after "
              f"kv repair: { {node: describe(v) for node, v in sorted(after.items())} }")
    finally:
        cluster.stop()
