"""Run-wide test plumbing: one worker runs every real-process test, and the run's figures.

`make test` runs pytest-xdist with two workers. Every test that starts node processes or
containers (tests/integration, tests/e2e) is in one work unit of the scheduler below, so
those tests run one after another on one worker, as they did before: they never compete with each
other for ports, docker or the failure detectors' timing. The other worker runs the
simulations, unit, property and fuzz tests, which are pure CPU and share nothing.
"""

from __future__ import annotations

import json

import pytest
import run_summary

PROCESS_PREFIXES = ("tests/integration/", "tests/e2e/")  # node ids, from the repository root


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Every real-process test in one work unit, so one worker runs them all in turn.

    A scheduler rather than `xdist_group` marks: with pytest 9 the marks stopped reaching
    the node ids that `--dist loadgroup` groups by (seen here: the tests of one module ran on
    both workers at once).
    """
    from xdist.scheduler import LoadScopeScheduling

    class ProcessTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "processes" if nodeid.startswith(PROCESS_PREFIXES) else nodeid

    return ProcessTestsTogether(config, log)


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
