"""Real processes (issue 11): the Raft leader is SIGKILLed and SIGSTOPped again and again
while clients put / cas / get metadata keys through followers, failing over between
endpoints. Every command carries a client session and is retried with it until answered
(or its deadline: an unknown outcome). The recorded history must be linearizable (the Wing
& Gong / Lowe checker of the Raft simulator), and no command may apply twice: counters
raised by compare-and-set end exactly at the acknowledged increments plus some of the
unknown ones - a cas applied twice would fail its second time and be counted as a failure
(the bug this issue started from: `compare failed` against the client's own write).

Bounded: about 20 s of faults (KV_META_FAULT_SECONDS), ~35 s in all."""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time

import pytest
from conftest import start_cluster
from sim.raft.linearizability import Op, check_history

from kvstore.cli.raft_cmds import meta_request
from kvstore.client.meta import CompareFailed, MetaClient, OutcomeUnknown
from kvstore.core.errors import KVError

pytestmark = pytest.mark.integration

FAULT_SECONDS = float(os.environ.get("KV_META_FAULT_SECONDS", "20"))
KEYS = ["k0", "k1"]


def _leader(cluster, timeout: float = 20.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in cluster.nodes:
            try:
                s = meta_request([n.address], {"op": "status", "leader_view": False},
                                 timeout=1.0)
            except BaseException:  # a stopped node: ask the next
                continue
            if s.get("role") == "leader":
                return n.id
        time.sleep(0.05)
    return None


def test_history_under_leader_kills_and_pauses_is_linearizable_and_applied_once(tmp_path):
    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    stop = threading.Event()
    history: list[Op] = []
    counters = {"acked": 0, "unknown": 0, "failed_definitely": 0, "duplicates": 0}
    lock = threading.Lock()
    t0 = time.monotonic()
    faults: list[str] = []
    try:
        leader = _leader(cluster)
        assert leader is not None
        by_id = {n.id: n.address for n in cluster.nodes}

        def client(cid: int) -> None:
            rng = random.Random(cid)
            # Followers first: requests go through a follower and are forwarded.
            order = sorted(by_id, key=lambda n: (n == leader, rng.random()))
            with MetaClient([by_id[n] for n in order], timeout=4.0) as c:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    key = rng.choice(KEYS)
                    roll = rng.random()
                    call = time.monotonic() - t0
                    if roll < 0.3:
                        op = Op(cid, key, "get", (), call)
                        try:
                            k, _ = c.get(key)
                        except KVError:
                            continue  # a read that failed has no effect
                        op.result, op.known = (k.value if k else None), True
                    elif roll < 0.6:
                        val = f"c{cid}.{seq}"
                        op = Op(cid, key, "put", (val,), call)
                        try:
                            w = c.put(key, val)
                            op.known = True
                            counters["duplicates"] += w.duplicate
                        except OutcomeUnknown:
                            counters["unknown"] += 1
                        except KVError:
                            counters["failed_definitely"] += 1
                            continue  # certainly not applied
                    else:
                        with lock:
                            seen = [o.arg[-1] for o in history[-10:]
                                    if o.key == key and o.kind != "get"]
                        exp = rng.choice([*seen, None])
                        new = f"c{cid}.{seq}"
                        op = Op(cid, key, "cas", (exp, new), call)
                        try:
                            w = c.cas(key, exp, new)
                            op.result, op.known = True, True
                            counters["duplicates"] += w.duplicate
                        except CompareFailed:
                            op.result, op.known = False, True
                        except OutcomeUnknown:
                            counters["unknown"] += 1
                        except KVError:
                            counters["failed_definitely"] += 1
                            continue
                    if op.known:
                        op.ret = time.monotonic() - t0
                    else:
                        op.ret = math.inf
                    with lock:
                        history.append(op)

        def counter(cid: int) -> None:
            """Raise `ctr` by compare-and-set; count what was acknowledged."""
            with MetaClient(list(reversed(list(by_id.values()))), timeout=4.0) as c:
                cur = None
                while not stop.is_set():
                    try:
                        if cur is None:
                            k, _ = c.get("ctr")
                            cur = int(k.value) if k else 0
                        c.cas("ctr", str(cur) if cur else None, str(cur + 1))
                        with lock:
                            counters["acked"] += 1
                        cur += 1
                    except CompareFailed as exc:
                        cur = int(exc.current.value) if exc.current else 0
                    except OutcomeUnknown:
                        with lock:
                            counters["unknown_incr"] = counters.get("unknown_incr", 0) + 1
                        cur = None
                    except KVError:
                        cur = None

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=counter, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        rng = random.Random(11)
        end = time.monotonic() + FAULT_SECONDS
        kills = pauses = 0
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 2.5))
            victim = _leader(cluster, timeout=10.0)
            if victim is None:
                continue
            proc = cluster.procs[victim]
            if rng.random() < 0.5:
                cluster.kill(victim)
                kills += 1
                faults.append(f"{time.monotonic() - t0:.1f}s SIGKILL {victim}")
                time.sleep(rng.uniform(0.3, 1.0))
                cluster.start_node(victim)
            else:
                proc.send_signal(signal.SIGSTOP)
                pauses += 1
                faults.append(f"{time.monotonic() - t0:.1f}s SIGSTOP {victim}")
                time.sleep(rng.uniform(0.5, 2.0))
                proc.send_signal(signal.SIGCONT)
        time.sleep(2.0)  # healed: let the last requests finish
        stop.set()
        for t in threads:
            t.join(timeout=30)
        known = sum(1 for o in history if o.known)
        print(f"\nmeta under faults: {len(history)} ops ({known} answered, "
              f"{len(history) - known} unknown outcome), {kills} leader kills, {pauses} "
              f"pauses, {counters}")
        assert kills + pauses >= 4 and known >= 50
        ok, key = check_history(history)
        ops = "\n  ".join(o.describe() for o in history if o.key == key)
        assert ok, f"history for key {key} is not linearizable:\n  {ops}\nfaults: {faults}"
        with MetaClient(list(by_id.values()), timeout=10.0) as c:
            k, _ = c.get("ctr")
        final = int(k.value) if k else 0
        acked, unknown = counters["acked"], counters.get("unknown_incr", 0)
        assert acked <= final <= acked + unknown, (
            f"counter {final}: {acked} acknowledged increments, {unknown} unknown - a "
            "command was applied twice or an acknowledged one was lost")
    finally:
        stop.set()
        for proc in cluster.procs.values():  # never leave a stopped process behind
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        cluster.stop()
