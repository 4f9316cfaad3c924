"""`kv node start` refuses unsafe settings and damaged state with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import free_ports

pytestmark = pytest.mark.integration


def node_start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    port = free_ports(1)[0]
    return subprocess.run(
        [sys.executable, "-m", "kvstore", "node", "start", "--id", "n1",
         "--listen", f"127.0.0.1:{port}", *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})))


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


@pytest.mark.parametrize("args, env, expected", [
    (["--tombstone-grace", "100"], {}, "twice the clock skew"),
    ([], {"KV_TOMBSTONE_GRACE": "100"}, "twice the clock skew"),
    (["--tombstone-grace", "200"], {}, "hints must expire"),  # default --hint-max-age 3 h
    (["--tombstone-grace", "200", "--hint-max-age", "140"], {}, "hints must expire"),
])
def test_unsafe_tombstone_settings_are_refused_at_start(args, env, expected):
    r = node_start(*args, env=env)
    assert r.returncode == 2, r
    line = one_error_line(r)
    assert "--tombstone-grace" in line and expected in line
    if expected == "hints must expire":
        assert "--hint-max-age" in line


@pytest.mark.parametrize("name, content, expected", [
    ("members.json", '{"generation": 17, "members": {', "membership file {path} is damaged"),
    ("epochs.json", '{"reserved": "x"}', "the epoch file {path} is unreadable"),
])
def test_a_damaged_state_file_is_refused_at_start(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    r = node_start("--data-dir", str(tmp_path))
    assert r.returncode == 1, r
    errors = [x for x in r.stderr.splitlines()  # not a log line (text or JSON)
              if not x[:4].isdigit() and not x.startswith('{"ts": ')]
    assert len(errors) == 1 and errors[0].startswith("Error: "), r.stderr
    assert expected.format(path=path) in errors[0] and "Traceback" not in r.stderr
    assert path.read_text() == content  # left as found
