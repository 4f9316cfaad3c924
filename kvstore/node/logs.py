"""Structured logs of a node process: one JSON object a line, and the lines of named
requests kept in memory for `kv logs --request ID` (the Observe.Logs RPC).

A line: {"ts": "2026-12-06T03:05:54.206Z", "level": "INFO", "node": "n1",
"logger": "kvstore.services.coordinator", "msg": "...", "request_id": "n1-..."} (the last
only while serving a request that has an id; kvstore/transport/context.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque

from kvstore.transport.context import REQUEST_ID

MAX_REQUEST_LINES = 20_000  # lines of named requests kept for the Logs RPC (oldest dropped)


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "node": self.node_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class RequestLogBuffer(logging.Handler):
    """Keeps the formatted lines logged while serving a named request (bounded)."""

    def __init__(self, node_id: str, limit: int = MAX_REQUEST_LINES) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(node_id))
        self.lines: deque[tuple[str, str]] = deque(maxlen=limit)

    def emit(self, record: logging.LogRecord) -> None:
        request_id = REQUEST_ID.get()
        if request_id:
            try:
                self.lines.append((request_id, self.format(record)))
            except Exception:  # a log line must never break the request
                self.handleError(record)

    def find(self, request_id: str, limit: int) -> list[str]:
        return [line for rid, line in self.lines if rid == request_id][-limit:]


def install(node_id: str, fmt: str, level: str) -> RequestLogBuffer:
    """Format the process's log lines as `fmt` (json or text), and keep named requests'
    lines for the Logs RPC. Returns the buffer."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    if fmt == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter(node_id))
    buffer = RequestLogBuffer(node_id)
    buffer.setLevel(logging.INFO)
    root.addHandler(buffer)
    root.setLevel(level)
    return buffer
