"""The CPU meter behind "node CPU per operation": real processes, real /proc."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kvstore.bench import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="needs Linux /proc")


def test_a_busy_process_is_charged_and_an_idle_one_is_not() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # let both finish starting up (imports cost CPU)
        meter = cpu.CpuMeter({"busy": busy.pid, "idle": idle.pid})
        meter.start()
        # wait for CPU time, not wall time: on a loaded machine a spinner may get little
        start = cpu.process_cpu_s(busy.pid)
        deadline = time.monotonic() + 60
        while cpu.process_cpu_s(busy.pid) - start < 0.2:
            assert time.monotonic() < deadline, "the spinning process got no CPU in 60 s"
            time.sleep(0.05)
        out = meter.stop()
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    per = out["per_node_cpu_s"]
    assert per["busy"] >= 0.19  # at least what it was seen to use while metered
    assert per["idle"] < 0.05
    assert out["nodes_cpu_s"] == pytest.approx(per["busy"] + per["idle"])
    assert out["nodes_missing"] == []


def test_a_process_that_exits_is_reported_missing_not_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    meter = cpu.CpuMeter({"gone": proc.pid})
    meter.start()
    proc.wait()
    out = meter.stop()
    assert out["per_node_cpu_s"] == {"gone": None}
    assert out["nodes_missing"] == ["gone"]
    assert cpu.process_cpu_s(proc.pid) is None


def test_per_op() -> None:
    got = cpu.per_op({"nodes_cpu_s": 0.3, "client_cpu_s": 0.1}, 1000)
    assert got == {"node_cpu_us_per_op": pytest.approx(300), "client_cpu_us_per_op":
                   pytest.approx(100)}
    assert cpu.per_op({"nodes_cpu_s": 1.0, "client_cpu_s": 1.0}, 0)["node_cpu_us_per_op"] is None
