"""scripts/docker_cluster.sh (make docker-up / docker-down) without docker: its usage, and
the compose command line it forms (front-end, project name, file). The real runs are the
e2e tests, which bring the cluster up through `make docker-up`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "docker_cluster.sh"


def run(*args: str, cwd_copy: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    script = SCRIPT
    if cwd_copy is not None:  # a checkout under another directory name
        (cwd_copy / "scripts").mkdir(parents=True, exist_ok=True)
        script = cwd_copy / "scripts" / "docker_cluster.sh"
        shutil.copy(SCRIPT, script)
    full_env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROJECT_NAME"}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env={**full_env, **env}, timeout=30)


def test_usage_and_bad_arguments() -> None:
    help_ = run("--help", KV_COMPOSE="echo")
    assert help_.returncode == 0 and "make docker-up" in help_.stdout
    assert run("frobnicate", KV_COMPOSE="echo").returncode == 2
    bad = run("down", "--everything", KV_COMPOSE="echo")
    assert bad.returncode == 2 and "only -v" in bad.stderr


def test_compose_command_line_and_default_project_name(tmp_path: Path) -> None:
    checkout = tmp_path / "My-Kv_Store.2"
    out = run("compose", "ps", "-q", cwd_copy=checkout, KV_COMPOSE="echo")
    # compose's default: the directory name, lower case; letters, digits, '-' and '_'
    # (docker-compose >= 1.21 and v2 keep '-' and '_'; tests/unit/test_chaos_compose.py
    # compares with v1's own function where it is installed)
    assert out.stdout.split() == ["-p", "my-kv_store2", "-f", "docker-compose.yml", "ps", "-q"]
    named = run("compose", "ps", KV_COMPOSE="echo", COMPOSE_PROJECT_NAME="kv-e2e-1")
    assert named.stdout.split()[:2] == ["-p", "kv-e2e-1"]


@pytest.mark.parametrize("flag, expected", [([], []), (["-v"], ["-v"])])
def test_down_removes_every_profile_and_orphans(flag: list[str], expected: list[str]) -> None:
    out = run("down", *flag, KV_COMPOSE="echo", COMPOSE_PROJECT_NAME="p")
    assert out.returncode == 0
    assert out.stdout.split() == ["-p", "p", "-f", "docker-compose.yml", "--profile", "five",
                                  "down", "--remove-orphans", "-t", "15", *expected]
