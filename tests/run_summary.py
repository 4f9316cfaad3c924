"""Figures a test run reports at its end (fuzz inputs tried, e2e phase timings).

Tests record into these dicts; tests/conftest.py prints them in the terminal summary. Under
pytest-xdist (`make test` runs two workers) each worker hands its figures to the controller
through `workeroutput`, since only the controller prints the summary.
"""

from __future__ import annotations

FUZZ_COUNTS: dict[str, tuple[int, float]] = {}  # target -> (inputs tried, seconds)
E2E_TIMINGS: dict[str, float] = {}  # phase -> seconds


def export() -> dict[str, dict]:
    return {"fuzz": {k: list(v) for k, v in FUZZ_COUNTS.items()}, "e2e": dict(E2E_TIMINGS)}


def absorb(figures: dict[str, dict]) -> None:
    FUZZ_COUNTS.update({k: (int(v[0]), float(v[1])) for k, v in figures.get("fuzz", {}).items()})
    E2E_TIMINGS.update(figures.get("e2e", {}))


def write(terminalreporter) -> None:
    if FUZZ_COUNTS:
        terminalreporter.section("kvstore fuzzing (atheris): inputs tried")
        total = 0
        for name, (runs, seconds) in sorted(FUZZ_COUNTS.items()):
            took = f" in {seconds:5.1f} s" if seconds else ""
            terminalreporter.write_line(f"{name:<24} {runs:>10,} inputs{took}")
            total += runs
        terminalreporter.write_line(f"{'total':<24} {total:>10,} inputs")
    if E2E_TIMINGS:
        terminalreporter.section("kvstore e2e timings")
        for name, seconds in E2E_TIMINGS.items():
            terminalreporter.write_line(f"{name:<34} {seconds:7.1f} s")
