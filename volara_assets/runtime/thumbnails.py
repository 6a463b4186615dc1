"""Small pictures of results as PNG bytes: label slices coloured by id, histograms.

PNGs are encoded here with ``zlib`` (no imaging dependency) and kept small, a
few KB each, because the Dagster layer embeds them in event metadata
(:mod:`volara_assets.orchestration.metadata`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "encode_png",
    "histogram_image",
    "label_colors",
    "label_slice_image",
]

#: Thumbnails are at most this many pixels along their longer side.
MAX_SIDE = 160


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an image as PNG (8-bit RGB, no interlace).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array

    Returns
    -------
    bytes
        A complete PNG file.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb: expected a non-empty (H, W, 3) array, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    # Filter type 0 (None) before every scanline.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def label_colors(labels: np.ndarray) -> np.ndarray:
    """A stable colour per label id; 0 (background) is black.

    Parameters
    ----------
    labels : (...) integer array

    Returns
    -------
    (..., 3) uint8 array
        The same id gets the same colour in every block and every run, so
        neighbouring thumbnails of one object match.
    """
    ids = np.asarray(labels).astype(np.uint64)
    # SplitMix64 finaliser: neighbouring ids get unrelated colours.
    with np.errstate(over="ignore"):
        h = ids + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1)
    # Keep colours away from black so that background stays distinct.
    rgb = (64 + rgb.astype(np.uint16) * 191 // 255).astype(np.uint8)
    rgb[ids == 0] = 0
    return rgb


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour resize so that the longer side is close to ``max_side``."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest > max_side:
        step = -(-longest // max_side)
        return image[::step, ::step]
    factor = max(1, max_side // longest)
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def label_slice_image(
    labels: np.ndarray, voxel_size: Sequence[int] = (1, 1, 1), max_side: int = MAX_SIDE
) -> bytes:
    """PNG of the middle z-slice of a label block, coloured by id.

    Parameters
    ----------
    labels : (Z, Y, X) integer array
    voxel_size : (3,) int
        Only the y/x ratio matters: anisotropic pixels are stretched to square.
    max_side : int
        Longest side of the picture in pixels (nearest-neighbour scaling).

    Returns
    -------
    bytes
        PNG file content.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty (Z, Y, X) array, got {labels.shape}")
    section = labels[labels.shape[0] // 2]
    vy, vx = int(voxel_size[1]), int(voxel_size[2])
    if vy != vx:
        ry, rx = max(1, round(vy / min(vy, vx))), max(1, round(vx / min(vy, vx)))
        section = np.repeat(np.repeat(section, ry, axis=0), rx, axis=1)
    return encode_png(_fit(label_colors(section), max_side))


def histogram_image(
    values: np.ndarray, bins: int = 24, size: tuple[int, int] = (120, 240)
) -> bytes:
    """PNG bar chart of a positive quantity on log-spaced bins (e.g. segment sizes).

    Parameters
    ----------
    values : (N,) positive numbers
    bins : int
        Number of log-spaced bins between the smallest and largest value.
    size : (height, width)
        Picture size in pixels.

    Returns
    -------
    bytes
        PNG file content: white background, one dark bar per bin, bar height
        proportional to ``log(1 + count)`` so that rare large values stay visible.
    """
    height, width = size
    image = np.full((height, width, 3), 255, np.uint8)
    values = np.asarray(values, dtype=np.float64)
    values = values[values > 0]
    if values.size:
        lo, hi = values.min(), values.max()
        edges = np.geomspace(lo, hi * 1.000001, bins + 1) if hi > lo else np.array([lo, lo + 1])
        counts, _ = np.histogram(values, edges)
        scale = np.log1p(counts) / max(np.log1p(counts).max(), 1e-9)
        bar = width // len(counts)
        for i, s in enumerate(scale):
            top = height - 1 - int(round(s * (height - 2)))
            image[top : height - 1, i * bar : (i + 1) * bar - 1] = (40, 70, 140)
    image[height - 1, :] = 0  # the x axis
    return encode_png(image)
