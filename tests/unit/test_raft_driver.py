"""The asyncio raft driver and metadata service over the in-memory network, in virtual time
(deterministic, no sleeping in real time)."""

from __future__ import annotations

import asyncio
import json
import random

from metahelp import DictMeta
from simkit.vtime import run

from kvstore._proto import internode_pb2 as pb
from kvstore.services.raft_driver import RaftDriver, client_request
from kvstore.transport.batching import Coalescer
from kvstore.transport.memory import MemoryNetwork

VOTERS = ["n1", "n2", "n3"]


async def inline(fn, *args):
    return fn(*args)


async def _cluster(ids: list[str], seed: int = 1):
    net = MemoryNetwork(seed)
    drivers = {}
    for nid in ids:
        t = net.transport(nid)
        for other in ids:
            t.set_address(other, f"mem://{other}")
        d = RaftDriver(nid, VOTERS, t, tick_interval=0.01, snapshot_every=20, keep_entries=5,
                       rng=random.Random(f"{seed}{nid}"), offload=inline, request_timeout=2.0,
                       forward_transport=Coalescer(nid, t._send), bootstrap=True)

        async def handler(source, msg, d=d):
            if msg.HasField("meta"):
                return pb.PeerResult(meta=await d.handle_meta(msg.meta))
            return pb.PeerResult(raw=await d.on_message(source, msg.raft))

        await t.start(handler)
        await d.start()
        drivers[nid] = d
    return net, drivers


_DICT = DictMeta()


async def _call(net: MemoryNetwork, via: str, req: dict) -> dict:
    cli = net.transport("cli")
    cli.set_address(via, f"mem://{via}")
    if req.get("op") in ("get", "put", "cas"):
        async def send(mreq):
            return (await cli.call(via, pb.PeerMessage(meta=mreq), timeout=5.0)).meta

        return await _DICT(send, req)
    res = await cli.call(via, pb.PeerMessage(raft=client_request(req)), timeout=5.0)
    return json.loads(res.raw)


def _leader(drivers) -> str | None:
    leads = [n for n, d in drivers.items() if d.core and d.core.role.value == "leader"]
    return leads[0] if len(leads) == 1 else None


def test_meta_put_get_cas_through_any_node_and_failover() -> None:
    async def main():
        net, drivers = await _cluster([*VOTERS, "n4"])  # n4 runs no raft: it forwards
        await asyncio.sleep(1.0)
        lead = _leader(drivers)
        assert lead is not None
        follower = next(n for n in VOTERS if n != lead)
        assert (await _call(net, follower, {"op": "put", "key": "a", "value": "1"}))["ok"]
        got = await _call(net, "n4", {"op": "get", "key": "a"})
        assert (got["ok"], got["value"], got["found"], got["leader"]) == (True, "1", True, lead)
        assert got["revision"] >= 1
        bad = await _call(net, lead, {"op": "cas", "key": "a", "expected": "0", "value": "2"})
        assert bad["ok"] is False and bad["error"] == "compare failed" and bad["previous"] == "1"
        good = await _call(net, "n4", {"op": "cas", "key": "a", "expected": "1", "value": "2"})
        assert good["ok"] is True
        for i in range(30):  # enough to trigger snapshots and compaction
            await _call(net, lead, {"op": "put", "key": f"k{i}", "value": str(i)})
        status = await _call(net, follower, {"op": "status"})
        assert status["leader"] == lead and status["commit_index"] >= 30
        assert {m["id"] for m in status["members"]} == set(VOTERS)
        assert all(m["match_index"] is not None for m in status["members"])

        net.crash(lead)  # the leader dies; the others elect a new one
        await drivers[lead].stop()
        await asyncio.sleep(1.0)
        new = _leader({n: d for n, d in drivers.items() if n != lead})
        assert new is not None and new != lead
        got = await _call(net, "n4", {"op": "get", "key": "a"})
        assert got["value"] == "2"  # the acknowledged write survived the failover
        assert (await _call(net, new, {"op": "get", "key": "k29"}))["value"] == "29"
        for d in drivers.values():
            await d.stop()

    run(main)


def test_bad_requests_get_clear_errors() -> None:
    async def main():
        net, drivers = await _cluster(VOTERS, seed=2)
        await asyncio.sleep(1.0)
        lead = _leader(drivers)
        r = await _call(net, lead, {"op": "frobnicate"})
        assert r["ok"] is False and "unknown op" in r["error"]
        d = drivers[lead]
        assert await d.on_message("x", bytes([1]) + b"garbage") == b""  # dropped, logged
        assert json.loads(await d.on_message("x", bytes([2]) + b"{"))["ok"] is False
        for d in drivers.values():
            await d.stop()

    run(main)
