"""The neuroglancer view: served on 127.0.0.1, rendered by headless Chromium, checked by its pixels.

Chromium is Debian's (``make browser``) driven as in ``tests/test_browser.py``;
the neuroglancer client comes from the ``neuroglancer`` wheel through the same
local server as the volumes. ``VOLARA_VIEWER_SCREENSHOT=path.png`` saves the
rendered view.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import neuroglancer
import numpy as np
import pytest
import zarr
from conftest import STEPS, build_pipeline, free_port, write_pipeline_yaml
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from PIL import Image
from test_browser import CHROMIUM, Chromium

from volara_assets.config import PipelineConfig
from volara_assets.orchestration.io_managers import ZarrIOManager
from volara_assets.runtime.bound import BoundPipeline
from volara_assets.viewer import block_url, open_viewer, viewer_url


@pytest.fixture(autouse=True, scope="module")
def _chromium_installed() -> None:
    # `make test` installs it; a missing browser is a failed set-up, not a reason to skip.
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run `make browser` (as root)"


@pytest.fixture(scope="module")
def pipeline(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """The demo pipeline on the small test volume, materialized (raw shown too)."""
    root = tmp_path_factory.mktemp("viewer")
    yaml_path = write_pipeline_yaml(root / "out", demo_volume)
    bp = build_pipeline(yaml_path)
    keys = bp.partition_keys
    assert materialize(
        bp.assets,
        selection=bp.keys(*STEPS),
        resources=bp.resources,
        instance=DagsterInstance.ephemeral(),
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    ).success
    return PipelineConfig.from_yaml(yaml_path).model_copy(update={"raw": str(demo_volume / "raw")})


@pytest.fixture(scope="module")
def served(pipeline: PipelineConfig) -> Iterator[tuple[neuroglancer.Viewer, int]]:
    port = free_port()
    viewer = open_viewer(pipeline, port=port)
    yield viewer, port
    neuroglancer.stop()


def colours(png: bytes, min_share: float = 0.001) -> int:
    """Flat colours of the view's panel: each covering at least ``min_share`` of it, not black.

    With only the segmentation layer visible, every segment in the section is one
    flat colour over a black background.
    """
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    panel = image[60:-60, 40:-40]  # below the layer bar, above the scale bar
    lit = panel[panel.max(axis=2) > 24].astype(np.int64)
    codes = (lit[:, 0] << 16) | (lit[:, 1] << 8) | lit[:, 2]
    _, counts = np.unique(codes, return_counts=True)
    return int((counts >= min_share * panel.shape[0] * panel.shape[1]).sum())


def segments_in_section(config: PipelineConfig, z: int) -> int:
    section = zarr.open_array(config.segments_array, mode="r")[z]
    return int(np.count_nonzero(np.unique(section)))


def render(browser: Chromium, url: str, enough: int, timeout: float = 60) -> bytes:
    """Open ``url``; the first screenshot with ``enough`` colours (or the last one)."""
    browser.call("Page.navigate", url=url)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(1.0)
        png = browser.screenshot()
        if colours(png) >= enough or time.monotonic() > deadline:
            return png


def only_segments(viewer: neuroglancer.Viewer, segments: bool = True) -> None:
    with viewer.txn() as s:
        for layer in s.layers:
            layer.visible = layer.name == "segments" and segments


def test_the_view_is_local_with_every_layer_at_the_voxel_size(
    served: tuple[neuroglancer.Viewer, int],
) -> None:
    viewer, port = served
    assert viewer.get_viewer_url() == viewer_url("demo", port=port)
    assert viewer.get_viewer_url().startswith("http://127.0.0.1:")
    with urllib.request.urlopen(viewer.get_viewer_url(), timeout=10) as r:
        page = r.read().decode()
    scripts = page.split('src="')[1:]
    assert scripts, "the page loads the neuroglancer client"
    # The client's files come from this server (the wheel), never from the network.
    assert not any(s.startswith(("http:", "https:", "//")) for s in scripts), page[:500]
    state = viewer.state.to_json()
    assert [layer["name"] for layer in state["layers"]] == [
        "raw",
        "affinities",
        "fragments",
        "segments",
    ]
    assert state["dimensions"] == {"z": [290e-9, "m"], "y": [260e-9, "m"], "x": [260e-9, "m"]}
    assert state["position"] == [12.0, 32.0, 32.0]  # the (24, 64, 64) volume's centre


def test_chromium_renders_the_segments(
    pipeline: PipelineConfig, served: tuple[neuroglancer.Viewer, int], tmp_path: Path
) -> None:
    viewer, _ = served
    expected = segments_in_section(pipeline, 12)  # the section the view opens at
    assert expected >= 5
    with Chromium(tmp_path / "profile", 1000, 760) as browser:
        if os.environ.get("VOLARA_VIEWER_SCREENSHOT"):  # every layer, as a user sees it
            png = render(browser, viewer.get_viewer_url(), enough=expected)
            Path(os.environ["VOLARA_VIEWER_SCREENSHOT"]).write_bytes(png)
        only_segments(viewer)
        shown = colours(render(browser, viewer.get_viewer_url(), enough=expected))
        only_segments(viewer, segments=False)
        time.sleep(3)  # the client redraws on the state change
        hidden = colours(browser.screenshot())
    with viewer.txn() as s:
        for layer in s.layers:
            layer.visible = layer.name != "fragments"
    # Without segments: only the grey outside the volume and its outline.
    assert hidden <= 2, hidden
    # Each segment of the section in its own colour (two may share one, rarely).
    assert shown - hidden >= 0.8 * expected, (shown, hidden, expected)


def test_a_segments_partition_links_to_its_block(
    pipeline: PipelineConfig, served: tuple[neuroglancer.Viewer, int], tmp_path: Path
) -> None:
    _, port = served
    grid = BoundPipeline(pipeline).grid
    key = "z2_y1_x0"  # z 16-24, y 32-64, x 0-32 of the (3, 2, 2) grid
    io = ZarrIOManager(pipeline_config=pipeline.model_dump_json())
    link = io.partition_metadata("segments", key, {"blocks": 1, "seconds": 0.1})["viewer"].value
    assert link == block_url(pipeline, grid, key)
    prefix, fragment = link.split("#!", 1)
    assert prefix == viewer_url("demo")  # the port of `make view`
    state = json.loads(urllib.parse.unquote(fragment))
    assert state["position"] == [20.0, 48.0, 16.0]
    assert [layer["name"] for layer in state["layers"]][-1] == "segments"

    # Served on another port here; the same link there opens at the block, with data.
    with Chromium(tmp_path / "profile", 1000, 760) as browser:
        png = render(browser, block_url(pipeline, grid, key, port=port), enough=20)
        href = browser.js("location.href")
    assert json.loads(urllib.parse.unquote(href.split("#!", 1)[1]))["position"] == [20, 48, 16]
    # Raw, affinities and segments drawn (the link's view has no Python state, only data).
    assert colours(png) >= 20
