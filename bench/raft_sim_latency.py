"""Raft write latency in the simulator's virtual time, with the leader's parallel fsync
(`Ready.send_first`) honoured and with it forced off - no machine noise.

    PYTHONPATH=. .venv/bin/python bench/raft_sim_latency.py [--seeds 5]

3 voters, no faults (one leadership transfer at 5 s), 3 closed-loop clients over 3 keys;
for each (fsync time, one-way delay) setting, the mean and median time from a write's
proposal to its answer over `--seeds` runs. With send_first off the leader sends only after
its own fsync: it then commits exactly when the code before the change did (a follower's
acknowledgement always arrives after the leader's fsync), so "off" is the old behaviour.
Uses the simulator of tests/sim/raft (run from the repository root).
"""

from __future__ import annotations

import argparse
import statistics

from kvstore.core.raft import RaftNode
from tests.sim.raft.sim import Fault, Scenario, Simulation

SETTINGS = ((3, 3), (10, 3), (10, 8), (30, 8))  # (fsync 1..N ms, one-way delay 1..N ms)


def latencies(send_first: bool, fsync: int, delay: int, seed: int) -> list[int]:
    ready = RaftNode.ready

    def no_send_first(self):
        rd = ready(self)
        rd.send_first = False
        return rd

    if not send_first:
        RaftNode.ready = no_send_first
    try:
        sc = Scenario(seed=seed, n_nodes=3, spare=False, loss=0.0, dup=0.0, max_delay=delay,
                      long_delay_p=0.0, faults=[Fault("transfer", 5000, 5001)], heal_at=5001,
                      snap_every=60, keep_entries=10, clients=3, keys=3, drift=(0, 0, 0, 0),
                      fsync_ms=fsync)
        sim = Simulation(sc)
        sim.run()
    finally:
        RaftNode.ready = ready
    return [int(o.ret - o.call) for o in sim.history if o.kind in ("put", "cas") and o.known]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    opts = p.parse_args()
    print("| fsync takes | one-way delay | before: mean / median ms | after: mean / median ms "
          "| writes answered (before -> after) |")
    print("|---|---|---|---|---|")
    for fsync, delay in SETTINGS:
        res = {}
        for on in (False, True):
            lat = [x for seed in range(opts.seeds) for x in latencies(on, fsync, delay, seed)]
            res[on] = (statistics.mean(lat), statistics.median(lat), len(lat))
        print(f"| 1-{fsync} ms | 1-{delay} ms | {res[False][0]:.1f} / {res[False][1]:.0f} | "
              f"{res[True][0]:.1f} / {res[True][1]:.0f} | {res[False][2]:,} -> "
              f"{res[True][2]:,} |")


if __name__ == "__main__":
    main()
