"""`kv chaos kill|pause|resume --compose` picks the compose front-end as make docker-up
does (issue 14: it ran `docker compose` only, which machines with the standalone v1
`docker-compose` lack) and names the project make docker-up created. Without docker:
stand-in `docker`/`docker-compose` executables on PATH answer `version` as told and
record the command line; the real runs are the e2e tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kvstore.cli.chaos_cmds import compose_front_end, compose_project
from kvstore.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def front_ends(tmp_path: Path, monkeypatch, *, v2: bool, v1: bool | None) -> Path:
    """`docker` whose `compose version` exits 0 iff v2; `docker-compose` (absent when v1
    is None) whose `version` exits 0 iff v1. Both append their argv to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    tools = {"docker": ('[ "$1 $2" = "compose version" ] && exit', v2)}
    if v1 is not None:
        tools["docker-compose"] = ('[ "$1" = version ] && exit', v1)
    for name, (probe, answers) in tools.items():
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n'
                       f'{probe} {0 if answers else 1}\nexit 0\n')
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("KV_COMPOSE", raising=False)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    return log


def test_v2_plugin_first(tmp_path, monkeypatch) -> None:
    front_ends(tmp_path, monkeypatch, v2=True, v1=True)
    assert compose_front_end() == ["docker", "compose"]


def test_standalone_v1_when_the_plugin_does_not_answer(tmp_path, monkeypatch) -> None:
    front_ends(tmp_path, monkeypatch, v2=False, v1=True)
    assert compose_front_end() == ["docker-compose"]


def test_neither_answers_is_one_clear_error(tmp_path, monkeypatch) -> None:
    front_ends(tmp_path, monkeypatch, v2=False, v1=None)
    with pytest.raises(click.ClickException, match="neither `docker compose` nor"):
        compose_front_end()


def test_a_named_front_end_is_used_without_probing(tmp_path, monkeypatch) -> None:
    log = front_ends(tmp_path, monkeypatch, v2=True, v1=True)
    assert compose_front_end("docker-compose") == ["docker-compose"]
    assert not log.exists()


@pytest.mark.parametrize("directory", ["kvstore", "My-Kv_Store.2", "wt-newcomer"])
def test_the_project_is_the_one_make_docker_up_creates(tmp_path, monkeypatch,
                                                       directory: str) -> None:
    checkout = tmp_path / directory
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "docker_cluster.sh", checkout / "scripts")
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROJECT_NAME"}
    script = subprocess.run(["bash", str(checkout / "scripts" / "docker_cluster.sh"),
                             "compose", "ps"], capture_output=True, text=True, timeout=30,
                            env={**env, "KV_COMPOSE": "echo"}, check=True)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    ours = compose_project(checkout / "docker-compose.yml")
    assert script.stdout.split()[:2] == ["-p", ours]
    # ... and the one docker-compose v1 itself forms there (its Python package, where
    # installed: no engine needed), so plain docker-compose commands address it too
    v1 = subprocess.run(["/usr/bin/python3", "-c", "import sys; from compose.cli.command "
                         "import get_project_name; print(get_project_name(sys.argv[1]))",
                         str(checkout)], capture_output=True, text=True, timeout=30,
                        env={k: v for k, v in env.items() if k != "COMPOSE_PROJECT_NAME"})
    if v1.returncode == 0:
        assert v1.stdout.strip() == ours
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "kv-e2e-1")
    assert compose_project(checkout / "docker-compose.yml") == "kv-e2e-1"


@pytest.mark.parametrize("v2", [True, False])
def test_kill_pause_resume_run_the_chosen_front_end(tmp_path, monkeypatch, v2: bool) -> None:
    log = front_ends(tmp_path, monkeypatch, v2=v2, v1=True)
    project = tmp_path / "My-Kv"
    project.mkdir()
    (project / "docker-compose.yml").write_text("services: {}\n")
    file = str(project / "docker-compose.yml")
    runner = CliRunner()
    killed = runner.invoke(cli, ["chaos", "kill", "n2", "--compose", file, "--json"])
    assert killed.exit_code == 0, killed.output
    front = "docker compose" if v2 else "docker-compose"
    assert json.loads(killed.output)["start"] == f"{front} -p my-kv -f {file} start n2"
    assert runner.invoke(cli, ["chaos", "resume", "n2", "--compose", file]).exit_code == 0
    calls = [line for line in log.read_text().splitlines() if "version" not in line]
    assert calls == [f"{front} -p my-kv -f {file} kill n2",
                     f"{front} -p my-kv -f {file} unpause n2"]
    # KV_COMPOSE (or --compose-cli) names the front-end, as for make docker-up
    monkeypatch.setenv("KV_COMPOSE", "docker-compose")
    assert runner.invoke(cli, ["chaos", "kill", "n3", "--compose", file]).exit_code == 0
    assert log.read_text().splitlines()[-1] == f"docker-compose -p my-kv -f {file} kill n3"
