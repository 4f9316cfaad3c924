"""Run data-path simulation seeds from the command line.

    .venv/bin/python -m tests.sim.datapath.run --seed 123 --verbose   # config, history, verdict
    .venv/bin/python -m tests.sim.datapath.run --seeds 0:200          # a range, one line each
    .venv/bin/python -m tests.sim.datapath.run --seed 123 --long      # a seed of the long run

Exit status 1 when a seed violated an invariant no known bug explains (0 otherwise;
`--strict` counts known bugs too).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[2]
if str(_TESTS) not in sys.path:  # simkit lives in tests/
    sys.path.insert(0, str(_TESTS))

from .sim import KNOWN_CAUSES, Result, run_seed  # noqa: E402


def replay_command(seed: int, long: bool = False) -> str:
    extra = " --long" if long else ""
    return f".venv/bin/python -m tests.sim.datapath.run --seed {seed}{extra} --verbose"


def summary(r: Result) -> str:
    s = r.stats
    causes = sorted({c or "UNEXPLAINED" for _, c in r.explained})
    verdict = "ok" if r.ok else "FAIL " + ",".join(
        sorted({v.invariant for v, _ in r.explained})) + f" ({'; '.join(causes)})"
    return (f"seed {r.scenario.seed}: {verdict}  ops={s['ops']} writes={s['writes']} "
            f"acked={s['acked']} crashes={s.get('crashes', 0)} losses={s['losses']} "
            f"refusals={s['refusals']} purged={s.get('purged', 0)} hints={s.get('hints', 0)} "
            f"rounds={s.get('repair_rounds', 0)}"
            + (f" fenced={s.get('fenced_writes', 0)} fenced_refused="
               f"{s.get('fenced_refused', 0)} fenced_out={s.get('fenced_out_final', 0)}"
               if r.scenario.fencing else "")
            + f" digest={r.digest}")


def report(r: Result, verbose: bool) -> str:
    lines = [f"scenario: {r.scenario.describe()}", summary(r)]
    if r.reused_dots:
        lines.append(f"dots minted twice: {r.reused_dots}")
    keys = sorted({v.key for v, _ in r.explained})
    for v, cause in r.explained:
        lines.append(f"VIOLATION [{cause or 'unexplained'}] {v.describe()}")
    if verbose:
        lines.append("history:")
        lines.append(r.history.describe())
    elif keys:
        for key in keys:
            lines.append(f"history of {key}:")
            lines.append(r.history.describe(key))
    if not r.ok:
        lines.append(f"replay: {replay_command(r.scenario.seed, r.scenario.long)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", help="a range START:END")
    p.add_argument("--long", action="store_true", help="scenarios of the long (slow) run")
    p.add_argument("--verbose", "-v", action="store_true", help="print the whole history")
    p.add_argument("--strict", action="store_true", help="known bugs count as failures")
    p.add_argument("--log", action="store_true", help="show the nodes' log (WARNING and up)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.log else logging.CRITICAL + 1)
    if args.seed is not None:
        seeds = [args.seed]
    elif args.seeds:
        a, b = args.seeds.split(":")
        seeds = list(range(int(a), int(b)))
    else:
        p.error("give --seed or --seeds")
    bad = 0
    started = time.process_time()
    for seed in seeds:
        r = run_seed(seed, long=args.long)
        print(report(r, args.verbose) if len(seeds) == 1 else summary(r), flush=True)
        allowed = () if args.strict else KNOWN_CAUSES
        if any(c not in allowed for _, c in r.explained):
            bad += 1
    if len(seeds) > 1:
        cpu = time.process_time() - started
        print(f"{len(seeds)} seeds, {bad} failing, {cpu:.1f} s CPU "
              f"({cpu / len(seeds) * 1000:.0f} ms per seed)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
