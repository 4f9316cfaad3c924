"""The compose cluster as a user meets it: the kv CLI from the host and from inside the
containers, a stopped node, and a node cut off the network.

Each test runs on both compose profiles (conftest's compose_cluster, ids [default] and
[secure]: on the secure cluster every kv command goes over TLS as an authenticated admin).
The default CI run (KV_E2E=1) runs all of them on both; KV_E2E_SECURE=subset runs only
those marked `secure_ci` on "secure". Both profiles' clusters are shared with
test_compose_coordination.py for the whole session.

Each test leaves every node running and connected (also when it fails; conftest checks
and restores that before each test), so one failure does not cascade. The five-node test
leaves n4 and n5 as members, the Raft membership test n4 a voter and a replaced voter: they
run last (`reshapes_cluster`), one after the other. Reads that must come from
one replica alone are done inside that node's container while it is cut off the network:
only its own data can answer.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import ComposeCluster, run, values

# The first test's setup builds the image: minutes when nothing is cached.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

# What `kv` documents for ALL when a replica is down in a 3-node cluster (no node outside
# the preference list to take a hint, and hints count only with --sloppy anyway): exit 1
# and this message. With a spare node a --sloppy request may succeed through a sloppy
# quorum, which the tests accept too.
UNAVAILABLE = re.compile(r"^Error: Unavailable: .*\b[RW]=3 needs 3 replicas, 2 answered", re.M)
CONVERGE_TIMEOUT = 60.0


def ok(proc) -> str:
    assert proc.returncode == 0, f"kv failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def all_or_documented_failure(proc) -> str:
    """ALL with one node down: success (sloppy quorum) or the documented Unavailable."""
    if proc.returncode == 0:
        return "succeeded (sloppy quorum)"
    assert proc.returncode == 1 and UNAVAILABLE.search(proc.stderr), (
        f"ALL with a node down neither succeeded nor failed as documented: "
        f"rc={proc.returncode} stderr={proc.stderr.strip()}")
    return proc.stderr.strip().splitlines()[-1]


def local_values(cluster: ComposeCluster, service: str, *keys: str) -> dict[str, list[str]]:
    """Each key as `service` alone holds it: read at ONE inside it while it is cut off.

    Afterwards it waits until the others reach the node again: it comes back with a new
    address, which peers only learn when their channels re-resolve its name.
    """
    cluster.disconnect(service)
    try:
        return {k: values(cluster.kv_in(service, "get", k, "--consistency", "ONE", "--json"))
                for k in keys}
    finally:
        cluster.connect(service)
        others = [s for s in ("n1", "n2", "n3") if s != service]
        took = wait_for(f"{service} reachable at ALL after reconnecting", lambda: values(
            cluster.kv("get", keys[0], "--consistency", "ALL", "--json", via=others)))
        print(f"\n{service} answering reads at ALL again {took:.1f}s after reconnecting")


def wait_for(what: str, check, timeout: float = CONVERGE_TIMEOUT) -> float:
    """Retry check() (which raises AssertionError until it holds); seconds it took."""
    start = time.monotonic()
    while True:
        try:
            check()
            return time.monotonic() - start
        except AssertionError as exc:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout:.0f}s: {exc}") from None
            time.sleep(1.0)


@pytest.mark.secure_ci
def test_put_get_each_consistency_from_the_host(compose_cluster: ComposeCluster) -> None:
    c = compose_cluster
    members = json.dumps(json.loads(ok(c.kv("status", "--json")))["members"])
    assert all(f'"{n}"' in members for n in ("n1", "n2", "n3")), members
    for level in ("ONE", "QUORUM", "ALL"):
        key, value = f"host:{level}", f"value-{level.lower()}"
        assert "OK" in ok(c.kv("put", key, value, "--consistency", level))
        assert values(c.kv("get", key, "--consistency", level, "--json")) == [value]
        # every node coordinates: ask each one alone at the same level
        for node in ("n1", "n2", "n3"):
            got = values(c.kv("get", key, "--consistency", level, "--json", via=[node]))
            assert got == [value], (node, level)


def test_put_get_from_inside_containers(compose_cluster: ComposeCluster) -> None:
    c = compose_cluster
    assert "OK" in ok(c.kv_in("n1", "put", "inside:k", "from-n1", "--consistency", "QUORUM",
                              via_compose=True))
    assert ok(c.kv_in("n2", "get", "inside:k", via_compose=True)).strip() == "from-n1"
    assert values(c.kv_in("n3", "get", "inside:k", "--consistency", "ALL", "--json")) \
        == ["from-n1"]
    # written from the host, read inside, and the other way round
    ok(c.kv("put", "both:k", "from-host", "--consistency", "ALL"))
    assert ok(c.kv_in("n1", "get", "both:k", "--consistency", "ONE")).strip() == "from-host"
    assert values(c.kv("get", "inside:k", "--consistency", "ONE", "--json")) == ["from-n1"]


@pytest.mark.secure_ci
def test_stopped_node_quorum_all_and_its_data_after_restart(
        compose_cluster: ComposeCluster) -> None:
    c = compose_cluster
    up = ("n1", "n3")
    ok(c.kv("put", "stop:before", "b", "--consistency", "ALL"))
    c.stop("n2")
    try:
        assert c.health(["n2"])["n2"].startswith("exited")
        assert "OK" in ok(c.kv("put", "stop:during", "d", "--consistency", "QUORUM", via=up))
        assert values(c.kv("get", "stop:before", "--consistency", "QUORUM", "--json",
                           via=up)) == ["b"]
        outcomes = {
            "put ALL": all_or_documented_failure(
                c.kv("put", "stop:all", "a", "--consistency", "ALL", via=up)),
            "put ALL --blind": all_or_documented_failure(
                c.kv("put", "stop:all", "a", "--consistency", "ALL", "--blind", via=up)),
            "get ALL": all_or_documented_failure(
                c.kv("get", "stop:before", "--consistency", "ALL", via=up)),
        }
        print("\nALL with n2 stopped:", outcomes)
    finally:
        healthy_after = c.start("n2")
    print(f"n2 healthy {healthy_after:.1f}s after `compose start`")
    # A read at ALL through n2 needs n2's own answer; read repair at ALL completes before
    # the answer, so n2 holds the write it missed afterwards (if handoff had not yet).
    assert values(c.kv("get", "stop:during", "--consistency", "ALL", "--json",
                       via=["n2"])) == ["d"]
    held = local_values(c, "n2", "stop:before", "stop:during")
    assert held == {"stop:before": ["b"], "stop:during": ["d"]}, held


def test_partitioned_node_converges_after_reconnect(compose_cluster: ComposeCluster) -> None:
    c = compose_cluster
    majority = ("n1", "n2")  # n3's published port is not used: reconnecting may not restore it
    ok(c.kv("put", "part:k", "v0", "--consistency", "ALL", via=majority))
    c.disconnect("n3")
    try:
        ok(c.kv("put", "part:k", "major", "--consistency", "QUORUM", via=majority))
        ok(c.kv("put", "part:one", "x", "--consistency", "ONE", via=majority))
        # the cut-off node still takes writes at ONE on its own side
        ok(c.kv_in("n3", "put", "part:minor", "m", "--consistency", "ONE"))
        ok(c.kv_in("n3", "put", "part:k", "minor", "--consistency", "ONE"))
        assert values(c.kv_in("n3", "get", "part:k", "--consistency", "ONE", "--json")) \
            == ["minor"]
    finally:
        c.connect("n3")
    # Both sides superseded v0 without seeing each other: after healing, a read at ALL
    # returns both as siblings (never one silently dropped), and the other keys everywhere.
    expected = {"part:k": ["major", "minor"], "part:one": ["x"], "part:minor": ["m"]}

    def converged() -> None:
        got = {k: values(c.kv("get", k, "--consistency", "ALL", "--json", via=majority))
               for k in expected}
        assert got == expected, got

    took = wait_for("read at ALL after reconnecting n3", converged)
    print(f"\nconverged at ALL {took:.1f}s after reconnecting n3")
    assert local_values(c, "n3", *expected) == expected
    # A write carrying the context of the siblings resolves them (the CLI reads it first).
    ok(c.kv("put", "part:k", "resolved", "--consistency", "ALL", via=majority))
    assert values(c.kv("get", "part:k", "--consistency", "ALL", "--json",
                       via=majority)) == ["resolved"]


def test_down_keeps_the_data_in_named_volumes(compose_cluster: ComposeCluster) -> None:
    """`compose down` (without -v) removes the containers; new ones find the data."""
    c = compose_cluster
    ok(c.kv("put", "volume:k", "kept", "--consistency", "ALL"))
    c.compose("down", "-t", "15", timeout=300)
    assert not c.compose("ps", "-q").stdout.strip()
    c.forget_containers()
    c.compose("up", "-d", "--no-build", timeout=300)
    took = c.wait_healthy()
    print(f"\nrecreated n1..n3 healthy {took:.1f}s after `up -d`")
    assert values(c.kv("get", "volume:k", "--consistency", "ALL", "--json")) == ["kept"]
    assert values(c.kv("get", "host:ALL", "--consistency", "ALL", "--json")) == ["value-all"]


@pytest.mark.reshapes_cluster  # n4, n5 stay members: last, then a new cluster
def test_five_node_profile_gossip_sloppy_quorum_and_handoff(
        compose_cluster: ComposeCluster) -> None:
    """`--profile five` adds n4 and n5, seeded with n1..n3 only; they join and serve. With
    n5 stopped, writes at ALL --sloppy succeed through fallbacks and reach n5 when it is
    back."""
    c = compose_cluster
    c.compose("--profile", "five", "up", "-d", "--no-build", "n4", "n5", timeout=300)
    took = c.wait_healthy(["n4", "n5"])
    print(f"\nn4, n5 healthy {took:.1f}s after `--profile five up -d`")

    def five_members() -> None:
        for node in ("n1", "n5"):
            members = json.dumps(json.loads(ok(c.kv("status", "--json", via=[node])))
                                 ["members"])
            assert all(f'"n{i}"' in members for i in range(1, 6)), (node, members)

    took = wait_for("5 members", five_members)
    print(f"all five in n1's and n5's member lists after {took:.1f}s")
    ok(c.kv("put", "five:k", "v5", "--consistency", "QUORUM", via=["n4"]))
    assert values(c.kv("get", "five:k", "--consistency", "QUORUM", "--json",
                       via=["n5"])) == ["v5"]
    # With five nodes a write at ALL has somewhere to go when an owner is down: a fallback
    # node takes it with a hint, which counts towards W when the write asks for --sloppy
    # (docs/architecture.md), and hinted handoff delivers it once the owner is back.
    c.stop("n5")
    owned_by_n5 = []
    try:
        for i in range(8):
            put = c.kv("put", f"sloppy:{i}", f"s{i}", "--consistency", "ALL", "--blind",
                       "--sloppy", "--trace", "--json", via=["n1", "n2", "n3"])
            trace = json.loads(ok(put))["trace"]
            if "n5" in trace["preference_list"]:
                owned_by_n5.append(f"sloppy:{i}")
                assert any(r["hint_for"] == "n5" and r["counted"] for r in trace["replicas"]), \
                    trace
    finally:
        took = c.start("n5")
    assert owned_by_n5, "no key landed on n5: the test proves nothing"
    print(f"{len(owned_by_n5)} of 8 writes at ALL had n5 (stopped) as an owner and succeeded;"
          f" n5 healthy {took:.1f}s after start")
    expected = {k: [f"s{k.split(':')[1]}"] for k in owned_by_n5}
    attempts = []

    def handed_off() -> None:
        attempts.append(1)
        held = local_values(c, "n5", *owned_by_n5)
        assert held == expected, held

    took = wait_for("hints delivered to n5", handed_off)
    print(f"n5 alone holds them: check {len(attempts)} after it was healthy ({took:.1f}s)")


def raft_status(c: ComposeCluster, via: tuple[str, ...]) -> dict:
    return json.loads(ok(c.kv("raft", "status", "--json", via=via)))


def raft_change(c: ComposeCluster, *args: str, via: tuple[str, ...] = ("n1", "n2", "n3")
                ) -> dict:
    """`kv raft add|promote|remove ... --json`, which must succeed."""
    reply = json.loads(ok(c.kv("raft", *args, "--json", via=via, timeout=120)))
    assert reply["ok"], reply
    return reply


def caught_up(c: ComposeCluster, node: str, index: int, via: tuple[str, ...]) -> None:
    """The leader's view: `node` is a learner that holds the log up to `index` (its own
    addition), i.e. it caught up through the snapshot and the appends."""
    status = raft_status(c, via)
    m = next((m for m in status["members"] if m["id"] == node), None)
    assert m and m["role"] == "learner" and (m["match_index"] or 0) >= index, status


def volume_of(c: ComposeCluster, service: str) -> str:
    names = run(["docker", "volume", "ls", "-q", "--filter",
                 f"label=com.docker.compose.project={c.project}"]).stdout.split()
    found = [n for n in names if n.endswith(f"_{service}-data")]
    assert len(found) == 1, (service, names)
    return found[0]


@pytest.mark.reshapes_cluster  # n4 becomes a voter and a voter is replaced: last
def test_raft_membership_add_promote_and_replace_a_dead_voter(
        compose_cluster: ComposeCluster) -> None:
    """The Raft group of compose (n1..n3) from the host: `kv raft add n4 --learner` (n4
    started without KV_RAFT_JOIN runs no raft member: added, with a warning that it will
    not catch up; `KV_RAFT_JOIN=1 ... up -d n4` restarts it so and it does), `kv raft
    promote n4`; then a voter dies with its volume, `kv raft remove` drops it and the group
    keeps committing `kv meta put`; a restart of it on a new volume without KV_RAFT_JOIN
    refuses with the way back, with KV_RAFT_JOIN=1 it joins, is added and promoted again
    and holds every entry (docs/docker.md, "Raft in compose")."""
    c = compose_cluster
    started = time.monotonic()
    join_env = {**c.env, "KV_RAFT_JOIN": "1"}
    # n4 as `--profile five up -d n4` starts it (the five-node test may have done so)
    c.compose("--profile", "five", "up", "-d", "--no-build", "n4", timeout=300)
    c.forget_containers()
    c.wait_healthy(["n4"])
    c.wait_for_leader()
    added = raft_change(c, "add", "n4", "--learner")
    assert added["learners"] == ["n4"] and "n4" not in added["voters"], added
    assert "runs no raft member" in added.get("warning", ""), added
    assert "KV_RAFT_JOIN=1" in added["warning"], added
    # the fix the warning names: n4 restarted with KV_RAFT_JOIN=1 (same volume); catching
    # up needs it serving, so no separate wait for its healthcheck
    run([*c.base, "--profile", "five", "up", "-d", "--no-build", "n4"], env=join_env,
        timeout=300)
    c.forget_containers()
    took = wait_for("n4 catches up as a learner",
                    lambda: caught_up(c, "n4", added["index"], ("n1", "n2", "n3")))
    print(f"\nn4 caught up as a learner {took:.1f}s after `KV_RAFT_JOIN=1 ... up -d n4`")
    promoted = raft_change(c, "promote", "n4")
    assert promoted["voters"] == ["n1", "n2", "n3", "n4"] and promoted["learners"] == [], \
        promoted

    # a voter other than the leader dies (SIGKILL) and its volume is lost
    victim = next(n for n in ("n3", "n2") if n != promoted["leader"])
    alive = tuple(n for n in ("n1", "n2", "n3", "n4") if n != victim)
    volume = volume_of(c, victim)
    c.compose("kill", victim, timeout=120)
    c.compose("rm", "-f", victim, timeout=120)
    run(["docker", "volume", "rm", volume])
    c.forget_containers()
    # four voters, three alive: still a majority
    assert json.loads(ok(c.kv("meta", "put", "e2e/raft/b", "2", "--json", via=alive)))["ok"]
    removed = raft_change(c, "remove", victim, via=alive)
    assert removed["voters"] == sorted(alive) and removed["learners"] == [], removed
    assert json.loads(ok(c.kv("meta", "put", "e2e/raft/c", "3", "--json", via=alive)))["ok"]

    # back on a new, empty volume: without KV_RAFT_JOIN it refuses, naming the way back
    c.compose("up", "-d", "--no-build", victim, timeout=300)
    c.forget_containers()

    def refused() -> None:
        logs = c.compose("logs", "--no-color", victim, check=False).stdout
        assert "Supported way back" in logs and f"kv raft remove {victim}" in logs, logs[-2000:]

    wait_for(f"{victim} refuses to start as a voter", refused)
    run([*c.base, "up", "-d", "--no-build", victim], env=join_env, timeout=300)
    c.forget_containers()
    readded = raft_change(c, "add", victim, "--learner", via=alive)
    assert readded["learners"] == [victim] and "warning" not in readded, readded
    wait_for(f"{victim} catches up as a learner",
             lambda: caught_up(c, victim, readded["index"], alive))
    back = raft_change(c, "promote", victim, via=alive)
    assert back["voters"] == ["n1", "n2", "n3", "n4"], back

    def holds_everything() -> None:  # its own state machine, not the leader's
        got = c.kv("meta", "get", "e2e/raft/", "--prefix", "--serializable", "--json",
                   via=(victim,))
        held = {k["key"]: k["value"] for k in json.loads(ok(got))["kvs"]}
        assert held == {"e2e/raft/b": "2", "e2e/raft/c": "3"}, held

    wait_for(f"{victim} applied every entry", holds_everything)
    print(f"raft membership on compose: {time.monotonic() - started:.1f}s in all")


@pytest.mark.parametrize("front_end", ["docker compose", "docker-compose"])
def test_both_compose_front_ends_drive_the_project(compose_cluster: ComposeCluster,
                                                   front_end: str) -> None:
    """scripts/docker_cluster.sh (make docker-up/down) works with either front-end: each
    that answers here sees the same project and containers."""
    import subprocess

    probe = subprocess.run([*front_end.split(), "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"`{front_end}` does not answer on this machine")
    env = {**compose_cluster.env, "KV_COMPOSE": front_end}
    from .conftest import ROOT, run

    ps = run([str(ROOT / "scripts/docker_cluster.sh"), "compose", "ps", "-q"], env=env)
    expected = {compose_cluster.container(s) for s in ("n1", "n2", "n3")}
    assert expected <= set(ps.stdout.split()), (front_end, ps.stdout)


@pytest.mark.secure_ci
def test_raft_meta_repair_and_admin_commands_from_the_host(
        compose_cluster: ComposeCluster) -> None:
    """The compose cluster runs the Raft group on n1..n3; every kv command works from the
    host through the published ports only (the nodes' own addresses, nN:7001, do not
    resolve here), and fails over from an endpoint that is down."""
    c = compose_cluster
    def leader() -> None:
        assert json.loads(ok(c.kv("raft", "status", "--json")))["leader"], "no leader yet"

    took = wait_for("raft leader", leader)
    print(f"\nraft leader known after {took:.1f}s")
    assert json.loads(ok(c.kv("meta", "put", "e2e/k", "v1", "--json")))["ok"]
    assert ok(c.kv("meta", "get", "e2e/k")).strip() == "v1"
    ok(c.kv("put", "repair:k", "v", "--consistency", "ALL"))
    repaired = json.loads(ok(c.kv("repair", "--json")))
    assert not repaired["errors"] and {n["node"] for n in repaired["nodes"]} == \
        {"n1", "n2", "n3"}, repaired
    # a dead endpoint first: every admin command moves on to the next one
    from .conftest import free_ports, kv_command, run

    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    live = c.endpoints()

    for args in (["status", "--json"], ["info", "--json"], ["node", "health"],
                 ["repair", "--json", "--node", live.split(",")[0]],
                 ["raft", "status", "--json"], ["meta", "get", "e2e/k"]):
        proc = run([*kv_command(), "--endpoints", f"{dead},{live}", *args], timeout=120,
                   env=c.host_env(), check=False)
        assert proc.returncode == 0, (args, proc.stderr)
