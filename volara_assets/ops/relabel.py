"""Relabelling: apply a fragment -> segment lookup table to a label array."""

from __future__ import annotations

import numpy as np

from ._common import ids_are_dense


def relabel(fragments: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map every id through ``lut``.

    Parameters
    ----------
    fragments : (...) integer array
        Fragment ids; 0 = background.
    lut : (2, K) integer array
        Row 0 fragment ids (unique, any order), row 1 segment ids. K may be 0.

    Returns
    -------
    segments : (...) uint64
        ``lut[1, k]`` where ``fragments == lut[0, k]``; ids missing from the LUT
        pass through unchanged, and 0 stays 0 even if the LUT maps it.
    """
    fragments = np.asarray(fragments)
    if not np.issubdtype(fragments.dtype, np.integer):
        raise ValueError(f"fragments: expected integer ids, got dtype {fragments.dtype}")
    lut = np.asarray(lut)
    if lut.ndim != 2 or lut.shape[0] != 2:
        raise ValueError(f"lut: expected shape (2, K), got {lut.shape}")
    ids = fragments.astype(np.uint64)  # our own copy: it becomes the output
    if lut.shape[1] == 0 or ids.size == 0:
        return ids
    keys = lut[0].astype(np.uint64)
    values = lut[1].astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    values = values[order]
    if np.any(keys[1:] == keys[:-1]):
        duplicate = keys[1:][keys[1:] == keys[:-1]][0]
        raise ValueError(f"lut: fragment id {int(duplicate)} appears more than once in row 0")
    flat = ids.reshape(-1)
    foreground = flat != 0
    if not foreground.any():
        return ids
    low = int(np.where(foreground, flat, np.uint64(np.iinfo(np.uint64).max)).min())
    high = int(flat.max())
    if ids_are_dense(low, high, flat.size):
        # A dense table over the range is a gather, O(n) instead of a binary search.
        first = int(np.searchsorted(keys, low, side="left"))
        last = int(np.searchsorted(keys, high, side="right"))
        table = np.arange(low, high + 1, dtype=np.uint64)
        table[(keys[first:last] - np.uint64(low)).astype(np.intp)] = values[first:last]
        dense = flat - np.uint64(low)  # wraps for background, masked below
        dense[~foreground] = 0
        out = table[dense.astype(np.intp)]
        out[~foreground] = 0
        return out.reshape(ids.shape)
    # Binary search instead of a dense table: ids are sparse in a 64-bit space.
    pos = np.searchsorted(keys, flat)
    np.minimum(pos, len(keys) - 1, out=pos)
    hit = (keys[pos] == flat) & (flat != 0)
    flat[hit] = values[pos[hit]]
    return ids
