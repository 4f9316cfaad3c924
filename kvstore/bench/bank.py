"""The bank workload (`kv bench --workload bank`, issue 12): transfers between accounts,
each a transaction that reads two balances atomically and writes both back, conditioned on
the versions it read. At the end the total must be unchanged and every committed transfer
reflected: each account's balance is its opening balance plus the committed transfers in
and out (a transfer whose answer was lost is counted by the decision its record holds).

With --fault and --local the harness owns the nodes: the last node is SIGKILLed from 1/5
to 2/5 of the run (then restarted), and the next one paused with SIGSTOP from 3/5 to 4/5.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

from kvstore.client.meta import OutcomeUnknown
from kvstore.client.txn import AsyncTxnClient, TxnAborted
from kvstore.core.errors import KVError

OPENING = 1000


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_bank(endpoints: list[str], *, accounts: int, duration_s: float,
                   concurrency: int, seed: int, timeout_s: float = 10.0, cluster=None,
                   fault: bool = False, credentials=None, note=print,
                   protocol: str = "raft") -> dict[str, Any]:
    if accounts < 2:
        raise ValueError("the bank workload needs at least 2 accounts")
    names = [f"bank:{seed}:acct{i}" for i in range(accounts)]
    client = AsyncTxnClient(endpoints, timeout=timeout_s, credentials=credentials)
    try:
        opened = await client.put({n: str(OPENING) for n in names}, ttl=10)
        note(f"opened {accounts} accounts with {OPENING} each (txn {opened.txn_id})")
        deltas: dict[str, int] = dict.fromkeys(names, 0)
        unknown: dict[str, tuple[str, str, int]] = {}
        counts = {"committed": 0, "aborted": 0, "unknown": 0, "errors": 0, "read_errors": 0}
        latencies: list[float] = []
        faults: list[str] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s

        async def worker(wid: int) -> None:
            wrng = random.Random(f"{seed}/{wid}")
            while loop.time() < end:
                a, b = wrng.sample(names, 2)
                amount = wrng.randint(1, 50)
                started = time.perf_counter()
                try:
                    values, _ = await client.get([a, b])
                except KVError:
                    counts["read_errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                (va, ca), (vb, cb) = values[a], values[b]
                if len(va) != 1 or len(vb) != 1:
                    raise AssertionError(f"an account has {len(va)}/{len(vb)} values")
                ba, bb = int(va[0]), int(vb[0])
                txn_id = f"b{seed}w{wid}t{wrng.getrandbits(40):010x}"
                try:
                    await client.put({a: str(ba - amount), b: str(bb + amount)},
                                     if_context={a: ca, b: cb}, txn_id=txn_id,
                                     ttl=3 if protocol == "raft" else 1, protocol=protocol)
                except TxnAborted:
                    counts["aborted"] += 1
                    continue
                except OutcomeUnknown:
                    counts["unknown"] += 1
                    unknown[txn_id] = (a, b, amount)
                    continue
                except KVError:
                    counts["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                counts["committed"] += 1
                latencies.append((time.perf_counter() - started) * 1000)
                deltas[a] -= amount
                deltas[b] += amount

        async def chaos() -> None:
            nodes = [n.id for n in cluster.nodes]
            killed, paused = nodes[-1], nodes[-2]
            await asyncio.sleep(duration_s / 5)
            cluster.kill(killed)
            faults.append(f"{killed} SIGKILLed at {duration_s / 5:.1f}s")
            note(faults[-1])
            await asyncio.sleep(duration_s / 5)
            cluster.start_node(killed)
            faults.append(f"{killed} restarted at {2 * duration_s / 5:.1f}s")
            note(faults[-1])
            await asyncio.sleep(duration_s / 5)
            pid = cluster.node(paused).pid
            os.kill(pid, signal.SIGSTOP)
            faults.append(f"{paused} paused (SIGSTOP) at {3 * duration_s / 5:.1f}s")
            note(faults[-1])
            try:
                await asyncio.sleep(duration_s / 5)
            finally:
                os.kill(pid, signal.SIGCONT)
            faults.append(f"{paused} resumed (SIGCONT) at {4 * duration_s / 5:.1f}s")
            note(faults[-1])

        started = time.perf_counter()
        tasks = [worker(i) for i in range(concurrency)]
        if fault:
            tasks.append(chaos())
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        # transfers whose answer was lost: the record decides (PENDING ones are aborted
        # by the sweeper once their deadline passes)
        settle_until = loop.time() + 30
        for txn_id, (a, b, amount) in sorted(unknown.items()):
            while True:
                try:
                    st = await client.status(txn_id)
                except KVError:
                    st = None
                if st is not None and st.state in ("COMMITTED", "ABORTED"):
                    break
                if st is None and loop.time() > settle_until - 25:
                    break  # never begun (or forgotten: then resolved; its values show it)
                if loop.time() > settle_until:
                    raise AssertionError(f"transaction {txn_id} still undecided")
                await asyncio.sleep(0.5)
            if st is not None and st.state == "COMMITTED":
                deltas[a] -= amount
                deltas[b] += amount
                counts["unknown_committed"] = counts.get("unknown_committed", 0) + 1
        final, _ = await client.get(names)
        balances = {n: int(final[n][0][0]) for n in names}
        total = sum(balances.values())
        expected = {n: OPENING + deltas[n] for n in names}
        missing = {n: (balances[n], expected[n]) for n in names if balances[n] != expected[n]}
        return {
            "workload": "bank", "protocol": protocol, "accounts": accounts,
            "concurrency": concurrency,
            "duration_s": round(elapsed, 2), "faults": faults, **counts,
            "transfers_per_s": round(counts["committed"] / elapsed, 1),
            "attempts_per_s": round((counts["committed"] + counts["aborted"]
                                     + counts["unknown"]) / elapsed, 1),
            "latency_ms": {"p50": round(_pct(latencies, 0.5), 1),
                           "p99": round(_pct(latencies, 0.99), 1),
                           "max": round(max(latencies, default=0.0), 1)},
            "total": total, "expected_total": OPENING * accounts,
            "total_ok": total == OPENING * accounts,
            "reflected_ok": not missing, "mismatched": missing,
        }
    finally:
        await client.close()
