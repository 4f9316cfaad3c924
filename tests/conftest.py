"""Run-wide test plumbing: one worker runs every real-process test, and the run's figures.

`make test` runs pytest-xdist with two workers and `--dist loadgroup`. Every test that starts
node processes or containers (tests/integration, tests/e2e) is in one xdist group, so those
tests run one after another on one worker, as they did before: they never compete with each
other for ports, docker or the failure detectors' timing. The other worker runs the
simulations, unit, property and fuzz tests, which are pure CPU and share nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import run_summary

HERE = Path(__file__).resolve().parent
PROCESS_DIRS = (HERE / "integration", HERE / "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if any(d in path.parents for d in PROCESS_DIRS):
            item.add_marker(pytest.mark.xdist_group("processes"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the figures to the controller
        workeroutput["kv_run_summary"] = json.dumps(run_summary.export())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    figures = getattr(node, "workeroutput", {}).get("kv_run_summary")
    if figures:
        run_summary.absorb(json.loads(figures))


def pytest_terminal_summary(terminalreporter) -> None:
    run_summary.write(terminalreporter)
