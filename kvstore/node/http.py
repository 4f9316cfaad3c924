"""The node's HTTP port (aiohttp): Prometheus metrics, the live dashboard and its data.

    GET /metrics       Prometheus exposition format (this node)
    GET /              the dashboard page (no build step: one HTML file, plain JS, polling)
    GET /api/state     this node's state (observe.proto NodeState as JSON)
    GET /api/cluster   every member's state, gathered over the Observe gRPC API, with the
                       clock offset of each member against this node (NTP-style, +-rtt/2)

Read-only: nothing on this port changes the node (chaos goes through the gRPC chaos API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kvstore._proto import observe_pb2, observe_pb2_grpc
from kvstore.node.observe import Observer

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")
PEER_TIMEOUT = 1.0


def state_json(state: observe_pb2.NodeState) -> dict:
    return MessageToDict(state, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


class HttpServer:
    def __init__(self, observer: Observer, host: str, port: int) -> None:
        self.observer = observer
        self.host = host
        self.port = port
        self.runner: web.AppRunner | None = None
        self.channels: dict[str, grpc.aio.Channel] = {}
        app = web.Application()
        app.add_routes([web.get("/metrics", self.metrics), web.get("/", self.page),
                        web.get("/api/state", self.state), web.get("/api/cluster", self.cluster)])
        self.app = app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise OSError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        log.info("metrics and dashboard on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        for channel in self.channels.values():
            await channel.close()

    async def metrics(self, request: web.Request) -> web.Response:
        await self.observer.refresh()
        body = generate_latest(self.observer.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(state_json(await self.observer.state()))

    async def _peer_state(self, member: str, address: str) -> dict:
        channel = self.channels.get(address)
        if channel is None:
            channel = self.channels[address] = grpc.aio.insecure_channel(address)
        sent = time.time()
        try:
            state = await observe_pb2_grpc.ObserveStub(channel).State(
                observe_pb2.StateRequest(), timeout=PEER_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return {"node_id": member, "address": address,
                    "error": f"{exc.code().name}: {exc.details()}"}
        received = time.time()
        out = state_json(state)
        out["clock_offset_ms"] = round((state.wall_time - (sent + received) / 2) * 1000, 1)
        out["rtt_ms"] = round((received - sent) * 1000, 1)
        return out

    async def cluster(self, request: web.Request) -> web.Response:
        node = self.observer.node
        local = state_json(await self.observer.state())
        local["clock_offset_ms"], local["rtt_ms"] = 0.0, 0.0
        peers = [(m, a) for m, a in sorted(node.membership.members.items())
                 if m != node.node_id]
        others = await asyncio.gather(*(self._peer_state(m, a) for m, a in peers))
        nodes = sorted([local, *others], key=lambda s: s["node_id"])
        return web.json_response({"served_by": node.node_id, "at": time.time(),
                                  "nodes": nodes})
