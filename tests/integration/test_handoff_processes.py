"""Real processes, 4 nodes, N=3: SIGKILL a node, write at ALL with --sloppy through
fallbacks, restart it, and hinted handoff brings it every write it missed."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from conftest import start_cluster

from kvstore.client import AsyncClient

pytestmark = pytest.mark.integration


async def hints_pending(endpoints: list[str]) -> int:
    async with AsyncClient(endpoints, timeout=5) as client:
        total = 0
        for endpoint in endpoints:
            info = await client.info(endpoint)
            total += sum(m.hints_pending for m in info.members)
        return total


def test_sigkilled_node_receives_every_write_by_hinted_handoff(tmp_path):
    cluster = start_cluster(tmp_path, nodes=4)
    try:
        victim = cluster.node("n2")
        cluster.kill("n2", signal.SIGKILL)
        survivors = [n.address for n in cluster.nodes if n.id != "n2"]

        async def write() -> list[bytes]:
            async with AsyncClient(survivors, timeout=5) as client:
                keys = []
                for i in range(300):
                    key = f"while-down-{i}".encode()
                    result = await client.put(key, b"v-" + key, consistency="ALL", trace=True,
                                              sloppy=True)
                    replicas = result.trace["preference_list"]
                    if "n2" in replicas:
                        hinted = [r for r in result.trace["replicas"]
                                  if r["hint_for"] == "n2" and r["ok"]]
                        assert hinted, result.trace  # W=ALL met through a fallback
                        assert hinted[0]["counted"], result.trace  # sloppy: it counted
                        keys.append(key)
                return keys

        keys = asyncio.run(write())
        assert len(keys) > 100
        assert asyncio.run(hints_pending(survivors)) >= len(keys)

        cluster.start_node("n2")
        cluster.wait_healthy(timeout=30, nodes=["n2"])
        started = time.monotonic()
        while asyncio.run(hints_pending(survivors)) > 0:
            assert time.monotonic() - started < 60, "hints not delivered within 60 s"
            time.sleep(0.5)
        print(f"handoff of {len(keys)} hints done {time.monotonic() - started:.1f} s after restart")

        async def check() -> list[bytes]:
            async with AsyncClient([victim.address], timeout=5) as client:
                missing = []
                for key in keys:
                    result = await client.get(key, consistency="ALL", trace=True)
                    mine = [r for r in result.trace["replicas"] if r["node"] == "n2"]
                    if not mine or [v["value"] for v in mine[0]["versions"]] != [
                            ("v-" + key.decode())]:
                        missing.append((key, mine))
                return missing

        missing = asyncio.run(check())
        assert not missing, f"{len(missing)} keys missing on n2 after handoff: {missing[:5]}"
    finally:
        cluster.stop()
