"""Fuzzing of every decoder that reads network or disk bytes (targets.py).

* Seeds and every saved crash (regressions/TARGET/*) are replayed in-process on every run.
* Each target is fuzzed briefly with atheris (coverage-guided libFuzzer) in a subprocess;
  the counts are printed at the end of the session. Longer: KV_SLOW=1 (KV_FUZZ_SECONDS
  per target, default 60).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_summary import FUZZ_COUNTS

from fuzz import targets

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
RUN_SLOW = os.environ.get("KV_SLOW") == "1" or "--run-slow" in sys.argv


def _inputs(name: str) -> list[tuple[str, bytes]]:
    out = [(f"seed-{i}", s) for i, s in enumerate(targets.SEEDS[name])]
    folder = REGRESSIONS / name
    if folder.is_dir():
        out += [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]
    return out


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_and_regressions(name):
    assert targets.SEEDS[name], f"{name} has no seed inputs"
    for label, data in _inputs(name):
        try:
            targets.TARGETS[name](data)
        except Exception as exc:  # a regression came back
            raise AssertionError(f"{name} on {label}: {type(exc).__name__}: {exc}") from exc


def test_every_regression_folder_names_a_target():
    if REGRESSIONS.is_dir():
        assert {p.name for p in REGRESSIONS.iterdir()} <= set(targets.TARGETS)


def fuzz(name: str, seconds: float, tmp_path) -> dict[str, int]:
    started = time.monotonic()
    counts_file = tmp_path / "counts.json"
    res = subprocess.run([sys.executable, str(HERE / "run.py"), name, "--seconds",
                          str(seconds), "--corpus", str(tmp_path / "corpus"), "--counts",
                          str(counts_file)],
                         capture_output=True, text=True, timeout=seconds + 120, cwd=tmp_path)
    crash = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    assert res.returncode == 0 and not crash, (
        f"fuzzing {name} crashed; save the input (without its first byte for `all`: it "
        f"picks the target) under tests/fuzz/regressions/TARGET/ and fix the decoder "
        f"({[str(c) for c in crash]}):\n{res.stderr[-4000:]}")
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", res.stderr)
    assert m, res.stderr[-2000:]
    counts = json.loads(counts_file.read_text())
    seconds_taken = time.monotonic() - started
    for target, runs in counts.items():
        FUZZ_COUNTS[target] = (runs, seconds_taken if name != "all" else 0.0)
    return counts


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (pip install atheris; "
                                               "Linux, CPython <= 3.12)")
def test_fuzz_brief(tmp_path):
    """Every target, one process, a few seconds (KV_FUZZ_BRIEF_SECONDS, default 10)."""
    counts = fuzz("all", float(os.environ.get("KV_FUZZ_BRIEF_SECONDS", "10")), tmp_path)
    assert set(counts) == set(targets.TARGETS)
    starved = [t for t, runs in counts.items() if runs < 20]
    assert not starved, f"targets that got almost no inputs: {starved} ({counts})"


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="slow: set KV_SLOW=1 or pass --run-slow")
@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed")
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_long(name, tmp_path):
    """Each target on its own for KV_FUZZ_SECONDS (default 60)."""
    fuzz(name, float(os.environ.get("KV_FUZZ_SECONDS", "60")), tmp_path)
