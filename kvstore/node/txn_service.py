"""The `Txn` gRPC service (proto/kvstore/_proto/txn.proto): a thin servicer handing each
request to the node's TxnService (services/txn.py), which coordinates it. With --auth a
transaction needs the readwrite role, an atomic read or a status query readonly (the
node's own Raft session writes the records, so callers need no metadata rights)."""

from __future__ import annotations

from kvstore._proto import txn_pb2 as tpb
from kvstore._proto import txn_pb2_grpc
from kvstore.core.errors import KVError
from kvstore.node.node import Node
from kvstore.node.security import READONLY, READWRITE, Guard


class TxnServicer(txn_pb2_grpc.TxnServicer):
    def __init__(self, node: Node, guard: Guard) -> None:
        self.node = node
        self.guard = guard

    async def _allow(self, context, needed: str, what: str) -> None:
        if self.guard.auth is not None:
            await self.guard.client(context, needed, what)

    async def Put(self, request: tpb.TxnPutRequest, context) -> tpb.TxnPutReply:
        await self._allow(context, READWRITE, "run transactions")
        try:
            return await self.node.txn.put(request)
        except KVError as exc:
            return tpb.TxnPutReply(error=exc.to_pb(), txn_id=request.txn_id)

    async def Get(self, request: tpb.TxnGetRequest, context) -> tpb.TxnGetReply:
        await self._allow(context, READONLY, "read keys atomically")
        try:
            return await self.node.txn.get(request)
        except KVError as exc:
            return tpb.TxnGetReply(error=exc.to_pb())

    async def Status(self, request: tpb.TxnStatusRequest, context) -> tpb.TxnStatusReply:
        await self._allow(context, READONLY, "read transaction records")
        try:
            rec = await self.node.txn.status(request.txn_id)
        except KVError as exc:
            return tpb.TxnStatusReply(error=exc.to_pb())
        return tpb.TxnStatusReply(record=rec, found=True) if rec is not None \
            else tpb.TxnStatusReply(found=False)
