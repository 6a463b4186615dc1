"""Edge scoring: mean affinity between touching fragments, per group of offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..tables import EdgeTable
from ._common import affinity_scale, as_offsets, offset_slices, unique_pairs


def edge_scores(
    fragments: np.ndarray,
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    score_groups: Mapping[str, Sequence[Sequence[int]]],
    *,
    owned_ids: tuple[int, int] | None = None,
) -> EdgeTable:
    """One edge per pair of distinct fragments linked by an affinity, with mean scores.

    For every channel ``c`` and voxel ``i`` such that ``i`` and ``j = i +
    neighborhood[c]`` both lie in the array and carry different non-zero
    fragment ids, the pair ``(min, max)`` of the two ids observes
    ``affs[c, i]`` (the affinity is stored at the base voxel, as mwatershed
    reads it).

    Parameters
    ----------
    fragments : (Z, Y, X) integer array
        Fragment ids of the read ROI; 0 = background never makes an edge.
    affs : (C, Z, Y, X) uint8 or float array
        Affinities of the same ROI; uint8 is divided by 255.
    neighborhood : (C, 3) sequence of int
        Offset of every channel.
    score_groups : mapping of name -> sequence of offsets
        Each score is the pooled mean over all voxel pairs of the group's
        offsets (so an offset with more pairs weighs more). Every offset must be
        in ``neighborhood``.
    owned_ids : (lo, hi), optional
        Keep only edges whose smaller id ``u`` satisfies ``lo <= u <= hi``
        (inclusive): the block that owns ``u`` writes the edge, so neighbouring
        blocks never write it twice.

    Returns
    -------
    EdgeTable
        Sorted by ``(u, v)``, ``u < v``; one float64 column per group, NaN where
        the group saw no pair for that edge. Only offsets of some group create
        edges, so every edge has at least one non-NaN score.
    """
    fragments = np.asarray(fragments)
    affs = np.asarray(affs)
    if fragments.ndim != 3:
        raise ValueError(f"fragments: expected a 3D array (Z, Y, X), got shape {fragments.shape}")
    if not np.issubdtype(fragments.dtype, np.integer):
        raise ValueError(f"fragments: expected integer ids, got dtype {fragments.dtype}")
    if affs.ndim != 4 or affs.shape[1:] != fragments.shape:
        raise ValueError(
            f"affs: expected shape (C, *{fragments.shape}) to match fragments, got {affs.shape}"
        )
    scale = affinity_scale(affs)
    offsets = as_offsets(neighborhood, 3, "neighborhood")
    if len(offsets) != affs.shape[0]:
        raise ValueError(
            f"neighborhood: expected one offset per affinity channel ({affs.shape[0]}), "
            f"got {len(offsets)}"
        )
    channel_of = {}
    for channel, offset in enumerate(offsets):
        channel_of.setdefault(offset, channel)
    group_channels: dict[str, np.ndarray] = {}
    for name, group in score_groups.items():
        channels = []
        for offset in as_offsets(group, 3, f"score_groups[{name!r}]"):
            if offset not in channel_of:
                raise ValueError(
                    f"score_groups[{name!r}]: offset {offset} is not in the neighborhood "
                    f"{offsets}"
                )
            channels.append(channel_of[offset])
        group_channels[name] = np.unique(np.asarray(channels, dtype=np.int64))
    names = list(score_groups)
    if owned_ids is not None:
        lo, hi = (np.uint64(int(x)) for x in owned_ids)

    used = sorted({int(c) for chans in group_channels.values() for c in chans})
    frags = fragments.astype(np.uint64, copy=False)
    us, vs, values, chans = [], [], [], []
    for channel in used:
        base, shifted = offset_slices(offsets[channel], frags.shape)
        a = frags[base]
        b = frags[shifted]
        # Boundary voxels are a few percent of a block: select them first and do
        # the rest of the work on that small subset.
        on_boundary = (a != b) & (a != 0) & (b != 0)
        a = a[on_boundary]
        b = b[on_boundary]
        value = affs[channel][base][on_boundary]
        u = np.minimum(a, b)
        v = np.maximum(a, b)
        if owned_ids is not None:
            owned = (u >= lo) & (u <= hi)
            u, v, value = u[owned], v[owned], value[owned]
        us.append(u)
        vs.append(v)
        values.append(value.astype(np.float64) / scale)
        chans.append(np.full(len(u), channel, dtype=np.int64))

    if not us or sum(len(u) for u in us) == 0:
        return EdgeTable.empty(names)
    u_all = np.concatenate(us)
    v_all = np.concatenate(vs)
    value_all = np.concatenate(values)
    chan_all = np.concatenate(chans)
    u_edge, v_edge, edge_index, _ = unique_pairs(u_all, v_all)
    n_edges = len(u_edge)

    scores = {}
    for name in names:
        in_group = np.isin(chan_all, group_channels[name])
        index = edge_index[in_group]
        counts = np.bincount(index, minlength=n_edges)
        sums = np.bincount(index, weights=value_all[in_group], minlength=n_edges)
        mean = np.full(n_edges, np.nan)
        seen = counts > 0
        mean[seen] = sums[seen] / counts[seen]
        scores[name] = mean
    return EdgeTable(u_edge, v_edge, scores)
