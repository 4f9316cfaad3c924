"""Run one fuzz target under atheris (libFuzzer), coverage-guided over kvstore's code.

    python tests/fuzz/run.py TARGET|all [--seconds S] [--runs N] [--seed N] [--corpus DIR]
                             [--counts FILE]
    python tests/fuzz/run.py --list

`all` fuzzes every target in one process (the first input byte picks the target), which
is what CI runs briefly: one start-up instead of one per target.
Starts from the target's seed inputs (targets.SEEDS) plus DIR's files; new interesting
inputs are added to DIR. On a crash, libFuzzer writes the input to crash-<sha1> in the
working directory and prints it; save it under tests/fuzz/regressions/TARGET/ so that
`test_fuzz.py::test_regressions` replays it for ever. libFuzzer's final stats
(`stat::number_of_executed_units`) say how many inputs were tried.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", nargs="?")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=0, help="stop after N inputs (0: time only)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--counts", type=Path, default=None,
                    help="keep a JSON file of inputs tried per target up to date")
    args = ap.parse_args()

    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # refusals are logged; millions of lines help no one

    with atheris.instrument_imports(include=["kvstore"]):
        from fuzz import targets
    names = sorted(targets.TARGETS)
    if args.list or args.target not in (*names, "all"):
        print("targets: all", " ".join(names))
        return 0 if args.list else 2
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    chosen = names if args.target == "all" else [args.target]
    for name in chosen:
        prefix = bytes([names.index(name)]) if args.target == "all" else b""
        inputs = list(targets.SEEDS[name])
        regressions = HERE / "regressions" / name
        if regressions.is_dir():
            inputs += [p.read_bytes() for p in sorted(regressions.iterdir())]
        for i, data in enumerate(inputs):
            (corpus / f"{name}-{i}").write_bytes(prefix + data)
    counts = dict.fromkeys(chosen, 0)
    last = [time.monotonic()]

    def report() -> None:
        if args.counts is not None:
            args.counts.write_text(json.dumps(counts))
        last[0] = time.monotonic()

    def one(data: bytes) -> None:
        if args.target == "all":  # the first byte picks the target
            if not data:
                return
            name, data = names[data[0] % len(names)], data[1:]
        else:
            name = args.target
        counts[name] += 1
        if time.monotonic() - last[0] > 0.2:
            report()  # libFuzzer ends the process itself: keep the file current
        targets.TARGETS[name](data)

    libfuzzer = [sys.argv[0], f"-seed={args.seed}", f"-max_total_time={max(1, int(args.seconds))}",
                 "-print_final_stats=1", "-max_len=4096", "-timeout=20", "-rss_limit_mb=1536",
                 str(corpus)]
    if args.runs:
        libfuzzer.insert(1, f"-runs={args.runs}")
    report()
    atheris.Setup(libfuzzer, one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
