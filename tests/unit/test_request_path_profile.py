"""bench/request_path_profile.py charges each py-spy sample to the part its innermost
telling frame belongs to (the table in docs/benchmarks.md, "Where the CPU goes")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile():
    spec = importlib.util.spec_from_file_location(
        "request_path_profile", REPO / "bench" / "request_path_profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["request_path_profile"] = module
    spec.loader.exec_module(module)
    return module


LOOP = ("_run_module_as_main (<frozen runpy>:198);run (uvloop/__init__.py:92);"
        "Runner.run (asyncio/runners.py:118)")


def test_samples_go_to_the_innermost_frame_that_says_what_it_does(profile) -> None:
    raw = "\n".join([
        f"{LOOP} 50",  # no Python frame below the loop: uvloop / grpc's C core
        f"{LOOP};Coordinator._write (kvstore/services/coordinator.py:700);"
        "sibling_to_pb (kvstore/core/versions.py:507);"
        "fill_version (kvstore/core/versions.py:490) 20",
        f"{LOOP};Coordinator._write (kvstore/services/coordinator.py:700);"
        "sync (kvstore/core/versions.py:365) 10",
        f"{LOOP};Coordinator._gather (kvstore/services/coordinator.py:450);"
        "wait (asyncio/tasks.py:399) 5",
        f"{LOOP};UnaryUnaryCall._invoke (grpc/aio/_call.py:595) 5",
        "Thread._bootstrap (threading.py:1002);AsyncStore._write_loop "
        "(kvstore/storage/store.py:199);SqliteEngine.apply (kvstore/storage/sqlite.py:402) 8",
        f"{LOOP};Coordinator._get (kvstore/services/coordinator.py:520) 2",
        "garbage line without a count",
    ])
    shares = profile.breakdown(raw)
    assert shares["samples"] == 100
    assert shares["C: loop + gRPC core"] == pytest.approx(0.50)
    assert shares["codecs"] == pytest.approx(0.20)
    assert shares["versions"] == pytest.approx(0.10)
    assert shares["asyncio"] == pytest.approx(0.05)
    assert shares["transport"] == pytest.approx(0.05)
    assert shares["storage"] == pytest.approx(0.08)
    assert shares["request logic"] == pytest.approx(0.02)
    assert sum(shares[p] for p in profile.PARTS) == pytest.approx(1.0)


def test_thread_split_per_operation(profile) -> None:
    before = {(1, 1): ("event loop", 1.0, 0.5), (1, 2): ("storage threads", 0.2, 0.1)}
    after = {(1, 1): ("event loop", 1.5, 0.6), (1, 2): ("storage threads", 0.4, 0.1),
             (1, 3): ("grpc threads", 0.1, 0.0)}  # a thread started in between
    split = profile.thread_split(before, after, ops=1000)
    assert split["event loop"] == pytest.approx(600)
    assert split["storage threads"] == pytest.approx(200)
    assert split["grpc threads"] == pytest.approx(100)
    assert split["user"] == pytest.approx(800)
    assert split["system"] == pytest.approx(100)
