"""Input checks and offset arithmetic shared by the kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Offset


def ids_are_dense(low: int, high: int, count: int) -> bool:
    """Whether ids in ``[low, high]`` are few enough gaps apart for a dense table.

    A finished block's fragment ids are consecutive (``base + 1 ..``), so per-id
    tables indexed by ``id - low`` (O(n), no sort) fit in memory; ids spread over
    the 64-bit space (many blocks, sparse labels) need a sort or a search instead.
    ``count`` is how many values will be looked up (voxels or ids).
    """
    return high - low < 4 * count


def as_offsets(neighborhood: Sequence[Sequence[int]], ndim: int, name: str) -> list[Offset]:
    """Validate ``neighborhood`` as a list of integer ``ndim``-vectors, naming ``name``."""
    try:
        offsets = [tuple(int(v) for v in offset) for offset in neighborhood]
    except TypeError as exc:
        raise ValueError(
            f"{name}: expected a list of {ndim}-integer offsets, got {neighborhood!r}"
        ) from exc
    if not offsets:
        raise ValueError(f"{name}: expected at least one offset, got none")
    for offset in offsets:
        if len(offset) != ndim:
            raise ValueError(
                f"{name}: every offset must have {ndim} entries (one per spatial axis), "
                f"got {offset}"
            )
    return offsets


def offset_slices(
    offset: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices pairing every voxel ``i`` with ``i + offset`` inside an array of ``shape``.

    Returns ``(base, shifted)`` such that ``array[base][k]`` and ``array[shifted][k]``
    are the two ends of one in-volume pair. Offsets longer than the axis give
    empty slices (the stops are clamped at 0 so they never wrap around as
    negative indices would).
    """
    base = []
    shifted = []
    for o, s in zip(offset, shape, strict=True):
        base.append(slice(max(0, -o), max(0, min(s, s - o))))
        shifted.append(slice(max(0, o), max(0, min(s, s + o))))
    return tuple(base), tuple(shifted)


def affinity_scale(affs: np.ndarray, name: str = "affs") -> float:
    """The divisor that maps stored affinities to [0, 1]: 255 for uint8, 1 for floats."""
    if affs.dtype == np.uint8:
        return 255.0
    if np.issubdtype(affs.dtype, np.floating):
        return 1.0
    raise ValueError(
        f"{name}: expected uint8 (0..255) or floating point (0..1) affinities, "
        f"got dtype {affs.dtype}"
    )


def unique_pairs(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(a, b)`` pairs, sorted by ``a`` then ``b``, without combining them.

    Packing two ids into one integer (e.g. a Cantor pairing) overflows for large
    ids, and floats lose them above 2**53; a lexsort on the two columns keeps any
    uint64 exact.

    Parameters
    ----------
    a, b : (N,) integer arrays

    Returns
    -------
    ua, ub : (K,) the distinct pairs.
    inverse : (N,) int64, index of each input pair in ``ua``/``ub``.
    counts : (K,) int64, occurrences of each pair.
    """
    order = np.lexsort((b, a))
    sa = a[order]
    sb = b[order]
    starts = np.ones(len(sa), dtype=bool)
    starts[1:] = (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])
    group = np.cumsum(starts) - 1
    inverse = np.empty(len(sa), dtype=np.int64)
    inverse[order] = group
    counts = np.bincount(group, minlength=int(starts.sum())).astype(np.int64)
    return sa[starts], sb[starts], inverse, counts
