"""Per-partition digests of segment ids: what a partition's relabelled output depends on.

A partition of ``segments`` is ``relabel(fragments, lut)`` over its blocks, so it
changes only if its fragments change or if one of its fragments maps to another
segment id. The digest here hashes exactly that: the partition's fragment ids
with their segment ids, plus a *salt* standing for the fragments' own version
(so rewritten fragments with the same ids still count). Segment ids are the
smallest fragment id of each segment, so a LUT recomputed after a change
elsewhere leaves the digests of untouched segments as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from ..geometry import BlockGrid
from ..ops.relabel import relabel

__all__ = ["segment_id_digests"]


def segment_id_digests(
    grid: BlockGrid,
    fragment_ids: np.ndarray,
    lut: np.ndarray,
    salts: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Partition key -> 32-hex-digit digest of its fragments' segment ids.

    Parameters
    ----------
    grid : BlockGrid
        Gives the block (``block_of_fragment``) and partition of every fragment id.
    fragment_ids : (N,) uint64 np.ndarray
        Every fragment id of the volume (the node table's ids), any order.
    lut : (2, K) np.ndarray
        Fragment -> segment lookup table; ids it lacks map to themselves (as
        :func:`volara_assets.ops.relabel.relabel` does).
    salts : mapping, optional
        Partition key -> a string hashed in first (the fragments partition's
        data version).

    Returns
    -------
    dict
        One digest per partition key of ``grid``, partitions without fragments
        included (then only the salt is hashed).
    """
    ids = np.unique(np.asarray(fragment_ids, dtype=np.uint64))  # sorted: order-free digest
    ids = ids[ids != 0]
    segments = relabel(ids, lut).astype(np.uint64) if ids.size else ids
    if grid.blocks_per_partition == (1, 1, 1):  # partition keys are the blocks', in order
        partition_of_block = np.arange(grid.num_blocks, dtype=np.int64)
    else:
        index = {k: i for i, k in enumerate(grid.partition_keys)}
        partition_of_block = np.array(
            [index[grid.partition_of_block(b)] for b in range(grid.num_blocks)], dtype=np.int64
        )
    part = partition_of_block[grid.block_of_fragment(ids)] if ids.size else ids.astype(np.int64)
    order = np.argsort(part, kind="stable")  # ids stay sorted within a partition
    ids, segments, part = ids[order], segments[order], part[order]
    bounds = np.searchsorted(part, np.arange(len(grid.partition_keys) + 1))
    salts = salts or {}
    out: dict[str, str] = {}
    for i, key in enumerate(grid.partition_keys):
        lo, hi = bounds[i], bounds[i + 1]
        digest = hashlib.sha256(salts.get(key, "").encode() + b";")
        digest.update(np.ascontiguousarray(ids[lo:hi]).tobytes())
        digest.update(np.ascontiguousarray(segments[lo:hi]).tobytes())
        out[key] = digest.hexdigest()[:32]
    return out
