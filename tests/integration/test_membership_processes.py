"""Grow and shrink a cluster of real processes under a steady QUORUM write load.

Three nodes take writes of new keys at QUORUM from a client that records every
acknowledgement. While the load runs:
1. n4 starts with `--join`, streams the ranges it will own, and turns NORMAL;
2. `kv node decommission n2` streams n2's ranges to their next owners, and n2 leaves;
3. n3 dies for good (SIGKILL): n5 starts with `--join --replace n3`, takes n3's tokens
   and streams n3's ranges from the surviving replicas; `kv node replace n3 --with n5`
   follows it until n3 is LEFT. (`kv node remove`, the other way out for a dead node, is
   exercised by the membership simulation.)

Then every acknowledged write is read at ALL from its final owners (n1, n4, n5), and
`kv ring` shows the three of them sharing the ring evenly. Background anti-entropy is
off, so what moved, moved by streaming and pending writes. The measurements are printed:
keys and bytes streamed, seconds per move, and the p99 of the foreground writes before
and during the moves.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_ports, start_cluster

from kvstore.client import AsyncClient, KVError
from kvstore.node.local_cluster import NodeProcess

pytestmark = pytest.mark.integration

NODE_ARGS = ["--antientropy-interval", "0", "--ring-delay", "1", "--gossip-interval", "0.3"]
MOVE_TIMEOUT = 120.0


def kv(endpoints: list[str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, KV_ENDPOINTS=",".join(endpoints))
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


class Load:
    """QUORUM writes of new keys from one thread, recording acknowledgements and latency."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.acked: dict[bytes, bytes] = {}
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) of acked writes
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with AsyncClient(self.endpoints, timeout=5.0) as client:
            async def writer(w: int) -> None:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    key, value = f"load:{w}:{i}".encode(), f"v{w}-{i}".encode()
                    started = time.monotonic()
                    try:
                        await client.put(key, value, consistency="QUORUM")
                    except KVError:
                        self.errors += 1
                        await asyncio.sleep(0.05)
                        continue
                    self.acked[key] = value
                    self.latencies.append((started, time.monotonic() - started))

            await asyncio.gather(*(writer(w) for w in range(8)))

    def p99_ms(self, since: float, until: float) -> float:
        window = sorted(s for t, s in self.latencies if since <= t < until)
        return window[int(len(window) * 0.99) - 1] * 1000 if len(window) > 10 else float("nan")


def wait_move(address: str, kind: str) -> dict:
    """Poll a node's Info until its move of `kind` finished; return its progress."""
    deadline = time.monotonic() + MOVE_TIMEOUT
    while time.monotonic() < deadline:
        r = kv([address], "info", "--json")
        if r.returncode == 0:
            move = json.loads(r.stdout).get("move") or {}
            if move.get("kind") == kind and move.get("state") in ("done", "failed"):
                return move
        time.sleep(0.5)
    raise AssertionError(f"the {kind} on {address} did not finish in {MOVE_TIMEOUT}s")


def test_join_then_decommission_under_quorum_load_loses_nothing(tmp_path):
    cluster = start_cluster(tmp_path, extra_args=NODE_ARGS)
    load = None
    try:
        load = Load(cluster.endpoints())
        load.thread.start()
        time.sleep(3)
        before = (time.monotonic() - 3, time.monotonic())

        # 1. n4 joins by streaming
        port = free_ports(1)[0]
        n4 = NodeProcess(id="n4", address=f"127.0.0.1:{port}",
                         data_dir=str(tmp_path / "data" / "n4"),
                         log=str(tmp_path / "data" / "n4" / "node.log"))
        cluster.nodes.append(n4)
        t = time.monotonic()
        cluster.start_node("n4", ["--join", cluster.node("n1").address])
        join = wait_move(n4.address, "join")
        join_s = time.monotonic() - t
        assert join["state"] == "done", (join, cluster.log_tail("n4"))
        assert join["keys"] > 0 and join["ranges_done"] == join["ranges_total"] > 0

        # 2. n2 leaves by streaming
        t = time.monotonic()
        r = kv([cluster.node("n1").address], "node", "decommission", "n2", "--json")
        leave_s = time.monotonic() - t
        assert r.returncode == 0, r.stderr + cluster.log_tail("n2")
        leave = json.loads(r.stdout)
        assert leave["state"] == "done" and leave["keys"] > 0
        cluster.kill("n2")

        # 3. n3 dies for good: n5 takes its place (its tokens, its ranges streamed from the
        #    surviving replicas)
        cluster.kill("n3")
        port = free_ports(1)[0]
        cluster.nodes.append(NodeProcess(id="n5", address=f"127.0.0.1:{port}",
                                         data_dir=str(tmp_path / "data" / "n5"),
                                         log=str(tmp_path / "data" / "n5" / "node.log")))
        t = time.monotonic()
        cluster.start_node("n5", ["--join", cluster.node("n1").address, "--replace", "n3"])
        r = kv([cluster.node("n1").address], "node", "replace", "n3", "--with", "n5",
               "--node", cluster.node("n5").address, "--json")
        replace_s = time.monotonic() - t
        assert r.returncode == 0, r.stderr + cluster.log_tail("n5")
        replacement = json.loads(r.stdout)
        assert replacement["state"] == "done" and replacement["keys"] > 0, replacement
        assert replacement["replaces"] == "n3" and replacement["kind"] == "replace"
        during = (before[1], time.monotonic())
        time.sleep(1.5)  # writes in flight finish; gossip spreads LEFT
        load.stop.set()
        load.thread.join(timeout=30)

        final = [cluster.node(n).address for n in ("n1", "n4", "n5")]
        time.sleep(1.0)
        r = kv(final, "ring", "--json")
        assert r.returncode == 0, r.stderr
        ring = json.loads(r.stdout)
        on_ring = sorted(m["id"] for m in ring["members"] if m["status"] == "NORMAL")
        assert on_ring == ["n1", "n4", "n5"], ring
        assert ring["balance"] <= 1.3, ring

        async def read_all() -> list[str]:
            missing = []
            async with AsyncClient(final, timeout=10.0) as client:
                async def check(key: bytes, value: bytes) -> None:
                    result = await client.get(key, consistency="ALL")
                    if value not in [s.value for s in result.siblings]:
                        missing.append(key.decode())

                items = sorted(load.acked.items())
                for i in range(0, len(items), 64):
                    await asyncio.gather(*(check(k, v) for k, v in items[i:i + 64]))
            return missing

        assert len(load.acked) > 200, f"only {len(load.acked)} writes acknowledged"
        missing = asyncio.run(read_all())
        assert not missing, f"{len(missing)} acknowledged writes missing at ALL: {missing[:10]}"
        stored = json.loads(kv([cluster.node("n4").address], "info", "--json").stdout)
        print(f"\n[membership] replacement of n3 (killed) by n5: {replacement['keys']} keys, "
              f"{replacement['bytes']} bytes streamed in {replace_s:.1f}s (from its start)")
        print(f"\n[membership] {len(load.acked)} writes acknowledged ({load.errors} errors); "
              f"join of n4: {join['keys']} keys, {join['bytes']} bytes streamed in {join_s:.1f}s "
              f"(n4 stores {stored['keys_stored']} keys after); decommission of n2: "
              f"{leave['keys']} keys, {leave['bytes']} bytes in {leave_s:.1f}s; write p99 "
              f"{load.p99_ms(*before):.1f} ms before, {load.p99_ms(*during):.1f} ms during "
              f"the moves")
    finally:
        if load is not None:
            load.stop.set()
        cluster.stop()
    assert Path(n4.data_dir, "move.json").exists()
