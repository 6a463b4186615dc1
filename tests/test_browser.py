"""A real browser: headless Chromium renders the asset graph served by ``dagster-webserver``.

Chromium is Debian's ``chromium`` package (``make test`` installs it through
``make browser``); it is driven through the DevTools protocol with a few lines
of ``websockets`` (installed with dagster-webserver). The test materializes the
pipeline first, so the graph shows real state and the partition pages carry
their thumbnails. ``VOLARA_SCREENSHOT=docs/asset_graph.png`` (``make
screenshot``) also saves the picture of the asset graph used by the README.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    STEPS,
    build_defs,
    build_pipeline,
    dagster_bin,
    free_port,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import DagsterInstance, materialize
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
ASSETS = ("affinities", "fragments", "fragment_nodes", "edges", "lut", "segments")


@pytest.fixture(autouse=True, scope="module")
def _chromium_installed() -> None:
    # `make test` installs it; a missing browser is a failed set-up, not a reason to skip.
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run `make browser` (as root)"


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process this test started (its own session): SIGTERM, then SIGKILL its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 760) -> None:
        self.width, self.height = width, height
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        port = None
        for line in self.proc.stderr:  # Chromium prints its DevTools address first
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                port = match.group(1)
                break
        assert port, "Chromium did not start its DevTools server"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            [page] = [t for t in json.load(r) if t["type"] == "page"]
        self._ws_url = page["webSocketDebuggerUrl"]
        self._ws: ClientConnection | None = None
        self._id = 0

    def __enter__(self) -> Chromium:
        self._ws = connect(self._ws_url, max_size=None, open_timeout=20)
        self._ws.__enter__()
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._ws is not None:
                self._ws.__exit__(*exc)
        finally:
            _stop(self.proc, timeout=10)

    def call(self, method: str, **params: Any) -> dict:
        assert self._ws is not None
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # skip events until our reply
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def open(self, url: str, until, timeout: float = 45) -> str:
        """Navigate to ``url`` and wait until ``until(page text)`` holds; the page text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.5)
            text = self.text()
            if self.dismiss_dialog(text):
                continue
            if until(text):
                return text
            assert time.monotonic() < deadline, (
                f"{url} did not render in {timeout} s:\n{text[:2000]}"
            )

    def dismiss_dialog(self, text: str | None = None) -> bool:
        """Close Dagster's first-visit "Join the community" dialog if it covers the page."""
        if "Join the Dagster community" not in (self.text() if text is None else text):
            return False
        self.js(
            "Array.from(document.querySelectorAll('button'))"
            ".filter(b => b.innerText.trim() === 'Skip').forEach(b => b.click())"
        )
        return True

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


@pytest.fixture(scope="module")
def webserver(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A webserver over a materialized pipeline; its base URL."""
    root = tmp_path_factory.mktemp("browser")
    yaml_path = write_pipeline_yaml(root / "out", demo_volume)
    home = make_dagster_home(root / "home")
    bp = build_pipeline(yaml_path)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    job = build_defs(yaml_path).resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(asset_selection=[bp.key("affinities")], instance=instance).success
    keys = bp.partition_keys
    assert materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=bp.keys(*STEPS),
        resources=bp.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    ).success

    port = free_port()
    log = open(root / "webserver.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            dagster_bin("dagster-webserver"),
            "-m",
            "volara_assets.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=subprocess_env(yaml_path, home),
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "webserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "webserver.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        _stop(server)
        log.close()


def test_asset_graph_renders_in_chromium(webserver: str, tmp_path: Path) -> None:
    with Chromium(tmp_path / "profile") as browser:
        # The lineage view: every asset appears twice once rendered, in the asset
        # list and as a node of the graph (drawn by JavaScript from GraphQL data).
        text = browser.open(
            f"{webserver}/asset-groups/demo",
            until=lambda t: all(t.split().count(name) >= 2 for name in ASSETS),
        )
        assert "Global asset lineage" in text or "demo" in text
        # Let the graph settle (edges, materialization status) before the picture;
        # the first-visit dialog may open late.
        for _ in range(6):
            time.sleep(0.5)
            browser.dismiss_dialog()
        assert "Join the Dagster community" not in browser.text()
        png = browser.screenshot()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        (tmp_path / "asset_graph.png").write_bytes(png)
        target = os.environ.get("VOLARA_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "asset_graph.png", target)

        # A partition of segments: its metadata panel shows the slice thumbnail.
        browser.open(
            f"{webserver}/assets/demo/segments?view=partitions&partition=z0_y0_x0",
            until=lambda t: "preview" in t and "Metadata" in t,
        )
        deadline = time.monotonic() + 15
        while True:
            images = browser.js(
                "Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
                ".map(i => [i.naturalWidth, i.naturalHeight])"
            )
            if images:
                break
            assert time.monotonic() < deadline, "no data: image in the metadata panel"
            time.sleep(0.5)
        assert [160, 160] in images
