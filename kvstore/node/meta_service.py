"""The `Meta` gRPC service (proto/kvstore/_proto/meta.proto): a thin servicer handing each
request to the node's raft driver, which serves it as leader or forwards it."""

from __future__ import annotations

import asyncio

import grpc

from kvstore._proto import meta_pb2 as mpb
from kvstore._proto import meta_pb2_grpc
from kvstore.node.node import Node

MAX_BATCH = 1024


class MetaServicer(meta_pb2_grpc.MetaServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Call(self, request: mpb.MetaRequest, context) -> mpb.MetaReply:
        if self.node.raft is None:
            return mpb.MetaReply(result=mpb.MetaResult(
                code=mpb.META_UNAVAILABLE,
                error=f"{self.node.node_id} does not run the raft metadata group (start it "
                      "with --raft-voters)"))
        request.hops = 0  # hops count forwards between nodes; a client cannot preset them
        if request.WhichOneof("body") == "command" and \
                request.command.WhichOneof("op") == "ring_change":
            # The committed ring is changed by nodes only, over the internode transport, as
            # they move (docs/membership.md): a client must not forge a member's state.
            return mpb.MetaReply(result=mpb.MetaResult(
                code=mpb.META_BAD_REQUEST,
                error="ring changes are made by the nodes as they join, leave or are "
                      "removed (kv node start --join, kv node decommission, kv node "
                      "remove), not sent by clients"))
        return await self.node.raft.handle_meta(request)

    async def CallBatch(self, request: mpb.MetaBatch, context) -> mpb.MetaBatchReply:
        if len(request.requests) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_BATCH} requests in a batch")
        replies = await asyncio.gather(*(self.Call(r, context) for r in request.requests))
        return mpb.MetaBatchReply(replies=replies)
