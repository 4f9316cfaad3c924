"""Failure detection on real processes: time to mark a killed node down, and false
suspicions under a CPU-saturating benchmark and short pauses.

    python bench/failure_detection.py --nodes 3 --kills 5 --soak 60 --pauses 0.5,1,1.5
    python bench/failure_detection.py --gossip-interval 1 --phi-threshold 8   # old defaults

Each scenario starts a fresh local cluster (node defaults unless overridden):

* kill: after a warm-up, SIGKILL the last node; every other node's Observe state is polled
  every 50 ms; reports seconds until the first and the last peer mark it down.
* soak: `kv bench` (closed loop, workload a, QUORUM) plus one busy-looping process per
  core for --soak seconds; a false positive is any `marked_down` event (gossip metrics) on
  any node while no node is down. Reports events and suspected-seconds per node-pair-hour.
* pauses: under the same load, SIGSTOP the last node for each length, SIGCONT it, and
  count whether any peer marked it down (a true positive for long pauses; the bound is
  the detector's silence threshold).

Prints a table and writes JSON (--out). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from kvstore.bench.runner import free_ports
from kvstore.cli.observe_cmds import fetch_state
from kvstore.node.local_cluster import LocalCluster


def start(nodes: int, extra: list[str]) -> LocalCluster:
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="kv-fd-")) / "data", nodes=nodes,
                           ports=free_ports(nodes), extra_args=extra,
                           metrics_ports=free_ports(nodes))
    cluster.start()
    cluster.wait_healthy(60)
    return cluster


def marked_down_events(cluster: LocalCluster) -> dict[str, float]:
    """Each node's count of `marked_down` verdicts so far (kv_gossip_total on /metrics):
    every flap counts, however brief, unlike sampling."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for node in cluster.nodes:
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out[node.id] = sum(s.value for f in text_string_to_metric_families(text)
                           for s in f.samples if s.name == "kv_gossip_total"
                           and s.labels.get("event") == "marked_down")
    return out


def down_views(cluster: LocalCluster, victim: str) -> set[str]:
    seen = set()
    for node in cluster.nodes:
        if node.id == victim:
            continue
        state = fetch_state(node.address, 1.0)
        if any(m["id"] == victim and not m["up"] for m in state.get("members", [])):
            seen.add(node.id)
    return seen


def kill_run(nodes: int, extra: list[str], warmup: float) -> dict:
    cluster = start(nodes, extra)
    try:
        time.sleep(warmup)
        victim = cluster.nodes[-1].id
        killed = time.monotonic()
        cluster.kill(victim)
        seen: dict[str, float] = {}
        while len(seen) < nodes - 1 and time.monotonic() - killed < 120:
            for node in down_views(cluster, victim) - set(seen):
                seen[node] = round(time.monotonic() - killed, 2)
            time.sleep(0.05)
        return {"first_s": min(seen.values()), "last_s": max(seen.values()), "by": seen}
    finally:
        cluster.stop()


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def under_load(cluster: LocalCluster, seconds: float, action=None) -> dict:
    """Run kv bench and one spinner per core for `seconds`; sample every node's view every
    100 ms; `action(t)` is called once a second (pauses). Returns suspicion samples."""
    env = dict(os.environ, KV_ENDPOINTS=",".join(cluster.endpoints()))
    bench = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "bench", "-w", "a", "-c", "QUORUM", "--duration",
         f"{seconds + 5:.0f}s", "--warmup", "0s", "--no-ceiling", "--no-live", "--probes", "0",
         "--records", "1000", "--concurrency", "32", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stop_at = time.monotonic() + seconds + 3
    spinners = [multiprocessing.Process(target=_spin, args=(stop_at,))
                for _ in range(os.cpu_count() or 2)]
    time.sleep(3)  # the load phase of the bench
    for p in spinners:
        p.start()
    samples = suspected = 0
    events: list[tuple[float, str, str]] = []
    began = time.monotonic()
    last_action = -1
    previous: dict[tuple[str, str], bool] = {}
    while time.monotonic() - began < seconds:
        t = time.monotonic() - began
        if action is not None and int(t) != last_action:
            last_action = int(t)
            action(t)
        for node in cluster.nodes:
            state = fetch_state(node.address, 1.0)
            for m in state.get("members", []):
                if m["id"] == node.id:
                    continue
                samples += 1
                key = (node.id, m["id"])
                if not m["up"]:
                    suspected += 1
                    if previous.get(key, True):
                        events.append((round(t, 2), node.id, m["id"]))
                previous[key] = m["up"]
        time.sleep(0.1)
    for p in spinners:
        p.join()
    bench.send_signal(signal.SIGINT)
    try:
        bench.wait(timeout=30)
    except subprocess.TimeoutExpired:
        bench.kill()
    return {"samples": samples, "suspected_samples": suspected, "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--soak", type=float, default=30.0)
    parser.add_argument("--pauses", default="0.5,1,1.5,2.5")
    parser.add_argument("--gossip-interval", default=None)
    parser.add_argument("--phi-threshold", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    extra = []
    if args.gossip_interval:
        extra += ["--gossip-interval", args.gossip_interval]
    if args.phi_threshold:
        extra += ["--phi-threshold", args.phi_threshold]
    result: dict = {"nodes": args.nodes, "settings": extra or "defaults", "kills": []}
    for i in range(args.kills):
        run = kill_run(args.nodes, extra, warmup=5)
        result["kills"].append(run)
        print(f"kill {i + 1}: first peer {run['first_s']} s, last {run['last_s']} s",
              flush=True)
    if args.soak > 0:
        cluster = start(args.nodes, extra)
        try:
            time.sleep(3)
            before = marked_down_events(cluster)
            soak = under_load(cluster, args.soak)
            after = marked_down_events(cluster)
        finally:
            cluster.stop()
        pairs = args.nodes * (args.nodes - 1)
        flaps = int(sum(after.values()) - sum(before.values()))
        soak["false_positive_events"] = flaps
        soak["events_per_pair_hour"] = round(flaps / pairs / (args.soak / 3600), 2)
        result["soak"] = soak
        print(f"soak {args.soak:.0f} s under kv bench + {os.cpu_count()} spinners: "
              f"{flaps} false marked_down events over {pairs} observer pairs "
              f"({soak['suspected_samples']} of {soak['samples']} sampled views suspected)",
              flush=True)
    result["pauses"] = []
    for length in [float(x) for x in args.pauses.split(",") if x]:
        cluster = start(args.nodes, extra)
        victim = cluster.nodes[-1]
        try:
            time.sleep(3)
            before = marked_down_events(cluster)

            def pause(victim=victim, length=length) -> None:
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(length)
                os.kill(victim.pid, signal.SIGCONT)

            def act(t: float, pause=pause) -> None:
                if 2 <= t < 3:
                    threading.Thread(target=pause).start()

            run = under_load(cluster, 8.0, act)
            after = marked_down_events(cluster)
        finally:
            cluster.stop()
        by_peers = int(sum(after[n] - before[n] for n in after if n != victim.id))
        by_victim = int(after[victim.id] - before[victim.id])
        result["pauses"].append({"pause_s": length, "peers_marked_it_down": by_peers,
                                 "it_marked_others_down": by_victim,
                                 "sampled_events": run["events"]})
        print(f"pause {length:g} s under load: peers marked {victim.id} down {by_peers} "
              f"time(s); after resuming it marked others down {by_victim} time(s)",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
