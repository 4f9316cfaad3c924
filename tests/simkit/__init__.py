"""Deterministic simulation kit: a virtual-time asyncio loop and in-memory clusters."""
