"""The storage benchmark runs (briefly) and prints its table; no speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_storage_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "storage_bench.py"), "--duration", "0.05",
         "--concurrency", "1,8", "--modes", "normal,memory", "--dir", str(tmp_path),
         "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    print(proc.stdout)
    assert "updates/s" in proc.stdout
    rows = json.loads(out.read_text())
    assert [(r["engine"], r["concurrency"]) for r in rows] == [
        ("normal", 1), ("normal", 8), ("memory", 1), ("memory", 8)
    ]
    assert all(r["updates"] > 0 and r["avg_batch"] >= 1 and r["gets_per_s"] > 0 for r in rows)
