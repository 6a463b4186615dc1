"""The neuroglancer view of a pipeline: raw, affinities, fragments and segments, served locally.

``python -m volara_assets.viewer PIPELINE.yaml`` (``make view``) serves
the view on http://127.0.0.1:PORT/v/PIPELINE_NAME/ until interrupted. The
neuroglancer client (JavaScript, WebAssembly) comes from the ``neuroglancer``
wheel and the volumes from the pipeline's zarr arrays, both through the same
local server: nothing is downloaded. The view has a fixed address (port and
token), so a link to it stays valid while it is served, e.g. the ``viewer``
link in each ``segments`` partition's metadata in the Dagster UI
(:func:`block_url` puts the block's centre in the URL).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import neuroglancer

from .config import PipelineConfig
from .geometry import BlockGrid
from .runtime.bound import BoundPipeline
from .storage.arrays import VolumeArray, open_array

__all__ = ["DEFAULT_PORT", "block_url", "open_viewer", "view_state", "viewer_url"]

#: Port of ``make view``, and of the links in the Dagster UI.
DEFAULT_PORT = 9015
HOST = "127.0.0.1"

# Affinities: channels 0..2 (z, y, x offsets) as red, green, blue.
_AFFINITIES_SHADER = """
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)),
               toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""
# Raw: grey; of a multi-channel image, the first channel.
_RAW_SHADER = """
void main() {
  emitGrayscale(toNormalized(getDataValue(%s)));
}
"""


def viewer_url(name: str, host: str = HOST, port: int = DEFAULT_PORT) -> str:
    """The address of pipeline ``name``'s view as :func:`open_viewer` serves it."""
    return f"http://{host}:{port}/v/{urllib.parse.quote(name)}/"


def _layers(config: PipelineConfig) -> dict[str, tuple[str, str]]:
    """Layer name -> (array path, volume type), in drawing order; only arrays that exist."""
    arrays = {
        "raw": (config.raw, "image"),
        "affinities": (config.affinities, "image"),
        "fragments": (config.fragments_array, "segmentation"),
        "segments": (config.segments_array, "segmentation"),
    }
    return {k: (p, t) for k, (p, t) in arrays.items() if p is not None and Path(p).exists()}


def _source(array: VolumeArray, grid: BlockGrid, units: str, token: str):
    """A neuroglancer volume over ``array``, read lazily, chunk by chunk, from zarr."""
    names, scales, unit = ["z", "y", "x"], list(array.voxel_size), [units] * 3
    origin = list(grid.voxel_origin)
    if array.channel_dims:
        # "c^": a channel axis the shader reads with getDataValue(i), not a position.
        names, scales, unit = ["c^", *names], [1, *scales], ["", *unit]
        origin = [0, *origin]
    volume = neuroglancer.LocalVolume(
        data=array.zarr_array,
        dimensions=neuroglancer.CoordinateSpace(names=names, units=unit, scales=scales),
        voxel_offset=origin,
    )
    # A fixed token (the layer's name) instead of a random one: the volume's URL,
    # python://volume/PIPELINE.LAYER, is then known without the server (block_url).
    volume.token = token
    return volume


def view_state(
    config: PipelineConfig,
    grid: BlockGrid,
    *,
    position: Sequence[float] | None = None,
    served: bool = False,
    layout: str = "xy",
    units: str = "nm",
) -> neuroglancer.ViewerState:
    """The view of ``config``'s pipeline: raw (if configured), affinities, fragments, segments.

    Parameters
    ----------
    position : (3,) float, optional
        Centre of the view in world voxel units (z, y, x); default the volume's centre.
    served : bool
        Sources are volumes this process serves (``True``, for :func:`open_viewer`)
        or their ``python://volume/...`` URLs on the server of ``make view``.
    layout : str
        Neuroglancer layout, e.g. ``"xy"`` (one section) or ``"4panel"``.
    """
    state = neuroglancer.ViewerState()
    state.dimensions = neuroglancer.CoordinateSpace(
        names=["z", "y", "x"], units=[units] * 3, scales=list(grid.voxel_size)
    )
    # x across, y down: the xy section of the (z, y, x) arrays.
    state.display_dimensions = ["x", "y", "z"]
    layers = _layers(config)
    for name, (path, kind) in layers.items():
        source: Any = (
            _source(open_array(path), grid, units, name)
            if served
            else f"python://volume/{config.name}.{name}"
        )
        if kind == "segmentation":
            state.layers[name] = neuroglancer.SegmentationLayer(source=source)
            # Fragments are one click away; shown with the segments they would hide them.
            state.layers[name].visible = name == "segments" or "segments" not in layers
        else:
            channels = open_array(path).channel_dims
            shader = (
                _AFFINITIES_SHADER
                if name == "affinities"
                else _RAW_SHADER % ("0" if channels else "")
            )
            state.layers[name] = neuroglancer.ImageLayer(
                source=source,
                shader=shader,
                opacity=0.5 if name == "affinities" and "raw" in layers else 1.0,
            )
    state.position = [float(c) for c in (position or grid.volume_centre)]
    # Zoom, in voxels per screen pixel: the xy section spans about 700 pixels.
    state.cross_section_scale = max(grid.shape[1:]) / 700
    state.layout = layout
    return state


def block_url(
    config: PipelineConfig,
    grid: BlockGrid,
    partition: str,
    host: str = HOST,
    port: int = DEFAULT_PORT,
) -> str:
    """A link to the view of ``config``'s pipeline centred on ``partition``'s blocks.

    The whole view goes in the URL's fragment (neuroglancer's ``#!`` state), its
    volumes on the server of ``make view``: that must be running for the link to
    show data.
    """
    state = view_state(config, grid, position=grid.partition_centre(partition))
    return neuroglancer.to_url(state, prefix=viewer_url(config.name, host, port))


def open_viewer(
    config: PipelineConfig,
    *,
    host: str = HOST,
    port: int = DEFAULT_PORT,
    layout: str = "xy",
) -> neuroglancer.Viewer:
    """Serve the view of ``config``'s pipeline (see :func:`view_state`) on ``host:port``.

    ``host`` is 127.0.0.1 by default (local only); ``port=0`` picks a free port
    (then the links in the Dagster UI, made for :data:`DEFAULT_PORT`, do not
    match). Returns the viewer; ``viewer.get_viewer_url()`` is
    ``viewer_url(config.name, host, port)``.
    """
    grid = BoundPipeline(config).grid
    neuroglancer.set_server_bind_address(host, port)
    viewer = neuroglancer.Viewer(token=config.name)
    viewer.set_state(view_state(config, grid, served=True, layout=layout))
    return viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volara_assets.viewer")
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    config = PipelineConfig.from_yaml(args.pipeline)
    viewer = open_viewer(config, host=args.host, port=args.port)
    print(f"neuroglancer view of {config.name}: {viewer.get_viewer_url()}", flush=True)
    print("(serving until interrupted, Ctrl-C)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
