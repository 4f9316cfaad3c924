"""Issue 17, the newcomer's path, with real processes: binary values and keys, failover of
the admin commands, error wording, and the local cluster's lifecycle (stop/kill/start one
node, Ctrl-C during start-up, `kv cluster down` ending a foreground `up`, a stale
cluster.json)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.node.local_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def kv(*args: str, endpoints: str | None = None, cwd: Path | None = None,
       stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KV_ENDPOINTS"}
    if endpoints:
        env["KV_ENDPOINTS"] = endpoints
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          env=env, timeout=timeout, input=stdin, cwd=cwd)


def text(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def free_base(count: int = 3) -> int:
    """A base port with `count` consecutive ports free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
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


def dead_endpoint() -> str:
    return f"127.0.0.1:{free_base(1)}"  # free a moment ago: nothing listens there


# -- binary values and keys ------------------------------------------------------------

def test_binary_value_round_trips_byte_for_byte(shared_cluster, tmp_path: Path) -> None:
    eps = ",".join(shared_cluster.endpoints())
    data = bytes(range(256)) * 40 + b"\n\xff\x00"  # every byte value, a trailing newline
    assert kv("put", "bin:k", "-", endpoints=eps, stdin=data).returncode == 0
    raw = kv("get", "bin:k", "--raw", endpoints=eps)
    assert raw.returncode == 0 and raw.stdout == data  # no added newline, no decoding
    out = tmp_path / "v.bin"
    assert kv("get", "bin:k", "-o", str(out), endpoints=eps).returncode == 0
    assert out.read_bytes() == data
    both = kv("get", "bin:k", "--raw", "--json", endpoints=eps)
    assert both.returncode == 2, text(both)


def test_raw_refuses_siblings_and_not_found_exits_3(shared_cluster) -> None:
    eps = ",".join(shared_cluster.endpoints())
    for value in (b"a", b"b"):
        assert kv("put", "bin:sib", value.decode(), "--blind", "-c", "ALL",
                  endpoints=eps).returncode == 0
    r = kv("get", "bin:sib", "--raw", "-c", "ALL", endpoints=eps)
    assert r.returncode == 1 and b"2 siblings" in r.stderr and r.stdout == b"", text(r)
    assert kv("get", "bin:absent", "--raw", endpoints=eps).returncode == 3


