"""Benchmark engine behind `kv bench` and bench/consistency.py.

runner     BenchConfig, run() / run_async(): load, ceilings, one measured run per level
workloads  YCSB-style mixes a, b, c, f, w and the ping / null ceilings
keys       uniform and (scrambled) zipfian key choosers on an injected seeded Random
levels     consistency levels (ONE, QUORUM, READ/WRITE pairs), durations
stats      HdrHistogram recording, error counts, per-interval timeline
staleness  the stale-read detector (write ids in values, PBS time buckets)
report     terminal tables, live progress, results.json, results.png
"""
