"""bench/vs_etcd.py end to end, briefly: real etcd members and real kvstore nodes.

No speed is asserted (the machine is shared); the test checks that every phase ran
against both systems, without errors, with CPU per operation measured, and that the
outputs are written. Skips, saying how to install it, where etcd is absent.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vs_etcd.py"


def _load():
    spec = importlib.util.spec_from_file_location("vs_etcd", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_etcd"] = module
    spec.loader.exec_module(module)
    return module


def test_missing_etcd_is_a_clear_error(tmp_path, capsys) -> None:
    vs = _load()
    code = vs.main(["--etcd", str(tmp_path / "no-etcd-here"), "--out", str(tmp_path / "o")])
    assert code == 3
    err = capsys.readouterr().err
    assert "apt-get install -y etcd-server" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(shutil.which("etcd") is None,
                    reason="etcd is not installed: apt-get install -y etcd-server")
def test_a_short_run_measures_both_systems(tmp_path) -> None:
    vs = _load()
    out = tmp_path / "out"
    code = vs.main(["--duration", "1", "--warmup", "0.3", "--records", "200",
                    "--concurrency", "16", "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.png").stat().st_size > 10_000
    phases = results["phases"]
    assert set(phases) == {"etcd put", "kvstore put QUORUM", "kvstore get QUORUM", "etcd get",
                           "kvstore put ONE", "kvstore get ONE",
                           "kvstore null ceiling", "kvstore meta put",
                           "etcd put (again, beside meta)"}
    for name, phase in phases.items():
        assert phase["ops"] > 0, name
        assert phase["issued"] == phase["ops"] + phase["errors_total"], name
        # a starved machine may blow a deadline; nothing else is tolerated
        assert set(phase["errors"]) <= {"Timeout", "AioRpcError"}, (name, phase["error_examples"])
        cpu = phase["cpu"]
        assert cpu["nodes_missing"] == [] and len(cpu["per_node_cpu_s"]) == 3, name
        assert cpu["node_cpu_us_per_op"] > 0 and cpu["client_cpu_us_per_op"] > 0, name
        print(f"\n  {vs.line(name, phase)}", end="")
    assert all(v is not None and v > 0 for v in results["ratios"].values()), results["ratios"]
    assert results["versions"]["etcd"].startswith("3.")