def test_binary_keys_via_key_hex_and_a_clear_error_without(shared_cluster) -> None:
    eps = ",".join(shared_cluster.endpoints())
    assert kv("put", "00ff10", "v", "--key-hex", endpoints=eps).returncode == 0
    got = kv("get", "00ff10", "--key-hex", "--json", endpoints=eps)
    assert json.loads(got.stdout)["siblings"][0]["value"] == "v"
    env = {**os.environ, "KV_ENDPOINTS": eps}
    bad = subprocess.run([sys.executable.encode(), b"-m", b"kvstore", b"get", b"k\xff"],
                         capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and b"--key-hex" in bad.stderr and b"6bff" in bad.stderr
    assert b"Traceback" not in bad.stderr
    r = kv("get", "zz", "--key-hex", endpoints=eps)
    assert r.returncode == 2 and b"not hex" in r.stderr
    assert kv("delete", "00ff10", "--key-hex", endpoints=eps).returncode == 0


# -- endpoints, failover, error wording ---------------------------------------------------

def test_admin_commands_fail_over_past_a_dead_endpoint(shared_cluster) -> None:
    live = shared_cluster.endpoints()
    eps = ",".join([dead_endpoint(), *live])
    for args in (["status", "--json"], ["info", "--json"], ["node", "health"],
                 ["get", "nothing:here"]):
        r = kv(*args, endpoints=eps)
        assert r.returncode in (0, 3), (args, text(r))
    health = kv("node", "health", "--json", endpoints=eps)
    reply = json.loads(health.stdout)
    assert reply["status"] == "SERVING" and reply["node"] == live[0] and reply["unreachable"]
    # repair only asks the endpoints given; the others take part as peers
    r = kv("repair", "--json", endpoints=",".join([dead_endpoint(), live[0]]))
    result = json.loads(r.stdout)
    assert [n["node"] for n in result["nodes"]] == ["n1"], result
    assert sorted(result["peers_only"]) == ["n2", "n3"]
    assert r.returncode == 1 and len(result["errors"]) == 1  # the dead endpoint, reported
    r = kv("repair", "--json", endpoints=",".join(live))
    assert r.returncode == 0 and json.loads(r.stdout)["peers_only"] == [], text(r)
    r = kv("node", "health", "--node", live[1], endpoints=dead_endpoint())
    assert r.returncode == 0 and live[1].encode() in r.stdout


def test_endpoint_errors_say_what_is_wrong() -> None:
    r = kv("get", "k", endpoints="http://127.0.0.1:7001")
    assert r.returncode == 2 and b"invalid endpoint" in r.stderr and b"scheme" in r.stderr
    r = kv("status", endpoints="http://127.0.0.1:7001")
    assert r.returncode == 2 and b"invalid endpoint" in r.stderr
    r = kv("meta", "put", "a", "b", endpoints="localhost")
    assert r.returncode == 2 and b"invalid endpoint" in r.stderr
    for args in (["get", "k"], ["put", "k", "v"], ["status"]):
        r = kv(*args, endpoints="no-such-host.invalid:7001")
        assert r.returncode == 1, text(r)
        assert b"cannot resolve" in r.stderr and b"may have been applied" not in r.stderr, \
            text(r)
    # a get never says a request may have been applied: a dead endpoint is "unreachable"
    r = kv("get", "k", endpoints=dead_endpoint())
    assert r.returncode == 1 and b"may have been applied" not in r.stderr


def test_a_failed_context_read_says_what_helps(tmp_path: Path) -> None:
    # N=1 on two nodes: with n2 down, n1 can read no context for the keys n2 holds
    base = free_base(2)
    c = LocalCluster(tmp_path / "data", nodes=2, base_port=base, replication_factor=1)
    c.start()
    try:
        c.wait_healthy(timeout=30)
        c.kill("n2")
        eps = c.endpoints()[0]
        failed = [r for r in (kv("put", f"ctx:{i}", "v", endpoints=eps) for i in range(12))
                  if r.returncode != 0]
        assert failed, "no key of n2 among 12 (ownership ~50% each)"
        for r in failed:
            assert r.returncode == 1 and b"could not read the current context" in r.stderr
            assert b"nothing was written" in r.stderr and b"--blind" in r.stderr, text(r)
            assert b"kv status" in r.stderr and b"Traceback" not in r.stderr
    finally:
        c.stop()


# -- the local cluster's lifecycle -------------------------------------------------------

def up_detached(cwd: Path, base: int, data: str = "data") -> None:
    r = kv("cluster", "up", "--detach", "--data-dir", data, "--base-port", str(base),
           "--json", cwd=cwd)
    assert r.returncode == 0, text(r)
    assert json.loads(r.stdout)["stop"] == ("kv cluster down" if data == "data"
                                            else f"kv cluster down --data-dir {data}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.split(") ")[-1].startswith("Z")


def recorded_pids(path: Path) -> list[int]:
    return [n["pid"] for n in json.loads(path.read_text())["nodes"]]


def test_stop_kill_and_start_one_node(tmp_path: Path) -> None:
    base = free_base()
    up_detached(tmp_path, base, "d")
    file = tmp_path / "d" / "cluster.json"
    try:
        eps = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        assert kv("put", "life:k", "v1", "-c", "ALL", endpoints=eps).returncode == 0
        before = recorded_pids(file)
        r = kv("cluster", "kill", "n2", "--data-dir", "d", cwd=tmp_path)
        assert r.returncode == 0 and b"kv cluster start n2 --data-dir d" in r.stdout, text(r)
        assert not alive(before[1])
        status = kv("cluster", "status", "--data-dir", "d", "--json", cwd=tmp_path)
        assert status.returncode == 1
        assert [n["up"] for n in json.loads(status.stdout)["nodes"]] == [True, False, True]
        assert kv("put", "life:k", "v2", "-c", "QUORUM", endpoints=eps).returncode == 0
        r = kv("cluster", "start", "n2", "--data-dir", "d", "--json", cwd=tmp_path)
        assert r.returncode == 0, text(r)
        new_pid = json.loads(r.stdout)["pid"]
        assert new_pid != before[1] and recorded_pids(file)[1] == new_pid
        again = kv("cluster", "start", "n2", "--data-dir", "d", cwd=tmp_path)
        assert again.returncode == 1 and b"is running" in again.stderr
        deadline = time.monotonic() + 30
        while kv("cluster", "status", "--data-dir", "d", cwd=tmp_path).returncode != 0:
            assert time.monotonic() < deadline, "n2 did not come back"
            time.sleep(0.3)
        # n2 alone answers (ONE through it) with data it had before the kill
        got = kv("get", "life:k", "-c", "ALL", endpoints=f"127.0.0.1:{base + 1}")
        assert got.returncode == 0 and got.stdout.strip() == b"v2", text(got)
        r = kv("cluster", "stop", "n3", "--data-dir", "d", cwd=tmp_path)
        assert r.returncode == 0 and not alive(before[2])
        assert kv("cluster", "stop", "n3", "--data-dir", "d", cwd=tmp_path).stdout \
            .startswith(b"n3 was not running")
        assert kv("cluster", "stop", "n9", "--data-dir", "d", cwd=tmp_path).returncode == 1
    finally:
        kv("cluster", "down", "--data-dir", "d", cwd=tmp_path)
    assert not file.exists()
    assert not any(alive(p) for p in [*before, new_pid])
    assert started_under(tmp_path) == []


def _spawn_up(cwd: Path, base: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kvstore", "cluster", "up", "--base-port",
                             str(base)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def started_under(directory: Path) -> list[int]:
    """Live processes (not zombies) run from `directory` or naming it on their command
    line: every node a `kv cluster up` run there started, whatever cluster.json says."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours
        inside = cwd == str(directory) or cwd.startswith(f"{directory}/")
        if (inside or str(directory).encode() in cmdline) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("moment", ["spawning", "spinner"])
def test_ctrl_c_during_start_up_stops_everything_it_started(tmp_path: Path,
                                                           moment: str) -> None:
    """SIGINT while the node processes are being spawned (a node forked but not yet
    recorded was once left running), or during the "healthy: k/3" spinner: no process the
    command started survives, found by pid and by working directory in /proc."""
    file = tmp_path / "data" / "cluster.json"
    proc = _spawn_up(tmp_path, free_base())
    try:
        deadline = time.monotonic() + 30
        while not file.exists():  # n1 is spawned; n2 and n3 are being spawned
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
        if moment == "spinner":
            while not all(recorded_pids(file)):  # all three spawned, none healthy yet
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode in (0, 130), out  # 130: interrupted before all were healthy
        assert not file.exists(), out
        assert started_under(tmp_path) == [], out
    finally:
        for pid in started_under(tmp_path):  # a failure must not leak into later tests
            os.kill(pid, signal.SIGKILL)


def test_cluster_down_from_another_terminal_ends_a_foreground_up(tmp_path: Path) -> None:
    file = tmp_path / "data" / "cluster.json"
    proc = _spawn_up(tmp_path, free_base())
    try:
        deadline = time.monotonic() + 60
        while kv("cluster", "status", cwd=tmp_path).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
        pids = recorded_pids(file)
        assert json.loads(file.read_text())["supervisor"] == proc.pid
        # a node restarted by `kv cluster start` is stopped with the rest
        assert kv("cluster", "kill", "n3", cwd=tmp_path).returncode == 0
        assert kv("cluster", "start", "n3", cwd=tmp_path).returncode == 0
        restarted = recorded_pids(file)[2]
        down = kv("cluster", "down", cwd=tmp_path)
        assert down.returncode == 0, text(down)
        proc.wait(timeout=30)
        assert not file.exists()
        assert not [p for p in [*pids, restarted] if alive(p)]
        assert started_under(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def test_a_stale_cluster_json_is_removed_by_the_next_up(tmp_path: Path) -> None:
    base = free_base()
    (tmp_path / "data").mkdir()
    stale = {"nodes": [{"id": "n1", "address": f"127.0.0.1:{base}", "pid": 2 ** 22 + 7,
                        "data_dir": "data/n1", "log": "data/n1/node.log"}],
             "supervisor": None}
    (tmp_path / "data" / "cluster.json").write_text(json.dumps(stale))
    try:
        r = kv("cluster", "up", "--detach", "--base-port", str(base), "--raft-voters", "",
               cwd=tmp_path)
        assert r.returncode == 0 and b"stale" in r.stdout, text(r)
        # a live cluster is not stale: a second up refuses and names the stop command
        again = kv("cluster", "up", "--detach", "--base-port", str(free_base()), cwd=tmp_path)
        assert again.returncode == 1 and b"kv cluster down" in again.stderr, text(again)
    finally:
        kv("cluster", "down", cwd=tmp_path)
