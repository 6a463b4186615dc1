"""Deterministic synthetic stand-in for the volara tutorial's cells3d container.

The volara tutorial builds its demo data from scikit-image's ``cells3d`` (a
download); here nothing may be fetched at run time, so this module generates a
volume with the same ingredients from a seed:

* ``labels``: touching, cell-like objects with some extracellular background,
* ``raw``: a 2-channel image (membrane, cytoplasm/nucleus),
* ``mask``: the foreground,
* ``affs``: perfect nearest-neighbour affinities of ``labels``,
* ``affs_noisy``: the same with noise and blur, a stand-in for a network's prediction.

Cells are grown as an anisotropic, multiplicatively weighted Voronoi partition of
jittered grid seeds, with a smooth displacement field that bends the faces, so
most cells share faces with their neighbours. Background comes from three
sources: absent cells (extracellular pockets), cells that do not reach the far
corners of their Voronoi region, and thin gaps between a random subset of
neighbouring cells.

Run ``python -m volara_assets.demo --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np
import zarr
from scipy import ndimage as ndi

from volara_assets.geometry import Roi, as_coord
from volara_assets.ops.affinities import seg_to_affgraph
from volara_assets.storage.arrays import create_array

__all__ = [
    "DEMO_ARRAYS",
    "DEMO_VOXEL_SIZE",
    "NEIGHBORHOOD",
    "DemoParams",
    "default_chunks",
    "make_volume",
    "write_demo",
    "main",
]

#: Voxel size (z, y, x) in nm of the tutorial data.
DEMO_VOXEL_SIZE: tuple[int, int, int] = (290, 260, 260)
#: Offsets of the affinity channels (``affs`` and ``affs_noisy``).
NEIGHBORHOOD: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
#: Arrays written by :func:`write_demo`, in writing order.
DEMO_ARRAYS: tuple[str, ...] = ("raw", "labels", "mask", "affs", "affs_noisy")
#: Root attribute of the container holding the generator parameters.
ATTRS_KEY = "volara_assets_demo"


@dataclass(frozen=True)
class DemoParams:
    """Parameters of the generator, all but ``shape`` and ``seed`` tuned defaults.

    Parameters
    ----------
    shape : tuple of int
        ``(z, y, x)`` shape of the volume in voxels.
    seed : int
        Seed of every random draw; the same parameters give identical arrays.
    cell_spacing : float
        Seed grid spacing in y/x voxels; a cell is about this wide in y/x.
    z_stretch : float
        Factor applied to z before distances are measured, so cells are about
        ``cell_spacing / z_stretch`` voxels tall (flat cells, as in the tutorial).
    jitter : float
        Seed displacement from its grid cell centre, as a fraction of the spacing.
    absent_fraction : float
        Fraction of seeds whose region becomes extracellular background.
    reach : float
        A cell covers its region up to this (metric) distance from its seed, in
        units of ``cell_spacing``; the rest of its region is background.
    gap_fraction : float
        Fraction of neighbouring cell pairs separated by a thin background gap.
    gap_width : float
        Width of those gaps, in units of ``cell_spacing`` (of the distance difference).
    warp : float
        Standard deviation, in y/x voxels, of the smooth displacement bending cell faces.
    min_size : int
        Objects (after keeping their largest 6-connected piece) smaller than this
        many voxels become background.
    nucleus_radius : float
        Metric radius of the bright nucleus in ``raw`` channel 1, units of ``reach``.
    aff_noise_sigma : float
        Standard deviation of the Gaussian noise added to the 0/1 affinities.
    aff_blur_sigma : float
        Spatial Gaussian blur (voxels) applied after the noise, per channel.
    raw_noise_sigma : float
        Standard deviation (grey values) of the noise in ``raw``.

    Notes
    -----
    At the default shape and seed 0: 335 objects, 24.8% background, median
    object extent (14, 39, 39) voxels (10th-90th percentile z 6-21, y/x 15-50),
    98% of objects share a face with another object (947 touching pairs). At
    (128, 512, 512): 2302 objects, 25.0% background.

    The affinity noise was tuned with mutex watershed on the direct offsets with
    bias -0.5 over the whole default volume (``ops.fragments.extract_fragments``,
    scored with ``ops.metrics.evaluate``): ``affs`` give the labels exactly;
    ``affs_noisy`` (noise 0.3, blur 0.5) agree with ``affs`` on 99.2% of edges
    when thresholded at 0.5 and give VOI split 0.009, merge 0.096, adapted Rand
    error 0.05, 1145 segments for 335 objects: right in the large, with small
    splinters and a few merges. Blurs of 0.6 and more turn one-voxel object
    faces (0 between two 1s) into values above 0.5, and neighbouring cells then
    merge wholesale (VOI merge > 2); noise 0.4 at blur 0.5 doubles VOI.
    """

    shape: tuple[int, int, int] = (60, 256, 256)
    seed: int = 0
    cell_spacing: float = 36.0
    z_stretch: float = 2.7
    jitter: float = 0.6
    absent_fraction: float = 0.08
    reach: float = 0.64
    gap_fraction: float = 0.2
    gap_width: float = 0.05
    warp: float = 2.5
    min_size: int = 300
    nucleus_radius: float = 0.45
    aff_noise_sigma: float = 0.3
    aff_blur_sigma: float = 0.5
    raw_noise_sigma: float = 12.0

    def to_json(self) -> dict[str, object]:
        """Return the parameters as JSON-compatible values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def _as_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int, int]:
    return as_coord(shape, name, minimum=1)


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """Spatial chunk shape used by :func:`write_demo` when none is given.

    No chunk shape useful for I/O divides both block sizes users pick for the
    demo, (20, 100, 100) and (32, 128, 128), so inputs are chunked per size: the
    tutorial-sized volume gets (20, 100, 100), larger ones (32, 128, 128).

    Parameters
    ----------
    shape : sequence of int
        ``(z, y, x)`` shape of the volume.

    Returns
    -------
    tuple of int
        ``(20, 100, 100)`` if every axis is at most ``(60, 256, 256)``, else
        ``(32, 128, 128)``; each entry is capped at the volume's extent.
    """
    shape = _as_shape(shape)
    small = all(s <= d for s, d in zip(shape, (60, 256, 256), strict=True))
    chunks = (20, 100, 100) if small else (32, 128, 128)
    return tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))  # type: ignore[return-value]


