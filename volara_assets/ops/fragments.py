"""Fragment extraction: mutex watershed on one block's affinities, relabelling, node stats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import mwatershed as mws
import numpy as np
from numba import njit

from ..tables import NodeTable
from ._common import affinity_scale, as_offsets, ids_are_dense
from .mutex_watershed import mutex_watershed

Engine = Literal["numba", "mwatershed"]
ENGINES: tuple[str, ...] = ("numba", "mwatershed")


def extract_fragments(
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    bias: Sequence[float],
    *,
    sigma: Sequence[float] | None = None,
    noise_eps: float | None = None,
    seed: int = 0,
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    mask: np.ndarray | None = None,
    filter_fragments: float = 0.0,
    remove_debris: int = 0,
    engine: Engine = "numba",
) -> np.ndarray:
    """Over-segment affinities into fragments with mutex watershed.

    Parameters
    ----------
    affs : (C, Z, Y, X) uint8 or float array
        Affinities of the read ROI; uint8 is divided by 255, floats are taken as
        already in [0, 1]. ``affs[c, i]`` is the affinity between voxel ``i`` and
        ``i + neighborhood[c]``.
    neighborhood : (C, 3) sequence of int
        The offset of every channel; the first 3 must be the direct (one per
        axis) offsets, which is what ``filter_fragments`` averages.
    bias : (C,) sequence of float
        Added to each channel before watershed; negative values split.
    sigma : (3,) sequence of float, optional
        Gaussian smoothing (voxels) of the affinities; the difference
        ``smoothed - affs`` is added so that object interiors are processed first.
    noise_eps : float, optional
        Amplitude of standard-normal noise added to break ties between equal
        (e.g. quantised uint8) affinities.
    seed : int
        Seed of ``np.random.default_rng`` for the noise. A fresh generator is made
        on every call, so the same input and seed give the same fragments.
    strides : (C, 3) sequence of int, optional
        Per-channel strides: keep every ``strides[c][d]``-th edge of channel ``c``
        along axis ``d`` (as ``mwatershed.agglom``).
    randomized_strides : bool
        Use strides as a sampling probability ``1 / prod(strides[c])``. The
        ``numba`` engine draws from a hash of ``seed`` (reproducible);
        mwatershed draws from its own unseeded generator (*not* reproducible).
    mask : (Z, Y, X) array, optional
        Voxels with ``mask > 0`` are inside; affinities outside are set to 0
        before anything else (also for ``filter_fragments``).
    filter_fragments : float
        If > 0, drop fragments whose mean direct affinity is below it.
    remove_debris : int
        If > 0, drop fragments with fewer voxels than it.
    engine : {"numba", "mwatershed"}
        ``numba``: our kernel, :func:`~volara_assets.ops.mutex_watershed.mutex_watershed`
        (uint8 input without noise or smoothing is ordered without a float
        copy; equal weights follow its documented tie rule). ``mwatershed``:
        ``mwatershed.agglom``, volara's kernel, for fragments identical to
        volara's. Both give the same partition when no two weights are equal.

    Returns
    -------
    fragments : (Z, Y, X) uint64
        Fragment labels of the whole read ROI; 0 is background (voxels without
        any attractive edge, and dropped fragments). Ids are arbitrary and not
        unique across blocks: see :func:`finish_block`.
    """
    affs = np.asarray(affs)
    if affs.ndim != 4:
        raise ValueError(f"affs: expected 4 dimensions (C, Z, Y, X), got shape {affs.shape}")
    scale = affinity_scale(affs)
    offsets = as_offsets(neighborhood, 3, "neighborhood")
    n_channels = affs.shape[0]
    if len(offsets) != n_channels:
        raise ValueError(
            f"neighborhood: expected one offset per affinity channel ({n_channels}), "
            f"got {len(offsets)}"
        )
    bias_values = np.asarray(bias, dtype=np.float64).reshape(-1)
    if len(bias_values) != n_channels:
        raise ValueError(
            f"bias: expected one value per neighborhood offset ({n_channels}), "
            f"got {len(bias_values)}: {list(bias)}"
        )
    stride_list = None
    if strides is not None:
        stride_list = as_offsets(strides, 3, "strides")
        if len(stride_list) != n_channels:
            raise ValueError(
                f"strides: expected one stride per neighborhood offset ({n_channels}), "
                f"got {len(stride_list)}"
            )
    if sigma is not None and len(sigma) != 3:
        raise ValueError(f"sigma: expected 3 values (z, y, x), got {sigma!r}")
    spatial_shape = affs.shape[1:]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != spatial_shape:
            raise ValueError(
                f"mask: expected shape {spatial_shape} (the affinities' spatial shape), "
                f"got {mask.shape}"
            )
    if filter_fragments < 0:
        raise ValueError(f"filter_fragments: expected a value >= 0, got {filter_fragments}")
    if remove_debris < 0:
        raise ValueError(f"remove_debris: expected a value >= 0, got {remove_debris}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")

    # Checked on the stored values (for uint8: "all zero"), before any copy, so an
    # empty block (e.g. outside the sample) costs nothing.
    if affs.size == 0 or affs.max() < 1e-3:
        return np.zeros(spatial_shape, dtype=np.uint64)

    stride_arg = None if stride_list is None else [list(s) for s in stride_list]
    if engine == "numba" and affs.dtype == np.uint8 and noise_eps is None and sigma is None:
        # Quantized weights: the kernel orders the stored bytes itself, so no
        # float copy of the block is made at all (masking keeps it uint8).
        if mask is not None:
            affs = affs * (mask > 0)[np.newaxis]
        direct_mean = _direct_mean(affs, scale) if filter_fragments > 0 else None
        fragments = mutex_watershed(
            affs, offsets, bias_values,
            strides=stride_arg, randomized_strides=randomized_strides, seed=seed,
        )
        if direct_mean is not None or remove_debris > 0:
            fragments = _drop_fragments(fragments, direct_mean, filter_fragments, remove_debris)
        return fragments

    # One float64 working copy: mwatershed only accepts float64, and computing in
    # float64 from the start keeps results independent of the input dtype.
    work = affs.astype(np.float64)
    if scale != 1.0:
        work /= scale
    if mask is not None:
        work *= (mask > 0)[np.newaxis]

    direct_mean = None
    if filter_fragments > 0:
        # Only the per-voxel mean of the direct channels is needed later, so keep
        # that (one spatial volume) instead of a copy of all affinities.
        direct_mean = work[:3].mean(axis=0)

    bias_shape = (-1, 1, 1, 1)
    if noise_eps is None and sigma is None:
        # Fold the bias into the working copy in place: no second full volume.
        work += bias_values.reshape(bias_shape)
        weights = work
    else:
        # The order of additions is noise, smoothing difference, bias, affinities,
        # so that a given (seed, sigma) always produces bit-identical weights.
        if noise_eps is not None:
            weights = np.random.default_rng(seed).standard_normal(work.shape)
            weights *= noise_eps
        else:
            weights = np.zeros_like(work)
        if sigma is not None:
            from scipy.ndimage import gaussian_filter  # only here: a slow import otherwise

            smoothed = gaussian_filter(work, sigma=(0, *(float(s) for s in sigma)))
            smoothed -= work
            weights += smoothed
            del smoothed
        weights += bias_values.reshape(bias_shape)
        weights += work
        del work

    if engine == "numba":
        fragments = mutex_watershed(
            weights, offsets, strides=stride_arg, randomized_strides=randomized_strides, seed=seed
        )
    else:
        fragments = mws.agglom(
            weights,
            offsets=[list(o) for o in offsets],
            strides=stride_arg,
            randomized_strides=randomized_strides,
        )
    del weights
    fragments = np.asarray(fragments, dtype=np.uint64)

    if direct_mean is not None or remove_debris > 0:
        fragments = _drop_fragments(fragments, direct_mean, filter_fragments, remove_debris)
    return fragments


def _direct_mean(affs: np.ndarray, scale: float) -> np.ndarray:
    """Per-voxel mean of the 3 direct channels as float64, one channel at a time.

    The same sum, in the same order, as ``(affs[:3] / scale).mean(axis=0)``,
    without a float copy of all three channels.
    """
    total = affs[0] / scale
    total += affs[1] / scale
    total += affs[2] / scale
    total /= 3
    return total


def _drop_fragments(
    fragments: np.ndarray,
    direct_mean: np.ndarray | None,
    threshold: float,
    min_size: int,
) -> np.ndarray:
    """Zero fragments with mean direct affinity < ``threshold`` or size < ``min_size``.

    Both criteria come from one ``np.unique`` pass. Applying them together is
    the same as applying them one after the other: a fragment's size and mean do
    not change when another fragment is dropped.
    """
    ids, inverse, sizes = np.unique(fragments, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    keep = np.ones(len(ids), dtype=bool)
    if direct_mean is not None:
        sums = np.bincount(inverse, weights=direct_mean.reshape(-1), minlength=len(ids))
        keep &= sums / sizes >= threshold
    if min_size > 0:
        keep &= sizes >= min_size
    if keep.all():
        return fragments
    return np.where(keep, ids, np.uint64(0))[inverse].reshape(fragments.shape)


def finish_block(
    fragments: np.ndarray,
    write_slices: tuple[slice, slice, slice],
    id_base: int,
) -> np.ndarray:
    """Crop read-ROI fragments to the write ROI and give them globally unique ids.

    After cropping, a fragment may fall apart (it was connected only through the
    context), so every 26-connected component of equal non-zero label becomes its
    own fragment. Components are numbered 1..n in order of their first voxel in
    C (raster) order, then shifted by ``id_base``: the result depends only on the
    input, never on scheduling.

    Parameters
    ----------
    fragments : (Z, Y, X) integer array
        Fragments of the read ROI, 0 = background.
    write_slices : tuple of 3 slices
        The write ROI inside ``fragments`` (step 1, within bounds).
    id_base : int
        Added to every non-zero id; the block's ids are ``id_base + 1 ..
        id_base + size`` where ``size`` is the number of write-ROI voxels.

    Returns
    -------
    fragments : (Z', Y', X') uint64
        The relabelled write ROI.
    """
    fragments = np.asarray(fragments)
    if fragments.ndim != 3:
        raise ValueError(f"fragments: expected a 3D array (Z, Y, X), got shape {fragments.shape}")
    if not np.issubdtype(fragments.dtype, np.integer):
        raise ValueError(f"fragments: expected integer labels, got dtype {fragments.dtype}")
    if len(write_slices) != 3:
        raise ValueError(f"write_slices: expected 3 slices, got {write_slices!r}")
    for axis, (s, n) in enumerate(zip(write_slices, fragments.shape, strict=True)):
        start, stop, step = s.indices(n)
        if step != 1 or s.start is None or s.stop is None or not 0 <= s.start <= s.stop <= n:
            raise ValueError(
                f"write_slices: axis {axis} must be slice(start, stop) with "
                f"0 <= start <= stop <= {n}, got {s}"
            )
    crop = np.ascontiguousarray(fragments[write_slices], dtype=np.uint64)
    size = crop.size
    id_base = int(id_base)
    if id_base < 0 or id_base + size >= 2**64:
        raise ValueError(
            f"id_base: expected 0 <= id_base and id_base + {size} < 2**64, got {id_base}"
        )
    out, n = _label_components(crop, np.uint64(id_base))
    if n > size:  # a union-find bug, never data: ids would leak into the next block
        raise RuntimeError(f"finish_block: {n} components in {size} voxels")
    return out


@njit(cache=True)
def _find(parent: np.ndarray, i: int) -> int:
    # Path halving keeps trees shallow without recursion.
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _label_components(labels: np.ndarray, id_base: np.uint64) -> tuple[np.ndarray, int]:
    """Connected components of equal labels, 26-connectivity, ids in raster order.

    Works on runs (maximal stretches of one non-zero label along x) instead of
    voxels: a union-find over runs touches a few times fewer elements, and
    two runs of one label in neighbouring rows are connected exactly when
    their x ranges overlap once grown by one voxel.
    """
    nz, ny, nx = labels.shape
    nrows = nz * ny
    flat = labels.reshape(-1)
    # 1. The runs, row by row in raster order (at most one per voxel).
    starts = np.empty(flat.size, dtype=np.int64)
    ends = np.empty(flat.size, dtype=np.int64)
    row_ptr = np.zeros(nrows + 1, dtype=np.int64)
    n = 0
    for row in range(nrows):
        base = row * nx
        x = 0
        while x < nx:
            v = flat[base + x]
            if v == 0:
                x += 1
                continue
            starts[n] = x
            x += 1
            while x < nx and flat[base + x] == v:
                x += 1
            ends[n] = x
            n += 1
        row_ptr[row + 1] = n
    # 2. Join each run with the runs of the same label it touches in the 4
    #    neighbouring rows that come earlier (y - 1; z - 1 with y - 1, y, y + 1).
    #    Runs of a row are sorted, so one forward pointer per row pair suffices.
    parent = np.arange(n)
    for z in range(nz):
        for y in range(ny):
            row = z * ny + y
            for k in range(4):
                pz = z if k == 0 else z - 1
                py = y - 1 if k == 0 else y + k - 2
                if pz < 0 or py < 0 or py >= ny:
                    continue
                prow = pz * ny + py
                p = row_ptr[prow]
                pend = row_ptr[prow + 1]
                for r in range(row_ptr[row], row_ptr[row + 1]):
                    s = starts[r]
                    e = ends[r]
                    v = flat[row * nx + s]
                    while p < pend and ends[p] < s:
                        p += 1
                    q = p
                    while q < pend and starts[q] <= e:
                        if flat[prow * nx + starts[q]] == v:
                            ra = _find(parent, r)
                            rb = _find(parent, q)
                            # The smaller index wins: a root is its component's
                            # first run in raster order.
                            if ra < rb:
                                parent[rb] = ra
                            elif rb < ra:
                                parent[ra] = rb
                        q += 1
    # 3. Number components by their first run (= first voxel) in raster order.
    new_id = np.zeros(n, dtype=np.uint64)
    out = np.zeros(flat.size, dtype=np.uint64)
    count = 0
    for row in range(nrows):
        base = row * nx
        for r in range(row_ptr[row], row_ptr[row + 1]):
            root = _find(parent, r)
            if new_id[root] == 0:
                count += 1
                new_id[root] = count
            out[base + starts[r] : base + ends[r]] = new_id[root] + id_base
    return out.reshape(labels.shape), count


def fragment_nodes(
    fragments: np.ndarray,
    origin: Sequence[float],
    voxel_size: Sequence[float],
) -> NodeTable:
    """Centroid and size of every fragment.

    Parameters
    ----------
    fragments : (Z, Y, X) integer array
        0 = background.
    origin : (3,) float
        World coordinate of voxel ``fragments[0, 0, 0]``.
    voxel_size : (3,) float
        World size of a voxel.

    Returns
    -------
    NodeTable
        Sorted by id; ``positions = origin + voxel_size * mean voxel index``
        (float64, z, y, x) and ``sizes`` = voxel counts.
    """
    fragments = np.asarray(fragments)
    if fragments.ndim != 3:
        raise ValueError(f"fragments: expected a 3D array (Z, Y, X), got shape {fragments.shape}")
    origin_arr = np.asarray(origin, dtype=np.float64).reshape(-1)
    voxel_arr = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if origin_arr.shape != (3,):
        raise ValueError(f"origin: expected 3 values (z, y, x), got {origin!r}")
    if voxel_arr.shape != (3,):
        raise ValueError(f"voxel_size: expected 3 values (z, y, x), got {voxel_size!r}")
    if np.issubdtype(fragments.dtype, np.integer) and fragments.size:
        labels = np.ascontiguousarray(fragments, dtype=np.uint64)
        low, high, count = _foreground_range(labels)
        if count == 0:
            return NodeTable.empty()
        if ids_are_dense(low, high, count):
            # One pass over the voxels fills dense per-id tables (no sort, no index arrays).
            sizes, sums = _dense_node_sums(labels, np.uint64(low), high - low + 1)
            present = np.flatnonzero(sizes)
            ids = present.astype(np.uint64) + np.uint64(low)
            sizes = sizes[present]
            centroid = sums[present] / sizes[:, np.newaxis]
            positions = origin_arr + voxel_arr * centroid
            return NodeTable(ids, positions, sizes)
    flat = fragments.reshape(-1)
    # Work on foreground voxels only: background is usually most of a block.
    where = np.flatnonzero(flat)
    if where.size == 0:
        return NodeTable.empty()
    ids, inverse, sizes = _count_ids(flat[where])
    coords = np.unravel_index(where, fragments.shape)
    centroid = np.empty((len(ids), 3), dtype=np.float64)
    for axis in range(3):
        # Index sums are integers < 2**53 for any realistic block, so exact.
        centroid[:, axis] = np.bincount(inverse, weights=coords[axis], minlength=len(ids))
    centroid /= sizes[:, np.newaxis]
    positions = origin_arr + voxel_arr * centroid
    return NodeTable(ids.astype(np.uint64), positions, sizes.astype(np.int64))


@njit(cache=True)
def _foreground_range(labels: np.ndarray) -> tuple[int, int, int]:
    """Smallest and largest non-zero id and the number of non-zero voxels."""
    low = np.uint64(0)
    high = np.uint64(0)
    count = 0
    for v in labels.reshape(-1):
        if v == 0:
            continue
        if count == 0 or v < low:
            low = v
        if v > high:
            high = v
        count += 1
    return int(low), int(high), count


@njit(cache=True)
def _dense_node_sums(
    labels: np.ndarray, low: np.uint64, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count and index sums (z, y, x) of every id ``low .. low + span - 1``."""
    nz, ny, nx = labels.shape
    sizes = np.zeros(span, dtype=np.int64)
    # Index sums are integers < 2**53 for any realistic block, so exact.
    sums = np.zeros((span, 3), dtype=np.float64)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = labels[z, y, x]
                if v == 0:
                    continue
                k = np.int64(v - low)
                sizes[k] += 1
                sums[k, 0] += z
                sums[k, 1] += y
                sums[k, 2] += x
    return sizes, sums


def _count_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True, return_counts=True)``, O(n) for dense ids."""
    low, high = int(values.min()), int(values.max())
    if ids_are_dense(low, high, values.size):
        # Index a dense count table by ``id - low`` instead of sorting (np.unique).
        dense = (values - values.dtype.type(low)).astype(np.intp)
        counts = np.bincount(dense, minlength=high - low + 1)
        present = np.flatnonzero(counts)
        ids = present.astype(np.uint64) + np.uint64(low)
        inverse = np.empty(high - low + 1, dtype=np.intp)
        inverse[present] = np.arange(len(present))
        return ids, inverse[dense], counts[present]
    ids, inverse, sizes = np.unique(values, return_inverse=True, return_counts=True)
    return ids.astype(np.uint64), inverse.reshape(-1), sizes


def label_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted non-zero ids of ``labels`` (uint64) and their voxel counts (int64)."""
    flat = np.asarray(labels).reshape(-1)
    values = flat[flat != 0]
    if values.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    ids, _, counts = _count_ids(values)
    return ids, counts.astype(np.int64)
