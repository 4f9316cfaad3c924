"""Benchmark engine behind `kv bench` and bench/ scripts."""
