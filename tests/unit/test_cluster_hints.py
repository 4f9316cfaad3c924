"""Every "stop it with" / "start it again with" hint of `kv cluster` and `kv chaos` names
the exact command, with --data-dir when it is not the default, quoted for the shell
(issue 17)."""

from __future__ import annotations

import shlex
from pathlib import Path

from click.testing import CliRunner

from kvstore.cli.chaos_cmds import _restart_hint
from kvstore.cli.cluster_cmds import _down_command
from kvstore.cli.main import cli


def test_hints_name_the_data_dir_exactly() -> None:
    assert _down_command(Path("data")) == "kv cluster down"
    assert _down_command(Path("./data")) == "kv cluster down"  # the same directory
    assert _down_command(Path("data5")) == "kv cluster down --data-dir data5"
    spaced = _down_command(Path("my clusters/a"))
    assert shlex.split(spaced)[-2:] == ["--data-dir", "my clusters/a"], spaced
    assert _restart_hint("n2", Path("data")) == "kv cluster start n2"
    assert shlex.split(_restart_hint("n2", Path("my data")))[-2:] == ["--data-dir", "my data"]


def test_commands_without_a_cluster_name_the_data_dir(tmp_path: Path) -> None:
    where = str(tmp_path / "no cluster")
    for args in (["cluster", "status"], ["cluster", "down"], ["cluster", "stop", "n1"]):
        r = CliRunner().invoke(cli, [*args, "--data-dir", where])
        assert r.exit_code == 1 and ("no cluster" in r.output
                                     or "no running cluster" in r.output), (args, r.output)
    r = CliRunner().invoke(cli, ["cluster", "status", "--data-dir", where])
    assert f"kv cluster up --data-dir {shlex.quote(where)}" in r.output, r.output
