"""SIGKILL *during* a stream of strict QUORUM writes (one node, then every node at once),
restart with the same data directories, and every acknowledged write is still readable.

Sixteen writers run concurrently through the pipelining async client. Each owns a few keys
and writes them in turn, every write with a unique value (`<key>#<seq>`) and the context
of that key's last acknowledged write, so a later write supersedes an earlier one. The
kill is sent from inside the event loop the moment the N-th acknowledgement arrives, so it
always lands while writes are in flight, whatever the machine's speed; the writes in
flight at that instant are recorded. A write whose call raised is of unknown outcome (it
may or may not have been applied) and is neither required nor forbidden afterwards.

The check, per key, after the restart: a QUORUM read returns only values that were really
written, and for every acknowledged write it returns that value or the value of a write
to the same key issued after the acknowledgement (which superseded it knowingly).
No wait depends on timing: the stream stops after a number of acknowledgements, every wait
has a generous bound, and a read that fails is retried a bounded number of times.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest
from conftest import start_cluster

from kvstore.client import AsyncClient, KVError
from kvstore.node.local_cluster import LocalCluster

pytestmark = pytest.mark.integration

WRITERS = 16
KEYS_PER_WRITER = 4
ACKS_BEFORE_KILL = 1000
ACKS_AFTER_KILL = 1000  # one node killed: the survivors keep acknowledging
STREAM_LIMIT_S = 180.0
READ_ATTEMPTS = 5


@dataclass(eq=False)
class Write:
    key: bytes
    seq: int
    value: bytes
    outcome: str = "in flight"  # then "acked" or "unknown"
    error: str = ""


class WriteStream:
    """Concurrent strict QUORUM writers that SIGKILL `victims` after `ACKS_BEFORE_KILL`."""

    def __init__(self, cluster: LocalCluster, victims: list[str], acks_after_kill: int) -> None:
        self.cluster = cluster
        self.victims = victims
        self.acks_after_kill = acks_after_kill
        self.run = os.urandom(3).hex()  # values of this run only
        self.writes: dict[bytes, list[Write]] = defaultdict(list)
        self.in_flight: set[Write] = set()
        self.acked = 0
        self.acked_at_kill: int | None = None
        self.in_flight_at_kill: list[Write] = []
        self.killed_at = 0.0
        self.stop = False

    def _after_ack(self) -> None:
        if self.acked_at_kill is None and self.acked >= ACKS_BEFORE_KILL:
            # No await between the signal and the snapshot: exactly the writes in flight.
            for node_id in self.victims:
                self.cluster.procs[node_id].send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
            self.acked_at_kill = self.acked
            self.in_flight_at_kill = list(self.in_flight)
            self.stop = self.acks_after_kill == 0
        elif self.acked_at_kill is not None and \
                self.acked >= self.acked_at_kill + self.acks_after_kill:
            self.stop = True

    async def writer(self, client: AsyncClient, index: int) -> None:
        keys = [f"kill9-{self.run}-w{index:02d}-k{j}".encode() for j in range(KEYS_PER_WRITER)]
        context = dict.fromkeys(keys, b"")
        i = 0
        while not self.stop:
            key = keys[i % len(keys)]
            i += 1
            write = Write(key, len(self.writes[key]), b"%s#%d" % (key, len(self.writes[key])))
            self.writes[key].append(write)
            self.in_flight.add(write)
            try:
                result = await client.put(key, write.value, context=context[key],
                                          consistency="QUORUM", strict=True)
            except KVError as exc:
                write.outcome, write.error = "unknown", f"{type(exc).__name__}: {exc.message}"
                self.in_flight.discard(write)
                if self.acked_at_kill is not None and not self.acks_after_kill:
                    return  # every node is down: nothing more can be acknowledged
                await asyncio.sleep(0.05)
                continue
            write.outcome = "acked"
            context[key] = result.context
            self.in_flight.discard(write)
            self.acked += 1
            self._after_ack()

    async def run_stream(self) -> None:
        async with AsyncClient(self.cluster.endpoints(), timeout=5) as client:
            tasks = [asyncio.ensure_future(self.writer(client, i)) for i in range(WRITERS)]
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), STREAM_LIMIT_S)
            except TimeoutError:
                raise AssertionError(
                    f"the write stream did not finish within {STREAM_LIMIT_S:.0f} s: "
                    f"{self.acked} acked, kill sent: {self.acked_at_kill is not None}, "
                    f"{len(self.in_flight)} in flight") from None

    def all_writes(self) -> list[Write]:
        return [w for writes in self.writes.values() for w in writes]


async def read_quorum(endpoints: list[str], keys: list[bytes]) -> dict[bytes, list]:
    """Every key at QUORUM; a failed read is retried (bounded), a returned one is kept."""
    out: dict[bytes, list] = {}
    async with AsyncClient(endpoints, timeout=5) as client:
        sem = asyncio.Semaphore(16)

        async def one(key: bytes) -> None:
            async with sem:
                for attempt in range(READ_ATTEMPTS):
                    try:
                        out[key] = (await client.get(key, consistency="QUORUM")).siblings
                        return
                    except KVError as exc:
                        if attempt == READ_ATTEMPTS - 1:
                            raise AssertionError(f"QUORUM read of {key!r} failed "
                                                 f"{READ_ATTEMPTS} times: {exc}") from None
                        await asyncio.sleep(0.5 * (attempt + 1))

        await asyncio.gather(*(one(k) for k in keys))
    return out


def check(stream: WriteStream, read: dict[bytes, list]) -> tuple[int, list[str]]:
    """(acknowledged writes checked, problems)."""
    problems: list[str] = []
    checked = 0
    for key, writes in stream.writes.items():
        by_value = {w.value: w for w in writes}
        siblings = read[key]
        seqs = []
        for s in siblings:
            w = by_value.get(s.value)
            if s.tombstone or w is None:
                problems.append(f"{key!r}: read returned {s.value!r} (tombstone={s.tombstone}), "
                                f"which was never written")
            else:
                seqs.append(w.seq)
        acked = [w for w in writes if w.outcome == "acked"]
        checked += len(acked)
        lost = [w.seq for w in acked if not any(seq >= w.seq for seq in seqs)]
        if lost:
            problems.append(f"{key!r}: {len(lost)} acknowledged writes lost, the newest "
                            f"#{lost[-1]}; the read returned #{sorted(seqs)}; outcomes by #: "
                            + "".join(w.outcome[0] for w in writes))
    return checked, problems


def run_kill_test(tmp_path, victims: list[str], acks_after_kill: int) -> str:
    cluster = start_cluster(tmp_path)
    try:
        started = time.monotonic()
        stream = WriteStream(cluster, victims, acks_after_kill)
        asyncio.run(stream.run_stream())
        assert stream.acked_at_kill is not None, "the kill was never sent"
        assert stream.in_flight_at_kill, "no write was in flight at the kill: it proved nothing"
        stream_s = time.monotonic() - started
        for node_id in victims:
            cluster.kill(node_id)  # reaps the killed process
            cluster.start_node(node_id)
        cluster.wait_healthy(timeout=60, nodes=victims)
        restarted_s = time.monotonic() - stream.killed_at

        # one node killed: read through it, the others otherwise
        endpoints = ([cluster.node(victims[0]).address] if len(victims) == 1
                     else cluster.endpoints())
        read = asyncio.run(read_quorum(endpoints, list(stream.writes)))
        checked, problems = check(stream, read)
        assert not problems, f"{len(problems)} problems after kill -9 of {victims}: {problems[:5]}"

        writes = stream.all_writes()
        unknown = [w for w in writes if w.outcome == "unknown"]
        at_kill = stream.in_flight_at_kill
        by_error = ", ".join(f"{n} {name}" for name, n in
                             Counter(w.error.split(":")[0] for w in unknown).most_common())
        report = (
            f"kill -9 of {','.join(victims)} during {WRITERS} concurrent strict QUORUM writers: "
            f"{stream.acked} writes acked ({stream.acked_at_kill} before the kill), "
            f"{len(at_kill)} in flight at the kill "
            f"({sum(w.outcome == 'acked' for w in at_kill)} then acked, "
            f"{sum(w.outcome == 'unknown' for w in at_kill)} unknown outcome), "
            f"{len(unknown)} unknown in all ({by_error}); checked {checked} acked writes over "
            f"{len(stream.writes)} keys at QUORUM after restart: none lost. "
            f"Stream {stream_s:.1f} s, kill to healthy {restarted_s:.1f} s, "
            f"total {time.monotonic() - started:.1f} s")
        print("\n" + report)
        return report
    finally:
        cluster.stop()


def test_sigkill_one_node_during_quorum_writes_loses_no_acknowledged_write(tmp_path):
    run_kill_test(tmp_path, ["n2"], ACKS_AFTER_KILL)


def test_sigkill_every_node_during_quorum_writes_loses_no_acknowledged_write(tmp_path):
    run_kill_test(tmp_path, ["n1", "n2", "n3"], 0)
