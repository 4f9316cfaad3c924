"""The workloads, in the spirit of YCSB's core workloads.

| ours | YCSB | mix | notes |
|---|---|---|---|
| a | A (update heavy) | 50% read, 50% update | |
| b | B (read mostly) | 95% read, 5% update | |
| c | C (read only) | 100% read | |
| f | F (read-modify-write) | 50% read, 50% RMW | the write carries the read's context |
| w | the load phase | 100% update | write-only load over existing keys |

YCSB's "update" is a blind overwrite. In a store with causal contexts a blind write is
concurrent with everything and piles up siblings, so our update passes the context the
harness last saw for the key (from its latest read or write of it): a client that keeps
its contexts, which is how the store is meant to be used. D (read latest, inserts) and E
(scans) are not offered: the store has no scans, and inserts would change the key space
the staleness detector judges.

`ping` and `null` are the ceilings: the KV.Ping RPC, and an empty request through the
pipelined Execute path (the server rejects it before any storage or replication work).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

READ, UPDATE, RMW, PING, NULL = "read", "update", "rmw", "ping", "null"


@dataclass(frozen=True)
class Workload:
    name: str
    ycsb: str
    mix: tuple[tuple[str, float], ...]  # (operation, share); shares sum to 1

    def chooser(self, rng: random.Random):
        """A zero-argument function returning the next operation, drawn with `rng`."""
        if len(self.mix) == 1:
            only = self.mix[0][0]
            return lambda: only
        ops = [op for op, _ in self.mix]
        cumulative, total = [], 0.0
        for _, share in self.mix:
            total += share
            cumulative.append(total)

        def choose() -> str:
            u = rng.random() * total
            for op, edge in zip(ops, cumulative, strict=True):
                if u < edge:
                    return op
            return ops[-1]

        return choose

    @property
    def reads(self) -> bool:
        return any(op in (READ, RMW) for op, _ in self.mix)


WORKLOADS: dict[str, Workload] = {
    "a": Workload("a", "YCSB A: update heavy (50/50)", ((READ, 0.5), (UPDATE, 0.5))),
    "b": Workload("b", "YCSB B: read mostly (95/5)", ((READ, 0.95), (UPDATE, 0.05))),
    "c": Workload("c", "YCSB C: read only", ((READ, 1.0),)),
    "f": Workload("f", "YCSB F: read-modify-write (50/50)", ((READ, 0.5), (RMW, 0.5))),
    "w": Workload("w", "write-only load (YCSB load phase)", ((UPDATE, 1.0),)),
}
CEILINGS: dict[str, Workload] = {
    "ping": Workload("ping", "null RPC: KV.Ping, one RPC per call", ((PING, 1.0),)),
    "null": Workload("null", "null request through the pipelined Execute path",
                     ((NULL, 1.0),)),
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of "
                         f"{', '.join(sorted(WORKLOADS))}") from None
