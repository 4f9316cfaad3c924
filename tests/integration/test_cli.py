"""The real `kv` entry point against a real cluster: output, JSON schema, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def kv(cluster, *args: str, endpoints: str | None = None,
       stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KV_ENDPOINTS=endpoints or ",".join(cluster.endpoints()))
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True,
                          text=True, env=env, timeout=60, input=stdin)


def test_put_get_delete_round_trip(shared_cluster):
    r = kv(shared_cluster, "put", "user:1", "alice", "--consistency", "QUORUM")
    assert r.returncode == 0 and "OK" in r.stdout, r
    r = kv(shared_cluster, "get", "user:1", "--consistency", "ONE")
    assert r.returncode == 0 and r.stdout.strip() == "alice"
    r = kv(shared_cluster, "delete", "user:1", "--consistency", "ALL")
    assert r.returncode == 0, r
    r = kv(shared_cluster, "get", "user:1", "--json")
    assert r.returncode == 3
    data = json.loads(r.stdout)
    assert data["found"] is False and data["siblings"] == [] and data["context"]


def test_get_json_with_trace_has_the_documented_schema(shared_cluster):
    assert kv(shared_cluster, "put", "k:json", "v1").returncode == 0
    r = kv(shared_cluster, "get", "k:json", "--consistency", "ALL", "--trace", "--json")
    assert r.returncode == 0, r
    data = json.loads(r.stdout)
    assert {"key", "siblings", "context", "trace"} <= set(data)
    assert data["siblings"][0]["value"] == "v1" and data["siblings"][0]["clock"]
    trace = data["trace"]
    assert trace["coordinator"] in {"n1", "n2", "n3"}
    assert len(trace["replicas"]) == 3
    for replica in trace["replicas"]:
        assert {"node", "ok", "latency_ms", "versions"} <= set(replica)
        assert replica["ok"] and replica["versions"][0]["value"] == "v1"
        assert set(replica["versions"][0]) >= {"value", "clock"}


def test_trace_table_for_people(shared_cluster):
    r = kv(shared_cluster, "put", "k:trace", "v", "--trace")
    assert r.returncode == 0 and "minted write" in r.stdout, r.stdout


def test_siblings_are_shown_and_resolved_by_a_put(shared_cluster):
    assert kv(shared_cluster, "put", "k:sib", "a", "--blind", "-c", "ALL").returncode == 0
    r = kv(shared_cluster, "put", "k:sib", "b", "--blind", "-c", "ALL")
    assert "2 siblings" in r.stdout
    r = kv(shared_cluster, "get", "k:sib", "-c", "ALL")
    assert "2 siblings" in r.stdout and " a " in r.stdout + " " and "b" in r.stdout
    data = json.loads(kv(shared_cluster, "get", "k:sib", "-c", "ALL", "--json").stdout)
    assert sorted(s["value"] for s in data["siblings"]) == ["a", "b"]
    # put reads the context first, so it supersedes both
    assert kv(shared_cluster, "put", "k:sib", "c", "-c", "ALL").returncode == 0
    r = kv(shared_cluster, "get", "k:sib", "-c", "ALL")
    assert r.stdout.strip() == "c"
    # an explicit context from get --json works too
    ctx = json.loads(kv(shared_cluster, "get", "k:sib", "--json").stdout)["context"]
    assert kv(shared_cluster, "put", "k:sib", "d", "--context", ctx, "-c", "ALL").returncode == 0
    assert kv(shared_cluster, "get", "k:sib", "-c", "ALL").stdout.strip() == "d"


def test_explicit_r_and_w(shared_cluster):
    assert kv(shared_cluster, "put", "k:rw", "v", "--w", "3").returncode == 0
    assert kv(shared_cluster, "get", "k:rw", "--r", "1").stdout.strip() == "v"
    r = kv(shared_cluster, "get", "k:rw", "--r", "4")
    assert r.returncode == 2 and "R=4 exceeds the replication factor N=3" in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["get", "k" * 5000], 2, "the limit is 1024 bytes"),
        (["get", "k", "--consistency", "FIVE"], 2, "is not one of"),
        (["frobnicate"], 2, "No such command"),
        (["put", "k", "v", "--context", "%%%"], 2, "context"),
        (["put", "k", "v", "--fence", "jobs/nightly"], 2, "is not LOCK:TOKEN"),
        (["put", "k", "v", "--fence", "jobs/nightly:0"], 2, "token must be 1.."),
        (["delete", "k", "--fence", "jobs/nightly:x7"], 2, "is not LOCK:TOKEN"),
        (["put", "k", "v", "--fence", ":7"], 2, "lock name is empty"),
        (["put", "k", "v", "--fence", "L:7", "--sloppy"], 2, "always strict"),
        (["put", "k", "v", "--fence", "L:7", "-c", "ANY"], 2, "always strict"),
    ],
)
def test_bad_input_gets_a_clear_error_and_no_traceback(shared_cluster, args, code, message):
    r = kv(shared_cluster, *args)
    assert r.returncode == code, r
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_guarded_writes_show_their_fence_and_a_stale_token_exits_4(shared_cluster):
    r = kv(shared_cluster, "put", "k:fenced", "v7", "--fence", "jobs/nightly:7", "--json")
    assert r.returncode == 0, r
    data = json.loads(r.stdout)
    assert data["fence"] == "jobs/nightly:7"
    assert data["siblings"][0]["fence"] == "jobs/nightly:7"
    r = kv(shared_cluster, "put", "k:fenced", "v5", "--fence", "jobs/nightly:5")
    assert r.returncode == 4, r
    assert r.stderr.startswith("Error: Fenced: lock 'jobs/nightly' token 5 is below the "
                               "highest token seen for it (7)"), r.stderr
    assert "nothing was written" in r.stderr
    # another key: the replicas' table remembers the lock; a delete is guarded the same way
    r = kv(shared_cluster, "delete", "k:fenced-other", "--fence", "jobs/nightly:6", "--blind")
    assert r.returncode == 4 and "Fenced" in r.stderr, r
    r = kv(shared_cluster, "put", "k:fenced", "v8", "--fence", "jobs/nightly:8", "--trace")
    assert r.returncode == 0 and "OK, stored under fence jobs/nightly:8" in r.stdout, r
    assert "under fence jobs/nightly:8" in r.stdout  # the mint event of the trace
    r = kv(shared_cluster, "get", "k:fenced", "--json", "--trace", "--consistency", "ALL")
    data = json.loads(r.stdout)
    assert [v["value"] for v in data["siblings"]] == ["v8"]
    assert data["siblings"][0]["fence"] == "jobs/nightly:8"


def test_oversized_value_from_stdin_is_refused_before_anything_is_written(shared_cluster):
    r = kv(shared_cluster, "put", "k:big", "-", "--blind", stdin="x" * 2_000_000)
    assert r.returncode == 2 and "the limit is 1048576 bytes" in r.stderr, r.stderr
    assert kv(shared_cluster, "get", "k:big").returncode == 3
    r = kv(shared_cluster, "put", "k:big", "-", stdin="from stdin")
    assert r.returncode == 0
    assert kv(shared_cluster, "get", "k:big").stdout.strip() == "from stdin"


def test_unreachable_endpoint_is_a_short_error(shared_cluster):
    r = kv(shared_cluster, "get", "k", endpoints="127.0.0.1:9")
    assert r.returncode == 1
    assert "could not reach any node" in r.stderr and "Traceback" not in r.stderr


def test_failover_to_a_live_endpoint(shared_cluster):
    assert kv(shared_cluster, "put", "k:fo", "v").returncode == 0
    r = kv(shared_cluster, "get", "k:fo", endpoints="127.0.0.1:9," + shared_cluster.endpoints()[0])
    assert r.returncode == 0 and r.stdout.strip() == "v"


def test_info_json(shared_cluster):
    data = json.loads(kv(shared_cluster, "info", "--json").stdout)
    assert data["replication_factor"] == 3
    assert sorted(m["id"] for m in data["members"]) == ["n1", "n2", "n3"]
    assert abs(sum(m["ownership"] for m in data["members"]) - 1.0) < 1e-6


@pytest.mark.parametrize("command", [[], ["get"], ["put"], ["delete"], ["info"], ["node"],
                                     ["node", "start"], ["node", "health"], ["cluster"],
                                     ["cluster", "up"], ["cluster", "down"], ["cluster", "status"],
                                     ["ring"]])
def test_every_command_has_help(command):
    r = subprocess.run([sys.executable, "-m", "kvstore", *command, "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "Usage:" in r.stdout


def test_malformed_request_bytes_do_not_crash_the_node(shared_cluster):
    import grpc

    address = shared_cluster.endpoints()[0]
    with grpc.insecure_channel(address) as channel:
        for method in ("/kvstore.KV/Execute", "/kvstore.Internode/Exchange",
                       "/kvstore.Admin/Info"):
            call = channel.unary_unary(method, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256))):
                try:
                    call(garbage, timeout=5)
                except grpc.RpcError as exc:
                    # grpc refuses the bytes before any handler runs, saying why
                    assert exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                          grpc.StatusCode.INVALID_ARGUMENT), exc
                    assert "pars" in (exc.details() or "").lower(), exc.details()
    # the node still serves
    r = kv(shared_cluster, "put", "k:after-garbage", "v")
    assert r.returncode == 0
    assert kv(shared_cluster, "get", "k:after-garbage").stdout.strip() == "v"


def test_internode_message_from_unknown_sender_is_refused_cleanly(shared_cluster):
    import grpc

    from kvstore._proto import internode_pb2 as ipb
    from kvstore._proto import internode_pb2_grpc

    with grpc.insecure_channel(shared_cluster.endpoints()[0]) as channel:
        stub = internode_pb2_grpc.InternodeStub(channel)
        reply = stub.Exchange(ipb.PeerBatch(source="stranger", messages=[
            ipb.PeerMessage(raft=b"\x00\x01"), ipb.PeerMessage()]), timeout=5)
    assert len(reply.results) == 2
    assert all(r.HasField("error") for r in reply.results)


def test_status_json_lists_every_member(shared_cluster):
    r = kv(shared_cluster, "status", "--json")
    assert r.returncode == 0, r
    members = json.loads(r.stdout)["members"]
    assert sorted(m["id"] for m in members) == ["n1", "n2", "n3"]
    for m in members:
        assert {"id", "address", "status", "up", "phi", "ownership", "hints_pending"} <= set(m)
        assert m["up"] is True and m["hints_pending"] == 0
    r = kv(shared_cluster, "status")
    assert r.returncode == 0 and "hints" in r.stdout and "n3" in r.stdout


def _key_owned_by(cluster, nodes: set[str], endpoints: str) -> str:
    """A key whose preference list holds every node in `nodes` (asked of the cluster)."""
    for i in range(500):
        key = f"ctx:{i}"
        r = kv(cluster, "get", key, "-c", "ONE", "--json", "--trace", endpoints=endpoints)
        if nodes <= set(json.loads(r.stdout)["trace"]["preference_list"]):
            return key
    raise AssertionError(f"no key found on {nodes}")


def test_put_at_all_with_stopped_nodes_reads_its_context_at_a_level_that_can_answer(tmp_path):
    """Failed before: `kv put --consistency ALL` read its context at R=ALL, so with one node
    down it failed with "could not read the current context first", even with --sloppy."""
    from conftest import start_cluster

    cluster = start_cluster(tmp_path, nodes=4)
    try:
        live = ",".join(n.address for n in cluster.nodes if n.id not in ("n3", "n4"))
        every = ",".join(cluster.endpoints())
        key = _key_owned_by(cluster, {"n3", "n4"}, every)
        assert kv(cluster, "put", key, "old", "-c", "ALL", endpoints=every).returncode == 0
        cluster.kill("n4")
        no_n4 = ",".join(n.address for n in cluster.nodes if n.id != "n4")

        # one replica down: the context is read at QUORUM, the sloppy write at ALL succeeds
        r = kv(cluster, "put", key, "new", "-c", "ALL", "--sloppy", "--json", "--trace",
               endpoints=no_n4)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        read = data["context_read"]
        assert read["consistency"] == "QUORUM" and read["failed"] == [], read
        assert len(read["replicas"]) == 2 and "n4" not in read["replicas"], read
        assert read["siblings"] == 1 and not read["blind"], read
        assert [s["value"] for s in data["siblings"]] == ["new"], data  # superseded "old"
        assert any(r["hint_for"] == "n4" and r["counted"] for r in data["trace"]["replicas"])
        # strict (the default): the write itself, not the context read, is what fails
        r = kv(cluster, "put", key, "strict", "-c", "ALL", endpoints=no_n4)
        assert r.returncode == 1, r
        assert "could not read the current context" not in r.stderr, r.stderr
        assert "W=3 needs 3 replicas, 2 answered" in r.stderr, r.stderr
        assert "--sloppy would have counted them" in r.stderr, r.stderr

        # two of the key's replicas down: QUORUM cannot answer, the context is read at ONE
        cluster.kill("n3")
        r = kv(cluster, "put", key, "newer", "-c", "QUORUM", "--sloppy", "--trace",
               endpoints=live)
        assert r.returncode == 0, r.stderr
        assert "context read at ONE from" in r.stdout and "QUORUM failed" in r.stdout, r.stdout
        r = kv(cluster, "put", key, "newest", "-c", "QUORUM", "--sloppy", "--json",
               endpoints=live)
        assert r.returncode == 0, r.stderr
        read = json.loads(r.stdout)["context_read"]
        assert read["consistency"] == "ONE" and len(read["replicas"]) == 1, read
        assert read["failed"][0]["consistency"] == "QUORUM", read
        assert "R=2 needs 2 replicas, 1 answered" in read["failed"][0]["error"], read
        got = kv(cluster, "get", key, "-c", "ONE", "--json", endpoints=live)
        assert [s["value"] for s in json.loads(got.stdout)["siblings"]] == ["newest"]
        # without --trace or --json the fallback is a note on stderr
        r = kv(cluster, "put", key, "last", "-c", "QUORUM", "--sloppy", endpoints=live)
        assert r.returncode == 0 and "OK" in r.stdout, r
        assert "context read at ONE" in r.stderr, r.stderr
        # a read at ANY is refused with the reason
        r = kv(cluster, "get", key, "-c", "ANY", endpoints=live)
        assert r.returncode == 2 and "ANY is for writes only" in r.stderr, r.stderr

        # every replica down: nothing can be read, ANY writes blind and the one node left
        # (not a replica) keeps hints for all three
        replicas = json.loads(kv(cluster, "put", key, "x", "-c", "ANY", "--blind", "--json",
                                 "--trace", endpoints=live).stdout)["trace"]["preference_list"]
        third = next(n for n in replicas if n not in ("n3", "n4"))
        cluster.kill(third)
        last = next(n for n in cluster.nodes if n.id not in (*replicas,))
        r = kv(cluster, "put", key, "any", "-c", "ANY", "--json", "--trace",
               endpoints=last.address)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["context_read"]["blind"] and data["context_read"]["consistency"] is None
        hints = [h for h in data["trace"]["replicas"] if h["hint_for"]]
        assert sorted(h["hint_for"] for h in hints) == sorted(replicas), data["trace"]
        assert all(h["node"] == last.id and h["counted"] for h in hints), data["trace"]
    finally:
        cluster.stop()


def test_ring_json_agrees_with_the_nodes_and_shows_replicated_shares(shared_cluster):
    r = kv(shared_cluster, "ring", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ranges"] == 3 * data["vnodes"] and data["pending"] == []
    assert all(m["agrees"] and m["status"] == "NORMAL" for m in data["members"])
    # three nodes, three replicas per key: every node stores every range
    assert all(abs(m["replicated"] - 1.0) < 1e-6 for m in data["members"])
    assert 1.0 <= data["balance"] <= 1.15
    r = kv(shared_cluster, "ring")
    assert r.returncode == 0 and "stores a replica of" in r.stdout and "n2" in r.stdout
