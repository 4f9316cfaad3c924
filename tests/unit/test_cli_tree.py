"""Issue 17's CLI conventions, checked on the whole `kv` command tree (so a command added
later is held to them too): every command has --help and --json, every option that reads
an environment variable names it in --help, consistency levels are shown upper case, and
no code reads a KV_ variable behind the options' back."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from kvstore.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
# Leaf commands without --json, and why: each prints no result a script would parse.
NO_JSON = {
    ("node", "start"): "a server: what it prints is its log, JSON lines by default "
                       "(--log-format json)",
}


def leaves(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, cmd


def all_commands(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from all_commands(sub, (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    r = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert r.exit_code == 0, (path, r.output)
    return r.output


def test_the_tree_is_walked() -> None:
    found = {path for path, _ in leaves(cli)}
    assert len(found) >= 55, sorted(found)
    assert {("get",), ("meta", "put"), ("cluster", "up"), ("chaos", "kill")} <= found


def test_every_command_has_help_and_json() -> None:
    missing = []
    for path, cmd in leaves(cli):
        text = help_text(path)
        assert cmd.help and cmd.help.split()[0] in text, f"kv {' '.join(path)}: no help text"
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if "--json" not in opts and path not in NO_JSON:
            missing.append("kv " + " ".join(path))
        if path in NO_JSON:
            assert "--json" not in opts, f"{path} has --json now: drop it from NO_JSON"
    assert not missing, f"commands without --json: {missing}"


def test_every_environment_variable_is_shown_in_help() -> None:
    checked = 0
    for path, cmd in all_commands(cli):
        names = [n for p in cmd.params if isinstance(p, click.Option) and p.envvar
                 for n in ([p.envvar] if isinstance(p.envvar, str) else p.envvar)]
        if not names:
            continue
        text = help_text(path)
        for name in names:
            assert name in text, f"kv {' '.join(path)} --help does not mention {name}"
            checked += 1
    assert checked > 30  # the root's KV_ENDPOINTS and KV_TLS.., node start's KV_*


def test_no_code_reads_a_kv_variable_outside_the_options() -> None:
    """A KV_ variable read with os.environ/getenv would be invisible in --help."""
    read = re.compile(r"(environ\.get\(|getenv\(|environ\[)\s*[\"']KV_")
    offenders = [f"{p.relative_to(ROOT)}:{n}"
                 for p in (ROOT / "kvstore").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if read.search(line)]
    assert not offenders, offenders


def test_consistency_levels_are_shown_upper_case() -> None:
    levels = {"one", "two", "three", "quorum", "all", "any"}
    seen = 0
    for path, cmd in leaves(cli):
        for p in cmd.params:
            if isinstance(p.type, click.Choice) and {c.lower() for c in p.type.choices} \
                    & {"quorum", "info"}:
                assert all(c == c.upper() for c in p.type.choices), (path, p.type.choices)
                seen += 1
        text = help_text(path)  # the choices as click renders them, [ONE|TWO|...]
        assert not re.search(r"\[(one|two|three|quorum|all|any|debug|info)\|", text), path
    assert seen >= 3
    # shown upper case, accepted in any case, and passed on upper case
    for typ in {p.type for _, cmd in leaves(cli) for p in cmd.params
                if isinstance(p.type, click.Choice) and "QUORUM" in p.type.choices}:
        assert typ.convert("quorum", None, None) == "QUORUM"
        assert {c.lower() for c in typ.choices} <= levels


def test_one_table_style() -> None:
    """Tables are made by output.table (rich's default box, left-aligned title), nowhere
    else in the CLI."""
    made_elsewhere = [f"{p.relative_to(ROOT)}:{n}"
                      for p in (ROOT / "kvstore" / "cli").glob("*.py") if p.name != "output.py"
                      for n, line in enumerate(p.read_text().splitlines(), 1)
                      if re.search(r"\bTable\(", line)]
    assert not made_elsewhere, made_elsewhere
