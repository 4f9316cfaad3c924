"""Internode failure reasons end up in client errors (a read's shortfall lists each
replica's reason), so they must not claim a write outcome: a get never says "may have
been applied" (issue 17)."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError

from kvstore.transport.base import PeerTimeout, PeerUnreachable, TransportError
from kvstore.transport.grpc_transport import _transport_error


def error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_reasons_say_what_happened_to_the_message_not_to_a_write() -> None:
    lost = _transport_error("n2", error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), 2.0)
    assert type(lost) is TransportError
    assert lost.reason == "connection lost during the call (Socket closed); it may have " \
                          "been delivered"
    refused = _transport_error("n2", error(grpc.StatusCode.UNAVAILABLE,
                                           "failed to connect to all addresses"), 2.0)
    assert isinstance(refused, PeerUnreachable) and "unreachable" in refused.reason
    slow = _transport_error("n2", error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), 2.0)
    assert isinstance(slow, PeerTimeout) and slow.reason == "timed out after 2000 ms"
    for e in (lost, refused, slow):
        assert "applied" not in e.reason
