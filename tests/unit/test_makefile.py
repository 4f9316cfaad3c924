"""`make run` (issue 17): installs the package only when pyproject.toml changed since the
last install (a stamp in the venv), not on every run, and with the setuptools
editable-install warning silenced. Checked with `make -n` on a scratch directory, so
nothing is installed or started."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def dry_run(cwd: Path, target: str = "run") -> list[str]:
    out = subprocess.run(["make", "-n", "-f", str(ROOT / "Makefile"), "-C", str(cwd), target],
                         capture_output=True, text=True, timeout=30, check=True)
    return [line for line in out.stdout.splitlines() if not line.startswith("make")]


def test_make_run_installs_once_per_change_of_pyproject(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / "pyproject.toml").touch()
    os.utime(tmp_path / "pyproject.toml", (1_000_000, 1_000_000))
    first = dry_run(tmp_path)  # no stamp yet: install, quietly, then start
    assert any("pip install" in line and line.startswith("PYTHONWARNINGS=ignore ")
               and "--quiet" in line for line in first), first
    assert first[-1] == ".venv/bin/kv cluster up --nodes 3", first
    stamp = tmp_path / ".venv" / ".installed-run"
    stamp.touch()
    os.utime(stamp, (2_000_000, 2_000_000))  # installed: newer than pyproject.toml
    assert dry_run(tmp_path) == [".venv/bin/kv cluster up --nodes 3"]
    # pyproject.toml changed since: install again. Explicit times, not "now": a touch and a
    # utime in the same clock tick get equal mtimes, and make then sees nothing to do (one
    # CI run failed so)
    os.utime(tmp_path / "pyproject.toml", (3_000_000, 3_000_000))
    assert any("pip install" in line for line in dry_run(tmp_path))
    # `make test`'s install also counts for `make run`
    (tmp_path / ".venv" / ".installed-run").unlink()
    test_install = dry_run(tmp_path, ".venv/.installed-test")
    assert any("touch .venv/.installed-test .venv/.installed-run" in line
               for line in test_install), test_install
