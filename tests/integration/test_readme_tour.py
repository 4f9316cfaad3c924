"""The README's tour, run as written against a local cluster, so the README cannot drift.

The commands are read from the README itself (the first ```sh block under "## A short
tour"), so a line added there later is run too. Each line runs in bash (pipes and
redirections as a user types them) from a fresh directory holding a cluster started the
way `make run` starts it (`kv cluster up`, data in ./data, so `kv` finds the endpoints in
data/cluster.json), and must exit 0, or N where its comment says "(exit N". The only
rewriting is of port numbers, so the test runs beside anything already listening on
7001-7003 or 7101-7105: 127.0.0.1:700K becomes the cluster's own port K, and
`--base-port 7101` a free range.

The "one node by hand" block is checked the same way: its three commands are started
(as written, ports and data directory moved likewise) and must form a cluster that
serves `kv put`/`get` and `kv meta put`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXIT = re.compile(r"\(exit (\d+)")


def sh_blocks(section: str) -> list[str]:
    """The ```sh blocks of a README section (up to the next ## heading)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start:end if end != -1 else None]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


def commands(block: str) -> list[tuple[str, int]]:
    """(command, expected exit code) per command line; continuation lines are joined and
    the trailing comment (two spaces, then #) is dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        command, _, comment = line.partition("  #")
        match = EXIT.search(comment)
        out.append((command.strip(), int(match.group(1)) if match else 0))
    return out


def free_range(count: int) -> int:
    """A base port with `count` consecutive ports free on 127.0.0.1."""
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        if base + count >= 65000:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def rewrite(command: str, base: int, second_base: int) -> str:
    command = re.sub(r"127\.0\.0\.1:700(\d)", lambda m: f"127.0.0.1:{base + int(m[1]) - 1}",
                     command)
    return command.replace("--base-port 7101", f"--base-port {second_base}")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def run(command: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def test_the_tour_parses() -> None:
    tour = commands(sh_blocks("## A short tour")[0])
    assert len(tour) >= 20, tour
    assert all(c.startswith(("kv ", "printf ", "timeout ")) for c, _ in tour), tour
    assert ("kv get user:1 --json", 3) in tour
    by_hand = commands(sh_blocks("## A short tour")[1])
    assert [c.split()[:4] for c, _ in by_hand] == [
        ["kv", "node", "start", "--id"]] * 3


def test_every_tour_command_works_as_written(tmp_path: Path) -> None:
    base, second = free_range(3), free_range(5)
    tour = commands(sh_blocks("## A short tour")[0])
    up = run(f"kv cluster up --detach --base-port {base}", tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    took: list[str] = []
    try:
        for command, expected in tour:
            command = rewrite(command, base, second)
            start = time.monotonic()
            proc = run(command, tmp_path)
            took.append(f"{time.monotonic() - start:5.2f}s  {command}")
            assert proc.returncode == expected, (
                f"README tour: `{command}` exited {proc.returncode}, expected {expected}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
            assert "Traceback" not in proc.stderr, proc.stderr
        assert (tmp_path / "blob.bin").read_bytes() == b"bin\x00\xff"
    finally:
        for data in ("data5", "data"):
            if (tmp_path / data / "cluster.json").exists():
                run(f"kv cluster down --data-dir {data}", tmp_path)
        print("\n" + "\n".join(took))
    assert not (tmp_path / "data" / "cluster.json").exists()


def test_one_node_by_hand_as_written(tmp_path: Path) -> None:
    base = free_range(3)
    by_hand = commands(sh_blocks("## A short tour")[1])
    procs = []
    try:
        for command, _ in by_hand:
            argv = shlex.split(rewrite(command, base, 0))
            argv[0] = str(BIN / "kv")
            node_id = argv[argv.index("--id") + 1]
            log = open(tmp_path / f"{node_id}.log", "wb")  # noqa: SIM115 - the child owns it
            procs.append(subprocess.Popen(argv, cwd=tmp_path, env=env(), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        deadline = time.monotonic() + 60
        while True:
            put = run(f"kv --endpoints {endpoints} meta put hand/k v", tmp_path, timeout=30)
            if put.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        logs = "".join((tmp_path / f"n{i}.log").read_text(errors="replace")[-500:]
                       for i in (1, 2, 3))
        assert put.returncode == 0, put.stderr + logs
        assert run(f"kv --endpoints {endpoints} put k v", tmp_path).returncode == 0
        got = run(f"kv --endpoints {endpoints} get k --consistency ALL", tmp_path)
        assert got.stdout.strip() == "v", got.stderr
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
