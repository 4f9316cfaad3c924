"""A 3-node cluster of real processes: SIGKILL one node, nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from kvstore.client import AsyncClient
from kvstore.core import versions
from kvstore.storage import SqliteEngine

pytestmark = pytest.mark.integration

KEYS = 1000


async def write_all(endpoints: list[str]) -> dict[bytes, set[str]]:
    """Write KEYS keys at QUORUM; return, per key, the replicas that acknowledged it."""
    acked: dict[bytes, set[str]] = {}
    async with AsyncClient(endpoints, timeout=5) as client:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            key = f"key-{i:05d}".encode()
            async with sem:
                result = await client.put(key, b"value-" + key, consistency="QUORUM", trace=True)
            acked[key] = {r["node"] for r in result.trace["replicas"] if r["ok"]}
            assert len(acked[key]) >= 2

        await asyncio.gather(*(one(i) for i in range(KEYS)))
    return acked


async def read_all(endpoints: list[str], keys) -> dict[bytes, list[bytes]]:
    async with AsyncClient(endpoints, timeout=5) as client:
        sem = asyncio.Semaphore(64)
        out: dict[bytes, list[bytes]] = {}

        async def one(key: bytes) -> None:
            async with sem:
                result = await client.get(key, consistency="QUORUM")
            out[key] = [s.value for s in result.siblings]

        await asyncio.gather(*(one(k) for k in keys))
    return out


def keys_on_disk(data_dir: str) -> set[bytes]:
    engine = SqliteEngine(Path(data_dir) / "data.db", "off")
    try:
        found = set()
        for _, key, record in engine.scan(-(2**63), -(2**63)):  # start == end: the whole ring
            if any(not s.tombstone for s in versions.decode(record)):
                found.add(key)
        return found
    finally:
        engine.close()


def test_sigkill_one_node_then_restart_loses_nothing(cluster):
    endpoints = cluster.endpoints()
    acked = asyncio.run(write_all(endpoints))
    victim = cluster.node("n2")
    cluster.kill("n2", signal.SIGKILL)
    survivors = [n.address for n in cluster.nodes if n.id != "n2"]

    values = asyncio.run(read_all(survivors, acked))
    missing = [k for k, v in values.items() if v != [b"value-" + k]]
    assert not missing, f"{len(missing)} keys unreadable at QUORUM after SIGKILL: {missing[:5]}"

    # Every write n2 acknowledged before it was killed is on its disk (kill -9 durability).
    on_disk = keys_on_disk(victim.data_dir)
    acked_by_victim = {k for k, nodes in acked.items() if "n2" in nodes}
    assert acked_by_victim, "n2 acknowledged no writes; the test proves nothing"
    lost = acked_by_victim - on_disk
    assert not lost, f"{len(lost)} writes acknowledged by n2 are not on its disk"

    cluster.start_node("n2")
    cluster.wait_healthy(timeout=30, nodes=["n2"])
    values = asyncio.run(read_all([victim.address], acked))
    missing = [k for k, v in values.items() if v != [b"value-" + k]]
    assert not missing, f"{len(missing)} keys unreadable through the restarted node"
    cluster.stop()
    assert acked_by_victim <= keys_on_disk(victim.data_dir)
