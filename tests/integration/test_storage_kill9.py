"""kill -9 a process in the middle of a write stream: every acknowledged write survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvstore.core.ring import TOKEN_MAX, TOKEN_MIN
from kvstore.storage import SqliteEngine

REPO = Path(__file__).resolve().parents[2]

# The writer: 32 concurrent writers through AsyncStore; a key is printed only after its
# update returned (i.e. after the group commit that carried it).
CHILD = r"""
import asyncio, sys
from kvstore.storage import AsyncStore, SqliteEngine

async def main(path, sync):
    store = AsyncStore(SqliteEngine(path, sync=sync))
    out = sys.stdout

    async def writer(first):
        i = first
        while True:
            key = b"k%08d" % i
            await store.update(key, lambda cur, key=key: b"value-of-" + key)
            out.write(key.decode() + "\n")
            out.flush()
            i += 32

    await asyncio.gather(*[writer(w) for w in range(32)])

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.integration
@pytest.mark.timeout(20)
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_acknowledged_writes_survive_kill9(sync: str, tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), sync],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    acked: list[str] = []
    enough = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith(b"\n"):  # a line cut by the kill was not acknowledged
                acked.append(line.decode().strip())
                if len(acked) >= 10000:
                    enough.set()
        enough.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        enough.wait(8)  # 10,000 acks, or whatever 8 s gave on a busy machine
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: writers are still going
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 200, f"only {len(acked)} writes acknowledged in 8 s"
    print(f"\nsync={sync}: {len(acked)} acknowledged in {time.monotonic() - started:.1f}s")

    engine = SqliteEngine(path, sync=sync)
    try:
        missing = [k for k in acked if engine.get(k.encode()) != b"value-of-" + k.encode()]
        assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        stored = list(engine.scan(TOKEN_MIN - 1, TOKEN_MAX))
        assert len(stored) == engine.count() >= len(acked)
        assert all(v == b"value-of-" + k for _, k, v in stored)
    finally:
        engine.close()
