"""Deterministic simulation of the Raft metadata group (see docs/raft.md)."""
