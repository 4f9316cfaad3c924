"""The live dashboard in a real browser: headless Chromium (Debian's `chromium` package),
driven over the DevTools protocol. The page loads from a node, shows every member, shows
a partition under write load (PARTITIONED / DOWN, hints held for the cut-off node) and its
heal, and reacts to a node being killed, all without a reload. Screenshots are kept as
test artifacts (KV_TEST_ARTIFACTS, default: the test's tmp directory);
docs/dashboard.png is dashboard-partition.png."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import free_ports, start_cluster

from kvstore._proto import chaos_pb2, chaos_pb2_grpc
from kvstore.client import Client

pytestmark = pytest.mark.integration

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)


class Page:
    """The smallest DevTools client: one page, commands by id over a websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, what: str, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not show {what} within {timeout:.0f} s"
                                     f"; page text: {await self.eval('document.body.innerText')}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))


def states_js() -> str:
    return ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('#members tr"
            "[data-node]')].map(r => [r.dataset.node, r.dataset.state])))")


def partition(cluster, left: list[str], right: list[str], seconds: float) -> None:
    """`kv chaos partition LEFT / RIGHT` through the nodes' chaos API."""
    for side, other in ((left, right), (right, left)):
        for node in side:
            with grpc.insecure_channel(cluster.node(node).address) as channel:
                chaos_pb2_grpc.ChaosStub(channel).Inject(chaos_pb2.FaultRequest(
                    kind="partition", peers=other, duration_s=seconds,
                    note=f"{','.join(left)} / {','.join(right)}"), timeout=5)


def heal(cluster) -> None:
    for node in cluster.nodes:
        with grpc.insecure_channel(node.address) as channel:
            chaos_pb2_grpc.ChaosStub(channel).Heal(chaos_pb2.HealRequest(), timeout=5)


def write_load(endpoint: str, stop: threading.Event) -> None:
    """QUORUM writes and ONE reads through one node until stopped (errors are expected
    while a partition lasts: they are what the page shows)."""
    with Client([endpoint], timeout=2) as client:
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(Exception):
                client.put(f"load:{i}", "v", consistency="QUORUM")
                client.get(f"load:{i}", consistency="ONE")


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary (Debian package `chromium`; "
                                            ".ci/run installs it)")
def test_dashboard_shows_the_nodes_and_reacts_to_a_kill(tmp_path):
    import aiohttp

    artifacts = Path(os.environ.get("KV_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(tmp_path / "c", metrics_ports=free_ports(3), chaos=True,
                            extra_args=["--raft-voters", "n1,n2,n3"], raft_bootstrap=True)
    with Client(cluster.endpoints(), timeout=5) as client:  # before the storage census
        for i in range(6):
            client.put(f"dash:{i}", "v", consistency="ALL")
        seen = client.get("dash:0", consistency="ALL")
        client.delete("dash:0", context=seen.context, consistency="ALL")
    debug_port = free_ports(1)[0]
    browser = subprocess.Popen(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1300,900", f"--remote-debugging-port={debug_port}",
         f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{cluster.node('n1').metrics_port}/"

    async def drive() -> None:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{debug_port}/json/list") as resp:
                        targets = [t for t in await resp.json() if t["type"] == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "chromium did not open its debug port"
                await asyncio.sleep(0.2)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"],
                                       max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                await page.send("Page.enable")
                await page.send("Page.navigate", url=url)
                await page.wait_for("3 of 3 nodes answering",
                                    "document.body.dataset.answering === '3'", 20)
                states = json.loads(await page.wait_for(
                    "three members up", f"(s => Object.keys(JSON.parse(s)).length === 3 && s)"
                                        f"({states_js()})", 10))
                assert states == {"n1": "up", "n2": "up", "n3": "up"}, states
                assert "leader" in await page.eval("document.getElementById('raft').innerText")
                ring = await page.eval("document.querySelectorAll('#ring path').length")
                assert ring == 3
                # storage and repair debt columns: one tombstone on every replica, some
                # bytes on disk, a repair cell that is "never" or "age s, ranges/total, keys"
                cells = json.loads(await page.wait_for(
                    "storage cells", "(c => c.every(r => r[0] !== '' && r[1] !== '') && "
                    "JSON.stringify(c))([...document.querySelectorAll('#members tr"
                    "[data-node]')].map(r => [r.querySelector('.tombstones').innerText, "
                    "r.querySelector('.disk').innerText, r.querySelector('.repair')"
                    ".innerText]))", 20))
                assert [c[0] for c in cells] == ["1", "1", "1"], cells
                for _, disk, repair in cells:
                    assert re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", disk), disk
                    assert repair == "never" or re.fullmatch(r"\d+ s, \d+/\d+, \d+", repair)
                await page.screenshot(artifacts / "dashboard-healthy.png")
                # a partition under load: n3 cut from n1 and n2; writes through n1 leave
                # hints for n3 (docs/dashboard.png is this screenshot)
                partition(cluster, ["n1", "n2"], ["n3"], seconds=60)
                stop = threading.Event()
                load = threading.Thread(target=write_load, daemon=True,
                                        args=(cluster.node("n1").address, stop))
                load.start()
                try:
                    await page.wait_for("the partition", f"(s => s.n1 === 'partitioned' && "
                                        f"s.n2 === 'partitioned' && s.n3 === 'suspect')"
                                        f"(JSON.parse({states_js()}))", 20)
                    hints = "document.querySelector('#members tr[data-node=n3]').cells[4]"
                    await page.wait_for("hints held for n3", f"Number({hints}.innerText) > 20",
                                        20)
                    text = await page.eval("document.body.innerText")
                    assert "PARTITIONED" in text and "marked down by n1,n2" in text, text
                    assert "cut from n1,n2" in await page.eval(
                        "document.getElementById('faults').innerText")
                    await asyncio.sleep(3)  # a few seconds of load in the sparklines
                    await page.screenshot(artifacts / "dashboard-partition.png")
                finally:
                    stop.set()
                    load.join(timeout=10)
                    heal(cluster)
                await page.wait_for("every member up after the heal", f"Object.values(JSON"
                                    f".parse({states_js()})).every(s => s === 'up')", 30)
                cluster.kill("n3", signal.SIGKILL)
                killed = time.monotonic()
                await page.wait_for("n3 down", f"JSON.parse({states_js()}).n3 === 'down'", 15)
                print(f"\ndashboard showed n3 down {time.monotonic() - killed:.1f} s after the "
                      "kill")
                assert json.loads(await page.eval(states_js()))["n1"] == "up"
                assert await page.eval("document.body.dataset.answering") == "2"
                await page.screenshot(artifacts / "dashboard-n3-killed.png")

    try:
        asyncio.run(drive())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(timeout=10)
        cluster.stop()
    assert (artifacts / "dashboard-n3-killed.png").stat().st_size > 10_000
