"""Token-aware routing against real processes: 5 nodes, N=3, so each key has two nodes
that are not replicas and would forward a write to one.

Checked through what the nodes themselves say: their forwarding counter in /metrics
(`kv_coordinator_total{event="writes_forwarded"}`) and the trace of a write ("is not a
replica; forwarding", `forwarded_to`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import free_ports, kv_in_process, start_cluster
from prometheus_client.parser import text_string_to_metric_families

from kvstore.client import AsyncClient, Client
from kvstore.client.routing import RingView
from kvstore.core.ring import Ring
from kvstore.node.local_cluster import LocalCluster

pytestmark = pytest.mark.integration

NODES = 5
KEYS = [f"route-{i}" for i in range(60)]
FORWARDING = "is not a replica; forwarding"


@pytest.fixture(scope="module")
def cluster5(tmp_path_factory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("routing"), nodes=NODES, replication_factor=3,
                      metrics_ports=free_ports(NODES))
    try:
        yield c
    finally:
        c.stop()


def forwarded(cluster: LocalCluster) -> float:
    """Writes forwarded by all nodes so far, from each node's /metrics."""
    count = 0.0
    for node in cluster.nodes:
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "kv_coordinator_total" and s.labels.get("event") == \
                        "writes_forwarded":
                    count += s.value
    return count


async def put_all(cluster: LocalCluster, *, route: bool, trace: bool = False,
                  prefix: str = "") -> list[dict]:
    async with AsyncClient(cluster.endpoints(), route=route) as client:
        if route:
            view = await client.refresh_ring()
            assert view is not None and len(view.ring.nodes) == NODES
        results = await asyncio.gather(*(
            client.put(prefix + k, "v", consistency="QUORUM", trace=trace) for k in KEYS))
    return [r.trace for r in results]


def test_routed_writes_are_never_forwarded(cluster5):
    before = forwarded(cluster5)
    traces = asyncio.run(put_all(cluster5, route=True, trace=True, prefix="a-"))
    assert forwarded(cluster5) == before
    for t in traces:
        assert t["forwarded_to"] is None
        assert t["coordinator"] == t["preference_list"][0]  # the first replica coordinates
        assert not any(FORWARDING in e["event"] for e in t["events"])


def test_unrouted_writes_are_forwarded_when_they_reach_a_non_replica(cluster5):
    before = forwarded(cluster5)
    traces = asyncio.run(put_all(cluster5, route=False, trace=True, prefix="b-"))
    hops = [t for t in traces if t["forwarded_to"]]
    # round-robin over 5 nodes with N=3: ~2 in 5 writes reach a non-replica
    assert hops, "no unrouted write was forwarded"
    assert forwarded(cluster5) - before == len(hops)
    for t in hops:
        assert t["coordinator"] not in t["preference_list"]
        assert any(FORWARDING in e["event"] for e in t["events"])


def test_the_cli_routes_and_no_route_turns_it_off(cluster5):
    eps = ",".join(cluster5.endpoints())
    # Unrouted, a CLI command's requests go to the endpoints in turn from the first (`kv
    # put` reads the key's context, then writes): a key the first two do not replicate
    first_two = {n.id for n in cluster5.nodes[:2]}
    ring = Ring.of_nodes([n.id for n in cluster5.nodes])
    key = next(k for k in (f"cli-{i}" for i in range(200))
               if not first_two & set(ring.preference_list(k.encode(), 3)))
    routed = kv_in_process(eps, "put", key, "v", "--trace", "--json")
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["trace"]["forwarded_to"] is None
    plain = kv_in_process(eps, "--no-route", "put", key, "v2", "--trace")
    assert plain.returncode == 0, plain.stderr
    assert FORWARDING in plain.stdout


def test_a_stale_ring_still_writes_and_a_forwarded_reply_refreshes_it(cluster5):
    async def run() -> None:
        async with AsyncClient(cluster5.endpoints(), route_refresh=3600.0) as client:
            view = await client.refresh_ring()
            # a wrong ring: every member's address taken for the next one's
            ids = sorted(view.addresses)
            client.ring = RingView(view.ring, 3, {n: view.addresses[ids[(i + 1) % len(ids)]]
                                                  for i, n in enumerate(ids)})
            key = next(k for k in (f"stale-{i}".encode() for i in range(100))
                       if client.ring.replicas(k)[0] not in view.replicas(k))
            assert client.ring.addresses != view.addresses
            reply = await client.put(key, "v", consistency="QUORUM", trace=True)
            assert reply.trace["forwarded_to"]  # the node forwarded: written all the same
            assert (await client.get(key, consistency="QUORUM")).value == b"v"
            deadline = time.monotonic() + 10
            while client.ring.addresses != view.addresses:  # refreshed soon, not in an hour
                assert time.monotonic() < deadline, "the ring was not refreshed"
                await asyncio.sleep(0.2)
                await client.get(key)
            second = await client.put(key, "v3", consistency="QUORUM", trace=True)
            assert second.trace["forwarded_to"] is None

    asyncio.run(run())


def test_a_hung_node_does_not_hold_up_the_first_routed_request(cluster5):
    """A blocking client fetches the ring before its first request, from every endpoint
    at once; a node that accepts connections but never answers (paused) must not make
    it wait for its whole deadline (30 s here): the others' answers are used after a
    short grace, and the write goes to a replica."""
    hung = cluster5.nodes[-1]
    ring = Ring.of_nodes([n.id for n in cluster5.nodes])
    key = next(k for k in (f"hung-{i}" for i in range(100))
               if hung.id not in ring.preference_list(k.encode(), 3))
    os.kill(cluster5.procs[hung.id].pid, signal.SIGSTOP)
    try:
        with Client(cluster5.endpoints(), timeout=30.0) as client:
            started = time.monotonic()
            put = client.put(key, "v", consistency="ONE", trace=True)
            assert time.monotonic() - started < 15.0
            view = client.async_client.ring
            assert view is not None
            assert {view.addresses[n.id] for n in cluster5.nodes} == set(cluster5.endpoints())
            assert put.trace["forwarded_to"] is None
    finally:
        os.kill(cluster5.procs[hung.id].pid, signal.SIGCONT)
