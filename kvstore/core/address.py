"""`host:port` addresses, checked the same way everywhere (pure)."""

from __future__ import annotations


def is_host_port(text: str) -> bool:
    """Whether `text` is `host:port` with a port in 1..65535."""
    host, colon, port = text.rpartition(":")
    return bool(colon and host and port.isdigit() and 0 < int(port) < 65536)
