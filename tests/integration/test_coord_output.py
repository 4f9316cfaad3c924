"""The coordination and raft admin commands' output (issue 11 leftovers): people get the
CLI's one table style, `--json` keeps one machine-readable object - also for a failure -
and every command of `kv meta|lease|lock|elect|raft|saga` has `--json` and `--help`."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from conftest import start_cluster

from kvstore.cli.main import cli

pytestmark = pytest.mark.integration
GROUPS = ("meta", "lease", "lock", "elect", "raft", "saga")


def _leaves(cmd: click.Command, path: list[str]):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _leaves(sub, [*path, name])
    else:
        yield path, cmd


def test_every_coordination_command_has_json_and_help() -> None:
    runner = CliRunner()
    for group in GROUPS:
        for path, cmd in _leaves(cli.commands[group], [group]):
            opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
            assert "--json" in opts, f"kv {' '.join(path)} has no --json"
            r = runner.invoke(cli, [*path, "--help"])
            assert r.exit_code == 0 and (cmd.help or "").split()[0] in r.output, path


@pytest.fixture(scope="module")
def eps(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("coordout"),
                            extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
    try:
        yield ",".join(cluster.endpoints())
    finally:
        cluster.stop()


def kv(eps: str, *args: str):
    return CliRunner().invoke(cli, ["--endpoints", eps, *args], catch_exceptions=False)


def test_tables_by_default_json_on_request(eps) -> None:
    r = kv(eps, "raft", "status")
    assert r.exit_code == 0 and "┃ member" in r.output and "leader" in r.output, r.output
    status = json.loads(kv(eps, "raft", "status", "--json").output)
    assert status["leader"] and len(status["members"]) == 3
    assert kv(eps, "meta", "put", "tbl/a", "1").exit_code == 0
    r = kv(eps, "meta", "get", "tbl/", "--prefix")
    assert r.exit_code == 0 and "┃ key" in r.output and "tbl/a" in r.output, r.output
    lease = json.loads(kv(eps, "lease", "grant", "30", "--json").output)["id"]
    r = kv(eps, "lease", "list")
    assert r.exit_code == 0 and "┃ id" in r.output and str(lease) in r.output, r.output
    r = kv(eps, "saga", "list")
    assert r.exit_code == 0 and "┃ id" in r.output


def test_a_raft_command_that_reaches_no_node_fails_in_json_too() -> None:
    r = kv("127.0.0.1:1", "raft", "status", "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and out["ok"] is False and "no node answered" in out["error"]