# --------------------------------------------------------------------------- labels


@numba.njit(nogil=True, cache=True)
def _grow_cells(
    z_begin: int,
    z_end: int,
    shape: tuple[int, int, int],
    z_stretch: float,
    spacing: float,
    grid: tuple[int, int, int],
    seed_pos: np.ndarray,
    seed_metric: np.ndarray,
    seed_present: np.ndarray,
    seed_tag: np.ndarray,
    disp: np.ndarray,
    disp_step: np.ndarray,
    reach: float,
    gap_width: float,
    gap_threshold: int,
    labels: np.ndarray,
    dist: np.ndarray,
) -> None:
    # Seeds live on a grid padded by one cell each side; a voxel competes only
    # among the 27 seeds around its own grid cell, which keeps the cost linear.
    gz, gy, gx = grid[0], grid[1], grid[2]
    nz, ny, nx = shape
    cz, cy, cx = disp.shape[1], disp.shape[2], disp.shape[3]
    for z in range(z_begin, z_end):
        fz = z / disp_step[0]
        iz = min(int(fz), cz - 2)
        tz = fz - iz
        for y in range(ny):
            fy = y / disp_step[1]
            iy = min(int(fy), cy - 2)
            ty = fy - iy
            for x in range(nx):
                fx = x / disp_step[2]
                ix = min(int(fx), cx - 2)
                tx = fx - ix
                q0 = z * z_stretch
                q1 = float(y)
                q2 = float(x)
                for a in range(3):
                    c00 = disp[a, iz, iy, ix] * (1 - tx) + disp[a, iz, iy, ix + 1] * tx
                    c01 = disp[a, iz, iy + 1, ix] * (1 - tx) + disp[a, iz, iy + 1, ix + 1] * tx
                    c10 = disp[a, iz + 1, iy, ix] * (1 - tx) + disp[a, iz + 1, iy, ix + 1] * tx
                    c11 = (
                        disp[a, iz + 1, iy + 1, ix] * (1 - tx)
                        + disp[a, iz + 1, iy + 1, ix + 1] * tx
                    )
                    c0 = c00 * (1 - ty) + c01 * ty
                    c1 = c10 * (1 - ty) + c11 * ty
                    shift = c0 * (1 - tz) + c1 * tz
                    if a == 0:
                        q0 += shift
                    elif a == 1:
                        q1 += shift
                    else:
                        q2 += shift
                kz = min(max(int(math.floor(q0 / spacing)) + 1, 1), gz - 2)
                ky = min(max(int(math.floor(q1 / spacing)) + 1, 1), gy - 2)
                kx = min(max(int(math.floor(q2 / spacing)) + 1, 1), gx - 2)
                best = np.inf
                second = np.inf
                best_i = -1
                second_i = -1
                for sz in range(kz - 1, kz + 2):
                    for sy in range(ky - 1, ky + 2):
                        for sx in range(kx - 1, kx + 2):
                            i = (sz * gy + sy) * gx + sx
                            d0 = q0 - seed_pos[i, 0]
                            d1 = q1 - seed_pos[i, 1]
                            d2 = q2 - seed_pos[i, 2]
                            # Upper triangle of the seed's symmetric metric.
                            u2 = (
                                seed_metric[i, 0] * d0 * d0
                                + seed_metric[i, 1] * d1 * d1
                                + seed_metric[i, 2] * d2 * d2
                                + seed_metric[i, 3] * d0 * d1
                                + seed_metric[i, 4] * d0 * d2
                                + seed_metric[i, 5] * d1 * d2
                            )
                            if u2 < best:
                                second = best
                                second_i = best_i
                                best = u2
                                best_i = i
                            elif u2 < second:
                                second = u2
                                second_i = i
                u1 = math.sqrt(best)
                dist[z, y, x] = u1
                label = best_i + 1
                if not seed_present[best_i] or u1 > reach:
                    label = 0
                elif second_i >= 0 and math.sqrt(second) - u1 < gap_width:
                    # Symmetric in the pair, so both sides of a face agree.
                    if (seed_tag[best_i] + seed_tag[second_i]) % 1000 < gap_threshold:
                        label = 0
                labels[z, y, x] = label


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    # QR of a Gaussian matrix with the sign fix gives Haar-distributed rotations.
    g = rng.standard_normal((n, 3, 3))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q


