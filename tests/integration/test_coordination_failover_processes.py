"""Real processes (issue 11): leases and elections across a SIGKILL of the Raft leader.

* A lease kept alive through a leader kill survives it (its keepalives resume on the new
  leader; its key stays), and a lease left to lapse right before a leader kill ends no
  earlier than its holder's view (last keepalive sent + TTL) and no later than the
  documented bound (docs/coordination.md: checkpoint interval + failover).
* An observer sees every election result in order across a leader kill: candidate a, then
  b once a's lease lapses, with growing revisions.
* A watch across a leader kill delivers every acknowledged write once, in revision order
  (it resumes from where each answer ended: no gap, no repeat).

Prints the failover times it measured."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import start_cluster

from kvstore.cli.raft_cmds import meta_request
from kvstore.client.meta import LeaseNotFound, MetaClient
from kvstore.core.errors import KVError

pytestmark = pytest.mark.integration

TTL = 3.0
CHECKPOINT = 1.0  # the driver's default lease_checkpoint
# election timeout (0.5 s at the default ticks) + a few retries' worth of slack
LATE_BOUND = CHECKPOINT + 4.0


def _leader(cluster, exclude: str = "", timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in cluster.nodes:
            if n.id == exclude or n.id not in cluster.procs:
                continue
            try:
                s = meta_request([n.address], {"op": "status", "leader_view": False},
                                 timeout=1.0)
            except BaseException:  # a dead node: ask the next
                continue
            if s.get("role") == "leader":
                return n.id
        time.sleep(0.05)
    raise TimeoutError("no raft leader")


def test_leases_and_elections_across_leader_kills(tmp_path) -> None:
    cluster = start_cluster(tmp_path, extra_args=["--raft-voters", "n1,n2,n3"],
                            raft_bootstrap=True)
    eps = cluster.endpoints()
    try:
        with MetaClient(eps, timeout=6.0) as c:
            # 0. a watcher and a writer through the kills below
            events: list = []
            acked: list[int] = []
            stop = threading.Event()

            def watcher() -> None:
                with MetaClient(eps, timeout=6.0) as wc:
                    async def run():
                        async for ev in wc.async_client.watch("w/", prefix=True,
                                                              start_revision=1, wait=0.5):
                            events.append(ev.revision)
                            if stop.is_set() and acked and ev.revision >= acked[-1]:
                                return
                    wc.run(run())

            def writer() -> None:
                with MetaClient(eps, timeout=6.0) as wr:
                    i = 0
                    while not stop.is_set():
                        try:
                            acked.append(wr.put(f"w/{i % 5}", str(i)).revision)
                        except KVError:
                            pass
                        i += 1
                        time.sleep(0.02)

            threads = [threading.Thread(target=watcher, daemon=True),
                       threading.Thread(target=writer, daemon=True)]
            for t in threads:
                t.start()

            # 1. kept alive through a leader kill: it survives
            lease = c.lease_grant(TTL).id
            c.put("svc/a", "up", lease=lease)
            leader = _leader(cluster)
            killed = time.monotonic()
            cluster.kill(leader)
            resumed = None
            while time.monotonic() - killed < 3 * TTL:
                sent = time.monotonic()
                try:
                    c.lease_keepalive(lease)  # never LeaseNotFound: that fails the test
                except LeaseNotFound:
                    raise AssertionError("the lease was lost in the failover") from None
                except KVError:
                    continue
                if resumed is None and sent > killed:
                    resumed = time.monotonic() - killed
                time.sleep(TTL / 3)
            k, _ = c.get("svc/a")
            assert k is not None and k.lease == lease
            cluster.start_node(leader)
            healthy = threading.Event()

            def keep() -> None:  # the restart can take longer than the TTL on a busy box
                with MetaClient(eps, timeout=6.0) as kc:
                    while not healthy.is_set():
                        try:
                            kc.lease_keepalive(lease)
                        except LeaseNotFound:
                            return
                        except KVError:
                            pass
                        healthy.wait(TTL / 3)

            keeper = threading.Thread(target=keep, daemon=True)
            keeper.start()
            try:
                cluster.wait_healthy(nodes=[leader], timeout=30)
            finally:
                healthy.set()
                keeper.join(timeout=10)

            # 2. left to lapse just before a leader kill: ends within [TTL, TTL + bound]
            sent = time.monotonic()
            c.lease_keepalive(lease)
            cluster.kill(_leader(cluster))
            gone = None
            while time.monotonic() - sent < TTL + LATE_BOUND + 5:
                try:
                    k, _ = c.get("svc/a")
                except KVError:
                    continue
                if k is None:
                    gone = time.monotonic() - sent
                    break
                time.sleep(0.05)
            assert gone is not None, "the lease never ended"
            assert gone >= TTL, f"the lease ended {TTL - gone:.2f}s early"
            assert gone <= TTL + LATE_BOUND, f"the lease ended {gone - TTL:.2f}s late"
            with pytest.raises(LeaseNotFound):
                c.lease_ttl(lease)
            stop.set()
            threads[1].join(timeout=20)
            threads[0].join(timeout=30)
            assert events == sorted(set(events)), "a watch event was repeated or reordered"
            missing = sorted(set(acked) - set(events))
            assert not missing, f"acknowledged writes at revisions {missing[:5]} not watched"
            watched = len(events)
        for n in cluster.nodes:
            if n.id not in cluster.procs:
                cluster.start_node(n.id)
        cluster.wait_healthy(timeout=30)

        # 3. an observer across a leader kill: every result, in order
        seen: list = []
        stop = threading.Event()

        def observe() -> None:
            with MetaClient(eps, timeout=6.0) as oc:
                async def run():
                    async for leader in oc.async_client.observe("svc/sched", wait=0.5):
                        seen.append((time.monotonic(), leader))
                        if stop.is_set() or len(seen) >= 2:
                            return
                oc.run(run())

        watcher = threading.Thread(target=observe, daemon=True)
        watcher.start()
        with MetaClient(eps, timeout=6.0) as a, MetaClient(eps, timeout=6.0) as b:
            lb = b.lease_grant(30.0).id
            granted = time.monotonic()
            la = a.lease_grant(TTL).id  # never kept alive: it lapses at granted + TTL
            assert a.campaign("svc/sched", "a", la).value == "a"
            b_task = threading.Thread(target=lambda: b.campaign("svc/sched", "b", lb),
                                      daemon=True)
            b_task.start()
            cluster.kill(_leader(cluster))
            lapsed = granted + TTL
            b_task.join(timeout=TTL + LATE_BOUND + 10)
            assert not b_task.is_alive(), "b never won"
            watcher.join(timeout=10)
            stop.set()
            assert [s[1].value for s in seen] == ["a", "b"], seen
            assert seen[0][1].revision < seen[1][1].revision
            handover = seen[1][0] - lapsed
            assert handover >= 0, "b was named before a's lease could end"
        print(f"\nleases: keepalives resumed {resumed:.2f}s after the leader kill; a lapsed "
              f"lease (TTL {TTL}s) ended {gone:.2f}s after its last keepalive "
              f"({gone - TTL:.2f}s late, bound {LATE_BOUND}s); election: the observer saw "
              f"b {handover:.2f}s after a's lease (TTL {TTL}s) could end, across a leader kill; "
              f"a watch across two leader kills saw {watched} events, none missing or repeated")
    finally:
        cluster.stop()
