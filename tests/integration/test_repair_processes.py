"""`kv repair` on real processes: a node that missed writes is brought up to date."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import start_cluster

from kvstore.client import AsyncClient

pytestmark = pytest.mark.integration


def test_kv_repair_brings_a_node_that_missed_writes_up_to_date(tmp_path):
    # background anti-entropy off (its first session comes 30-90 s after start): the test
    # counts what `kv repair` moves, and a background session racing it moved some keys
    # first in a CI run (168 of 200 left for kv repair)
    cluster = start_cluster(tmp_path, extra_args=["--no-hinted-handoff",
                                                  "--antientropy-interval", "0"])
    try:
        cluster.kill("n3", signal.SIGKILL)
        survivors = [n.address for n in cluster.nodes if n.id != "n3"]

        async def write() -> None:
            async with AsyncClient(survivors) as client:
                await asyncio.gather(*(client.put(f"missed-{i}", f"v{i}", consistency="QUORUM")
                                       for i in range(200)))

        asyncio.run(write())
        cluster.start_node("n3")
        cluster.wait_healthy(timeout=30, nodes=["n3"])
        env = dict(os.environ, KV_ENDPOINTS=",".join(cluster.endpoints()))
        r = subprocess.run([sys.executable, "-m", "kvstore", "repair", "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        for field in ("ranges_compared", "leaves_differing", "keys_sent", "keys_received",
                      "bytes_transferred", "seconds"):
            assert field in summary
        moved = summary["keys_sent"] + summary["keys_received"]
        # What this repair moved, not 200: since the merge of #16 some of the keys (up to
        # 100 of 200, in about one run in three) reach n3 by another path before or during
        # it, not yet explained (open in the closing note). What a repair must do is
        # checked below: afterwards n3 holds every key, and a second repair moves nothing.
        assert moved > 0 and summary["leaves_differing"] > 0, summary
        print(f"\nkv repair: {json.dumps({k: summary[k] for k in summary if k != 'nodes'})}")
        # n3 now holds every key: a second repair finds nothing to move
        r = subprocess.run([sys.executable, "-m", "kvstore", "repair", "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
        again = json.loads(r.stdout)
        assert again["keys_sent"] == again["keys_received"] == 0, again
        assert again["leaves_differing"] == 0

        async def check() -> list[str]:
            async with AsyncClient([cluster.node("n3").address]) as client:
                missing = []
                for i in range(200):
                    result = await client.get(f"missed-{i}", consistency="ALL", trace=True)
                    mine = [x for x in result.trace["replicas"] if x["node"] == "n3"]
                    if not mine or not mine[0]["versions"]:
                        missing.append(f"missed-{i}")
                return missing

        assert asyncio.run(check()) == []
    finally:
        cluster.stop()
