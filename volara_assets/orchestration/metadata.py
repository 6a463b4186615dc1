"""Metadata shown in the Dagster UI: inline PNG previews and the LUT's summary.

The UI renders ``MetadataValue.md`` with images from ``data:`` URIs in the
metadata panel of a materialization, so a picture travels inside the event log
and needs no file server (the PNGs come from :mod:`volara_assets.runtime.thumbnails`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from dagster import MetadataValue

from ..geometry import BlockGrid, Roi
from ..ops.relabel import relabel
from ..runtime.thumbnails import histogram_image, label_slice_image
from ..storage.handles import ArrayHandle
from ..tables import NodeTable

__all__ = ["lut_metadata", "markdown_image", "slice_preview"]


def markdown_image(png: bytes, alt: str, caption: str | None = None) -> MetadataValue:
    """Markdown metadata showing ``png`` inline (a ``data:`` URI), with an optional caption."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    text = f"![{alt}]({uri})"
    if caption:
        text += f"\n\n{caption}"
    return MetadataValue.md(text)


def slice_preview(grid: BlockGrid, handle: ArrayHandle, what: str, key: str) -> dict[str, Any]:
    """A PNG of partition ``key``'s middle z-slice of ``handle``, coloured by id."""
    roi = grid.partition_roi(key)
    z = roi.begin[0] + roi.shape[0] // 2
    section = handle.read(Roi((z, *roi.begin[1:]), (1, *roi.shape[1:])))  # type: ignore[arg-type]
    png = label_slice_image(section, grid.voxel_size)
    ids = np.unique(section)
    caption = f"z = {z} (voxels), {int(np.count_nonzero(ids))} {what} in this section"
    return {"preview": markdown_image(png, f"{what} {key}", caption)}


def lut_metadata(table: np.ndarray, nodes: NodeTable, num_edges: int) -> dict[str, Any]:
    """Counts and a histogram of segment sizes (voxels) for the LUT's materialization."""
    _, inverse = np.unique(relabel(nodes.ids, table), return_inverse=True)
    sizes = np.bincount(inverse, weights=nodes.sizes, minlength=0).astype(np.int64)
    segments = int(sizes.size)
    md: dict[str, Any] = {
        "fragments": int(table.shape[1]),
        "edges": int(num_edges),
        "segments": segments,
        "merged_fragments": int(table.shape[1]) - segments,
        "largest_segment_voxels": int(sizes.max()) if segments else 0,
        "median_segment_voxels": int(np.median(sizes)) if segments else 0,
    }
    if segments:
        md["segment_sizes"] = markdown_image(
            histogram_image(sizes),
            "segment size histogram",
            f"Segment sizes in voxels, {sizes.min()} to {sizes.max()}, log-spaced bins; "
            "bar height ~ log(1 + count).",
        )
    return md
