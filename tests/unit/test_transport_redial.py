"""A peer back from an outage is reachable at once, not after gRPC's reconnect backoff.

Real gRPC on 127.0.0.1: node a calls b while b is down (its channel backs off), b comes
back on the same port, and a's next call must be delivered. Without the redial (a new
channel when the old one is backing off) that call waited RECONNECT_WAIT on a channel that
would not dial again before its backoff ran out, and failed; the test makes the backoff
long (10 s) so that this is certain, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from kvstore._proto import internode_pb2 as pb
from kvstore.transport import grpc_transport
from kvstore.transport.base import PeerUnreachable
from kvstore.transport.grpc_transport import GrpcTransport


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _answer(source: str, message: pb.PeerMessage) -> pb.PeerResult:
    return pb.PeerResult(found=True)


async def _serve(port: int) -> tuple[grpc.aio.Server, GrpcTransport]:
    server = grpc.aio.server()
    transport = GrpcTransport("b", server)
    await transport.start(_answer)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, transport


def _ping() -> pb.PeerMessage:
    return pb.PeerMessage(read=pb.ReplicaRead(key=b"k"))


@pytest.mark.parametrize("redial", [True, False])
def test_a_peer_back_on_its_port_is_reached_by_the_next_call(monkeypatch, redial):
    monkeypatch.setattr(grpc_transport, "CHANNEL_OPTIONS", [
        *[o for o in grpc_transport.CHANNEL_OPTIONS if "reconnect_backoff" not in o[0]],
        ("grpc.initial_reconnect_backoff_ms", 10_000),
        ("grpc.max_reconnect_backoff_ms", 10_000),
    ])
    if not redial:  # the negative control: the code before the redial
        monkeypatch.setattr(GrpcTransport, "_redial_if_backing_off",
                            lambda self, peer, now: None)

    async def scenario() -> None:
        port = _free_port()
        a_server = grpc.aio.server()
        a = GrpcTransport("a", a_server)
        a.set_address("b", f"127.0.0.1:{port}")
        try:
            with pytest.raises(PeerUnreachable):  # b is not up yet: a's channel backs off
                await a.call("b", _ping(), 1.0)
            b_server, b = await _serve(port)
            await asyncio.sleep(grpc_transport.REDIAL_EVERY)  # b has been back a moment
            try:
                if redial:
                    result = await a.call("b", _ping(), 2.0)
                    assert result.found
                else:
                    with pytest.raises(PeerUnreachable):
                        await a.call("b", _ping(), 2.0)
            finally:
                await b.close()
                await b_server.stop(None)
        finally:
            await a.close()
            await a_server.stop(None)

    asyncio.run(scenario())
