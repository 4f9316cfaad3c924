"""The node's HTTP port (aiohttp): Prometheus metrics, the live dashboard and its data.

    GET /metrics       Prometheus exposition format (this node)
    GET /              the dashboard page (no build step: one HTML file, plain JS, polling)
    GET /api/state     this node's state (observe.proto NodeState as JSON)
    GET /api/cluster   every member's state, gathered over the Observe gRPC API, with the
                       clock offset of each member against this node (NTP-style, +-rtt/2)

Read-only: nothing on this port changes the node (chaos goes through the gRPC chaos API).
With --tls the calls to the other members use the node's own certificate (mutual TLS, the
server checked against the member's id, as internode traffic is): a node certificate is
admitted on the peer port and, with --auth, acts as admin.
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
from kvstore.transport.grpc_transport import CHANNEL_OPTIONS
from kvstore.transport.tls import TlsFiles

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")
PEER_TIMEOUT = 1.0


def state_json(state: observe_pb2.NodeState) -> dict:
    return MessageToDict(state, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


class HttpServer:
    def __init__(self, observer: Observer, host: str, port: int,
                 tls: TlsFiles | None = None) -> None:
        self.observer = observer
        self.host = host
        self.port = port
        self.tls = tls
        self.runner: web.AppRunner | None = None
        # member -> ((address, certificate generation), channel)
        self.channels: dict[str, tuple[tuple[str, int], grpc.aio.Channel]] = {}
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
        for _, channel in self.channels.values():
            await channel.close()
        self.channels.clear()

    def _channel(self, member: str, address: str) -> grpc.aio.Channel:
        """A channel to a member: plaintext on an insecure cluster, else mutual TLS with
        this node's certificate, verifying that the server's certificate names `member`.
        A new one when the member moved or the certificates were reloaded (SIGHUP)."""
        key = (address, self.tls.generation if self.tls else 0)
        cached = self.channels.get(member)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            asyncio.get_running_loop().create_task(cached[1].close())
        # the peers' channel options: quick reconnects, names looked up again within 1 s
        if self.tls is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(
                address, self.tls.channel_credentials(),
                options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", member)])
        self.channels[member] = (key, channel)
        return channel

    async def metrics(self, request: web.Request) -> web.Response:
        await self.observer.refresh()
        body = generate_latest(self.observer.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(state_json(await self.observer.state()))

    async def _peer_state(self, member: str, address: str) -> dict:
        channel = self._channel(member, address)
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
