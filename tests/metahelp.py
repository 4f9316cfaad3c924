"""Test shims: the dict-shaped metadata requests older tests use ({"op": "put"|"get"|"cas",
...}) onto the typed Meta API, with a client session (commands need one)."""

from __future__ import annotations

from kvstore._proto import meta_pb2 as mpb
from kvstore.client.meta import CompareFailed, MetaClient, OutcomeUnknown
from kvstore.core.errors import KVError


class DictMeta:
    """Sends through `send(MetaRequest) -> MetaReply` (a driver's handle_meta, or a network
    call); one session for every command it sends."""

    def __init__(self) -> None:
        self.client_id = 0
        self.seq = 0

    async def __call__(self, send, req: dict) -> dict:
        op = req.get("op")
        if op == "get":
            reply = await send(mpb.MetaRequest(read=mpb.MetaRead(key=req["key"])))
            kvs = reply.kvs
            return {"ok": reply.result.code == mpb.META_OK, "error": reply.result.error,
                    "found": bool(kvs), "value": kvs[0].value if kvs else None,
                    "revision": reply.result.revision, "leader": reply.leader}
        if not self.client_id:
            reply = await send(mpb.MetaRequest(command=mpb.MetaCommand(
                register=mpb.RegisterClient())))
            if reply.result.code != mpb.META_OK:
                return {"ok": False, "error": reply.result.error}
            self.client_id = reply.result.client_id
        self.seq += 1
        cmd = mpb.MetaCommand(session=mpb.Session(client_id=self.client_id, seq=self.seq))
        if op == "put":
            cmd.put.CopyFrom(mpb.MetaPut(key=req["key"], value=str(req.get("value", ""))))
        elif op == "cas":
            exp, new = req.get("expected"), req.get("value")
            cmd.cas.CopyFrom(mpb.MetaCas(key=req["key"], expect_absent=exp is None,
                                         expected=exp or "", delete=new is None,
                                         value=new or ""))
        else:
            raise ValueError(f"unknown op {op!r}")
        reply = await send(mpb.MetaRequest(command=cmd))
        res = reply.result
        ok = res.code == mpb.META_OK
        return {"ok": ok, "error": "compare failed" if res.code == mpb.META_COMPARE_FAILED
                else res.error, "previous": res.prev.value if res.had_prev else None,
                "revision": res.revision, "duplicate": res.duplicate,
                "unknown": res.code in (mpb.META_UNKNOWN, mpb.META_SESSION_EXPIRED),
                "leader": reply.leader}


def meta_sync(endpoints, req: dict, timeout: float = 5.0) -> dict:
    """One blocking request through the Python client (a fresh session)."""
    eps = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
    with MetaClient(eps, timeout=timeout) as c:
        try:
            if req["op"] == "get":
                k, _rev = c.get(req["key"])
                return {"ok": True, "found": k is not None, "value": k.value if k else None}
            if req["op"] == "put":
                w = c.put(req["key"], str(req["value"]))
            else:
                w = c.cas(req["key"], req.get("expected"), req.get("value"))
            return {"ok": True, "revision": w.revision,
                    "leader": c.async_client.last_leader}
        except CompareFailed as exc:
            return {"ok": False, "error": "compare failed", "current": exc.current}
        except OutcomeUnknown as exc:
            return {"ok": False, "unknown": True, "error": exc.message}
        except KVError as exc:
            return {"ok": False, "error": exc.message}