def _seed_grid(
    params: DemoParams, rng: np.random.Generator
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = params.cell_spacing
    extent = (params.shape[0] * params.z_stretch, params.shape[1], params.shape[2])
    grid = tuple(int(math.ceil(e / s)) + 2 for e in extent)
    n = math.prod(grid)
    centres = (np.stack(np.indices(grid), axis=-1) - 1 + 0.5) * s
    pos = centres + (rng.random((*grid, 3)) - 0.5) * params.jitter * s
    # Each cell gets its own ellipsoidal metric (random orientation, axes 0.8-1.25)
    # and size (0.85-1.15), so faces are curved and cells are not all alike.
    rot = _random_rotations(rng, n)
    axes = rng.uniform(0.8, 1.25, (n, 3)) * rng.uniform(0.85, 1.15, (n, 1)) * s
    metric = np.einsum("nij,nj,nkj->nik", rot, 1.0 / axes**2, rot)
    upper = np.stack(
        [
            metric[:, 0, 0],
            metric[:, 1, 1],
            metric[:, 2, 2],
            2 * metric[:, 0, 1],
            2 * metric[:, 0, 2],
            2 * metric[:, 1, 2],
        ],
        axis=1,
    )
    present = rng.random(n) >= params.absent_fraction
    tag = rng.integers(0, 1000, n).astype(np.int64)
    return grid, np.ascontiguousarray(pos.reshape(n, 3)), upper, present, tag


def _displacement(params: DemoParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # A coarse Gaussian random field, interpolated per voxel in the kernel: faces
    # bend on the scale of a cell without making the partition jagged.
    step = np.array([4.0, 8.0, 8.0])
    coarse = tuple(int(math.ceil(n / st)) + 2 for n, st in zip(params.shape, step, strict=True))
    field = rng.standard_normal((3, *coarse))
    field = ndi.gaussian_filter(field, sigma=(0, 1.5, 1.5, 1.5), mode="wrap")
    std = field.std(axis=(1, 2, 3), keepdims=True)
    field = field / np.where(std > 0, std, 1.0) * params.warp
    field[0] *= params.z_stretch
    return np.ascontiguousarray(field), step


def _keep_largest_pieces(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Keep each object's largest 6-connected piece; drop objects < ``min_size``."""
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        obj = labels[box] == index + 1
        pieces, n = ndi.label(obj)
        if n > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            stray = obj & (pieces != np.argmax(sizes))
            labels[box][stray] = 0
            size = int(sizes.max())
        else:
            size = int(obj.sum())
        if size < min_size:
            labels[box][labels[box] == index + 1] = 0
    return labels


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    present = np.bincount(labels.ravel(), minlength=1) > 0
    present[0] = False
    n = int(present.sum())
    dtype = np.uint8 if n < 2**8 else np.uint16 if n < 2**16 else np.uint32
    lut = np.zeros(present.size, dtype=dtype)
    lut[present] = np.arange(1, n + 1, dtype=dtype)
    return lut[labels]


def _make_labels(params: DemoParams) -> tuple[np.ndarray, np.ndarray]:
    seeds_rng, warp_rng = (np.random.default_rng(s) for s in _streams(params.seed)[:2])
    grid, pos, metric, present, tag = _seed_grid(params, seeds_rng)
    disp, step = _displacement(params, warp_rng)
    labels = np.empty(params.shape, dtype=np.int32)
    dist = np.empty(params.shape, dtype=np.float32)
    # A plain (nogil) kernel run on z-slabs in threads compiles much faster than
    # numba's parallel=True, which matters on a fresh checkout.
    slabs = max(1, min(params.shape[0], 4 * (os.cpu_count() or 1)))
    bounds = np.linspace(0, params.shape[0], slabs + 1).astype(int)

    def grow(i: int) -> None:
        _grow_cells(
            int(bounds[i]),
            int(bounds[i + 1]),
            params.shape,
            float(params.z_stretch),
            float(params.cell_spacing),
            grid,
            pos,
            metric,
            present,
            tag,
            disp,
            step,
            float(params.reach),
            float(params.gap_width),
            int(round(params.gap_fraction * 1000)),
            labels,
            dist,
        )

    _in_threads(grow, slabs)
    labels = _keep_largest_pieces(labels, params.min_size)
    return _relabel_consecutive(labels), dist


def _streams(seed: int) -> list[np.random.SeedSequence]:
    # Independent streams per ingredient: tuning the noise never moves the cells.
    return np.random.SeedSequence(int(seed)).spawn(4)


# --------------------------------------------------------------------------- images


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from a 6-neighbour's (both sides of each face)."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.rint(image, out=image) if image.dtype.kind == "f" else image
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def _in_threads(fn: Callable[[int], None], n: int) -> None:
    # scipy.ndimage and numpy's generators release the GIL, so per-channel work
    # runs in parallel; each task writes its own channel, so the result does not
    # depend on scheduling.
    workers = max(1, min(n, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(fn, i) for i in range(n)]:
            future.result()


def _make_raw(
    labels: np.ndarray, dist: np.ndarray, params: DemoParams, seed: np.random.SeedSequence
) -> np.ndarray:
    raw = np.empty((2, *labels.shape), dtype=np.uint8)
    rngs = [np.random.default_rng(s) for s in seed.spawn(2)]
    sigma = (0.6, 1.0, 1.0)

    def channel(c: int) -> None:
        if c == 0:
            # Membrane: bright on every object boundary, including the cell surface.
            image = ndi.gaussian_filter(_boundaries(labels).astype(np.float32), sigma)
            image *= np.float32(320.0)
            image += np.float32(20.0)
        else:
            # Cytoplasm dim, nucleus (near the seed) bright, extracellular dark.
            inside = labels > 0
            image = inside.astype(np.float32) * np.float32(80.0)
            image[inside & (dist < params.nucleus_radius * params.reach)] += np.float32(100.0)
            del inside
            image = ndi.gaussian_filter(image, sigma)
            image += np.float32(15.0)
        noise = rngs[c].standard_normal(labels.shape, dtype=np.float32)
        noise *= np.float32(params.raw_noise_sigma)
        image += noise
        del noise
        raw[c] = _to_uint8(image)

    _in_threads(channel, 2)
    return raw


def _affinities(labels: np.ndarray) -> np.ndarray:
    affs = seg_to_affgraph(labels, [list(o) for o in NEIGHBORHOOD])
    return (affs.astype(np.uint8) * np.uint8(255)).astype(np.uint8)


def _noisy_affinities(
    affs: np.ndarray, params: DemoParams, seed: np.random.SeedSequence
) -> np.ndarray:
    out = np.empty_like(affs)
    rngs = [np.random.default_rng(s) for s in seed.spawn(affs.shape[0])]

    def channel(c: int) -> None:
        # Per channel, so float temporaries stay at a few voxel-sized arrays.
        image = rngs[c].standard_normal(affs.shape[1:], dtype=np.float32)
        image *= np.float32(params.aff_noise_sigma)
        image += affs[c] * np.float32(1 / 255)
        # Truncating at 2 sigma loses nothing visible for sigma < 1 and saves taps.
        image = ndi.gaussian_filter(image, params.aff_blur_sigma, mode="nearest", truncate=2.0)
        np.clip(image, 0.0, 1.0, out=image)
        image *= np.float32(255.0)
        out[c] = _to_uint8(image)

    _in_threads(channel, affs.shape[0])
    return out


def make_volume(shape: Sequence[int] = (60, 256, 256), seed: int = 0) -> dict[str, np.ndarray]:
    """Generate the demo volume: labels, raw, mask and (noisy) affinities.

    Parameters
    ----------
    shape : sequence of 3 int, optional
        ``(z, y, x)`` shape in voxels. At the default, about 330 objects about
        40 voxels across in y/x and 14 in z (median), 25% background; see
        :class:`DemoParams` for the statistics and the noise tuning.
    seed : int, optional
        Seed; the same ``(shape, seed)`` always gives identical arrays.

    Returns
    -------
    dict of str to ndarray
        ``labels`` : (Z, Y, X) uint8/uint16/uint32, consecutive ids ``1..N`` (the
        smallest unsigned dtype holding ``N``), 0 background; every object is one
        6-connected component and most share faces with other objects.
        ``raw`` : (2, Z, Y, X) uint8; channel 0 membrane-like (bright on object
        boundaries), channel 1 cytoplasm (dim) and nucleus (bright) inside objects.
        ``mask`` : (Z, Y, X) uint8, 1 where ``labels > 0``.
        ``affs`` : (3, Z, Y, X) uint8, ``255 * seg_to_affgraph(labels, NEIGHBORHOOD)``.
        ``affs_noisy`` : (3, Z, Y, X) uint8, ``affs / 255`` plus Gaussian noise
        (``DemoParams.aff_noise_sigma``), blurred spatially per channel
        (``DemoParams.aff_blur_sigma``), clipped to [0, 1] and scaled to 0-255.

    Raises
    ------
    ValueError
        If ``shape`` is not three positive integers.
    """
    return _make_volume(DemoParams(shape=_as_shape(shape), seed=int(seed)))


def _make_volume(params: DemoParams) -> dict[str, np.ndarray]:
    streams = _streams(params.seed)
    labels, dist = _make_labels(params)
    raw = _make_raw(labels, dist, params, streams[2])
    del dist
    affs = _affinities(labels)
    affs_noisy = _noisy_affinities(affs, params, streams[3])
    return {
        "raw": raw,
        "labels": labels,
        "mask": (labels > 0).astype(np.uint8),
        "affs": affs,
        "affs_noisy": affs_noisy,
    }


# --------------------------------------------------------------------------- writing


def _read_root_attrs(path: Path) -> dict[str, object] | None:
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    note = attrs.get(ATTRS_KEY)
    # An empty note is the marker of an interrupted (over)write.
    return note if isinstance(note, dict) and note else None


def _write_root_attrs(path: Path, note: dict[str, object]) -> None:
    group = zarr.open_group(str(path), mode="a", zarr_format=3)
    group.attrs[ATTRS_KEY] = note


def write_demo(
    path: str | Path,
    shape: Sequence[int] = (60, 256, 256),
    seed: int = 0,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
) -> Path:
    """Write the demo container (``raw``, ``labels``, ``mask``, ``affs``, ``affs_noisy``).

    Every array has offset (0, 0, 0), voxel size (290, 260, 260) and units nm.
    Spatial axes are ``z, y, x``; ``raw`` has channel axis ``c^`` and the
    affinities ``offset^``. The generator parameters (and the chunk shape) are
    stored under the root attribute ``volara_assets_demo``, written last, so a
    container with that attribute is complete.

    Parameters
    ----------
    path : str or Path
        Container to write, e.g. ``data/demo.zarr``.
    shape : sequence of 3 int, optional
        ``(z, y, x)`` volume shape in voxels.
    seed : int, optional
        Generator seed.
    overwrite : bool, optional
        Regenerate and replace existing arrays. Without it, a container written
        with the same parameters is left untouched, and one written with other
        parameters is an error.
    chunks : sequence of 3 int, optional
        Spatial chunk shape of every array (channels are never split). Defaults
        to :func:`default_chunks`; pick one that divides the block size you run
        the pipeline with, so that reading a block touches whole chunks.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``shape`` or ``chunks`` is not three positive integers.
    FileExistsError
        If ``path`` holds a demo written with other parameters (or any other
        content) and ``overwrite`` is False.
    """
    path = Path(path)
    params = DemoParams(shape=_as_shape(shape), seed=int(seed))
    if chunks is None:
        chunk_shape = default_chunks(params.shape)
    else:
        chunk_shape = _as_shape(chunks, "chunks")
    note = {**params.to_json(), "chunks": list(chunk_shape), "arrays": list(DEMO_ARRAYS)}

    if path.exists() and not overwrite and (path.is_file() or any(path.iterdir())):
        existing = _read_root_attrs(path)
        if existing == note and all((path / name / "zarr.json").is_file() for name in DEMO_ARRAYS):
            return path
        if existing is None:
            raise FileExistsError(
                f"path: {str(path)!r} exists and is not a complete demo container; "
                "pass overwrite=True (--overwrite) to replace it"
            )
        changed = sorted(k for k in set(note) | set(existing) if note.get(k) != existing.get(k))
        raise FileExistsError(
            f"path: {str(path)!r} holds a demo written with other parameters "
            f"(differs in {', '.join(changed) or 'arrays'}); pass overwrite=True "
            "(--overwrite) to replace it"
        )

    volume = _make_volume(params)
    if path.exists() and overwrite:
        # Drop the completion marker first so an interrupted rewrite is never
        # mistaken for a finished one.
        _write_root_attrs(path, {})
    common = {
        "offset": (0, 0, 0),
        "voxel_size": DEMO_VOXEL_SIZE,
        "chunks": chunk_shape,
        "axis_names": ("z", "y", "x"),
        "units": ("nm", "nm", "nm"),
        "overwrite": True,
    }
    channel_axis = {"raw": "c^", "affs": "offset^", "affs_noisy": "offset^"}
    for name in DEMO_ARRAYS:
        data = volume.pop(name)
        kwargs = dict(common)
        if name in channel_axis:
            kwargs["num_channels"] = data.shape[0]
            kwargs["channel_axis_name"] = channel_axis[name]
        array = create_array(path / name, params.shape, data.dtype, **kwargs)
        array.write(Roi((0, 0, 0), params.shape), data)
        del data
    _write_root_attrs(path, note)
    return path


# --------------------------------------------------------------------------- CLI


def _summary(labels: np.ndarray) -> tuple[int, float]:
    return int(labels.max()), float(np.mean(labels == 0))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m volara_assets.demo [--path P] [--shape Z Y X] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m volara_assets.demo",
        description="Write the synthetic demo container (raw, labels, mask, affs, affs_noisy).",
    )
    parser.add_argument("--path", default="data/demo.zarr", help="container to write")
    parser.add_argument(
        "--shape", nargs=3, type=int, default=[60, 256, 256], metavar=("Z", "Y", "X")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunks",
        nargs=3,
        type=int,
        default=None,
        metavar=("Z", "Y", "X"),
        help="spatial chunk shape (default: 20 100 100 up to the default shape, else 32 128 128)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing container")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    path = Path(args.path)
    before = _read_root_attrs(path)
    try:
        write_demo(path, args.shape, args.seed, overwrite=args.overwrite, chunks=args.chunks)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    labels = zarr.open_array(str(path / "labels"), mode="r")[...]
    n, background = _summary(labels)
    reused = before is not None and before == _read_root_attrs(path) and not args.overwrite
    print(
        f"{'kept' if reused else 'wrote'} {path}: shape {tuple(args.shape)}, "
        f"{n} objects, background {background:.1%}, arrays {', '.join(DEMO_ARRAYS)}, "
        f"{seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
