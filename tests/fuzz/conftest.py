"""Print how many inputs each fuzz target tried (CI shows it without -s)."""

from __future__ import annotations

FUZZ_COUNTS: dict[str, tuple[int, float]] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if FUZZ_COUNTS:
        terminalreporter.section("kvstore fuzzing (atheris): inputs tried")
        total = 0
        for name, (runs, seconds) in sorted(FUZZ_COUNTS.items()):
            took = f" in {seconds:5.1f} s" if seconds else ""
            terminalreporter.write_line(f"{name:<24} {runs:>10,} inputs{took}")
            total += runs
        terminalreporter.write_line(f"{'total':<24} {total:>10,} inputs")
