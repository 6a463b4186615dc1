"""Affinities from a label image (the ground-truth side of the affinity convention)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import as_offsets, offset_slices


def seg_to_affgraph(seg: np.ndarray, nhood: Sequence[Sequence[int]]) -> np.ndarray:
    """Affinities implied by a segmentation.

    Parameters
    ----------
    seg : (Z, Y, X) or (Y, X) integer array
        Labels; 0 is background.
    nhood : (C, ndim) sequence of int
        Offsets; negative entries are allowed.

    Returns
    -------
    affs : (C, *seg.shape) int32
        ``affs[c, i] == 1`` iff voxel ``i`` and voxel ``i + nhood[c]`` both lie in
        the array, are non-zero and carry the same label; 0 otherwise. This is the
        layout mutex watershed reads: the affinity of a pair is stored at its
        base voxel.
    """
    seg = np.asarray(seg)
    if seg.ndim not in (2, 3):
        raise ValueError(f"seg: expected a 2D or 3D label array, got shape {seg.shape}")
    offsets = as_offsets(nhood, seg.ndim, "nhood")
    affs = np.zeros((len(offsets), *seg.shape), dtype=np.int32)
    for channel, offset in enumerate(offsets):
        base, shifted = offset_slices(offset, seg.shape)
        a = seg[base]
        b = seg[shifted]
        affs[channel][base] = (a == b) & (a != 0)
    return affs
