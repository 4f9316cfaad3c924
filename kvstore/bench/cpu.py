"""CPU time of processes, for "node CPU per operation".

CPU seconds a process spent (user + system, all its threads) are read from
/proc/PID/stat, so the figure does not depend on how busy the machine is: on a loaded
machine an operation takes longer, but not more CPU. Summed over the node processes and
divided by the operations completed in the same window, it is what one operation costs
the cluster (the method docs/benchmarks.md uses). Linux only; elsewhere `available()`
is False and the benchmarks leave the figure out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return Path("/proc/self/stat").exists()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (None: no such process, or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after it
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


class CpuMeter:
    """CPU used by a set of processes between `start()` and `stop()`.

    `pids` maps a label (a node id) to its pid. A process that exits in between is
    reported as None (its CPU is unknown), and the total leaves it out and says so.
    The bench process's own CPU (`self_s`, all its threads) is measured alongside, so a
    report can show that the load generator was not the bottleneck.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float | None] = {}
        self._self_start = 0.0
        self._wall_start = 0.0
        self.started = False

    def start(self) -> None:
        self.started = True
        self._start = {label: process_cpu_s(pid) for label, pid in self.pids.items()}
        self._self_start = time.process_time()
        self._wall_start = time.perf_counter()

    def stop(self) -> dict[str, object]:
        wall = time.perf_counter() - self._wall_start
        own = time.process_time() - self._self_start
        per_node: dict[str, float | None] = {}
        for label, pid in self.pids.items():
            before, after = self._start.get(label), process_cpu_s(pid)
            per_node[label] = None if before is None or after is None else after - before
        known = [v for v in per_node.values() if v is not None]
        return {"wall_s": wall, "nodes_cpu_s": sum(known), "per_node_cpu_s": per_node,
                "nodes_missing": sorted(k for k, v in per_node.items() if v is None),
                "client_cpu_s": own}


def per_op(cpu: dict[str, object], ops: int) -> dict[str, float | None]:
    """Microseconds of CPU per operation: summed over the nodes, and in the client."""
    if ops <= 0:
        return {"node_cpu_us_per_op": None, "client_cpu_us_per_op": None}
    return {"node_cpu_us_per_op": float(cpu["nodes_cpu_s"]) / ops * 1e6,  # type: ignore[arg-type]
            "client_cpu_us_per_op": float(cpu["client_cpu_s"]) / ops * 1e6}  # type: ignore[arg-type]
