"""The request id of the client request being served, carried with the asyncio context.

The coordinator sets it for a request that has one; every internode message sent while
serving it carries it (`Coalescer.call` stamps `PeerMessage.request_id`), and the node that
receives the message sets it again before handling it. Log lines read it (node/logs.py), so
`kv logs --request ID` finds every node's lines for one request. Tasks started while it is
set inherit it (asyncio copies the context), background work included.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("kvstore_request_id", default="")
