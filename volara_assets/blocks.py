"""What one block of each step does: read through handles, call a kernel, write through handles.

Jobs are small picklable dataclasses (a config, a grid and storage handles), so
the same functions run in this process, in a process pool or on Dask workers.
Nothing here knows Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import PipelineConfig
from .geometry import Block, BlockGrid
from .ops.edges import edge_scores
from .ops.fragments import extract_fragments, finish_block, fragment_nodes
from .ops.relabel import relabel
from .storage.handles import ArrayHandle, GraphHandle, LutHandle


def _count_segments(fragments: np.ndarray, lut: np.ndarray) -> int:
    """Distinct non-zero segments in a block: relabel its distinct fragments, not its voxels.

    A block's fragment ids are a narrow range, so the distinct ids come from a
    count table (O(voxels)) and only those few go through the LUT.
    """
    flat = fragments.reshape(-1)
    foreground = flat[flat != 0]
    if foreground.size == 0:
        return 0
    low = foreground.min()
    if int(foreground.max()) - int(low) < 4 * foreground.size:
        present = np.flatnonzero(np.bincount((foreground - low).astype(np.intp)))
        ids = present.astype(np.uint64) + low
    else:
        ids = np.unique(foreground)
    segments = relabel(ids, lut)
    return int(np.unique(segments[segments != 0]).size)


def _write_slices(block: Block) -> tuple[slice, slice, slice]:
    """The write ROI as slices into an array covering the read ROI."""
    return block.write_roi.relative_to(block.read_roi.begin).slices


@dataclass(frozen=True)
class FragmentsJob:
    config: PipelineConfig
    grid: BlockGrid
    affinities: ArrayHandle
    fragments: ArrayHandle
    nodes: GraphHandle
    mask: ArrayHandle | None = None

    def __call__(self, index: int) -> dict[str, float]:
        block = self.grid.block(index)
        params = self.config.require("fragments")
        # Read ROIs of neighbouring blocks overlap: reuse the chunks decoded for the last one.
        affs = self.affinities.read_reusing_chunks(block.read_roi)
        mask = self.mask.read_reusing_chunks(block.read_roi) if self.mask is not None else None
        labels = extract_fragments(
            affs,
            self.config.neighborhood,
            params.bias,
            sigma=params.sigma,
            noise_eps=params.noise_eps,
            # Seeded by block index: the same input gives the same ids in any order.
            seed=index,
            strides=params.strides,
            randomized_strides=params.randomized_strides,
            mask=mask,
            filter_fragments=params.filter_fragments,
            remove_debris=params.remove_debris,
            engine=params.engine,
        )
        labels = finish_block(labels, _write_slices(block), self.grid.fragment_id_base(index))
        nodes = fragment_nodes(
            labels, self.grid.to_world(np.asarray(block.write_roi.begin)), self.grid.voxel_size
        )
        # Written even when empty: a rerun after the input changed must clear old ids.
        self.fragments.write(block.write_roi, labels)
        self.nodes.write_nodes(index, nodes)
        return {
            "fragments": len(nodes),
            "voxels": block.write_roi.size,
        }


@dataclass(frozen=True)
class EdgesJob:
    config: PipelineConfig
    grid: BlockGrid
    affinities: ArrayHandle
    fragments: ArrayHandle
    edges: GraphHandle

    def __call__(self, index: int) -> dict[str, float]:
        block = self.grid.block(index)
        labels, affs = self._read(block)
        base = self.grid.fragment_id_base(index)
        table = edge_scores(
            labels,
            affs,
            self.config.neighborhood,
            self.config.score_groups,
            owned_ids=(base + 1, base + self.grid.voxels_per_block),
        )
        self.edges.write_edges(index, table)
        return {
            "edges": len(table),
            "voxels": block.write_roi.size,
        }

    def _read(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """Fragments and affinities around ``block``: only what its edges need.

        The block writes the edges whose smaller id is one of its fragments.
        Fragments never leave their block, and with forward offsets (all
        components >= 0, as mwatershed's) a pair ``(i, i + offset)`` can only
        join a fragment of this block to one of a later block if ``i`` lies in
        this block. So the affinities of the write ROI and the fragments of the
        write ROI plus ``reach`` voxels past its upper faces give exactly the
        pairs, in the same order, as the full context read: the result is
        bitwise the same while far fewer chunks are decoded. Offsets with a
        negative component fall back to the read ROI.
        """
        used = {tuple(o) for group in self.config.score_groups.values() for o in group}
        if any(c < 0 for o in used for c in o):
            return self.fragments.read(block.read_roi), self.affinities.read(block.read_roi)
        reach = tuple(max(o[axis] for o in used) for axis in range(3))
        axis_aligned = all(sum(c != 0 for c in o) == 1 for o in used)
        box, pieces = self.grid.forward_reach(block.index, reach, axis_aligned=axis_aligned)
        labels = np.zeros(box.shape, dtype=np.uint64)
        for piece in pieces:
            # The +x slab lies in the next block's own chunk: kept for its turn.
            labels[piece.relative_to(box.begin).slices] = self.fragments.read_reusing_chunks(
                piece, keep=len(pieces)
            )
        inner = self.affinities.read(block.write_roi)
        affs = np.zeros((inner.shape[0], *box.shape), dtype=inner.dtype)
        affs[(slice(None), *block.write_roi.relative_to(box.begin).slices)] = inner
        return labels, affs


@dataclass(frozen=True)
class SegmentsJob:
    grid: BlockGrid
    fragments: ArrayHandle
    segments: ArrayHandle
    lut: LutHandle

    def __call__(self, index: int) -> dict[str, float]:
        block = self.grid.block(index)
        fragments = self.fragments.read(block.write_roi)
        lut = self.lut.load()
        seg = relabel(fragments, lut)
        self.segments.write(block.write_roi, seg)
        return {
            "segments": _count_segments(fragments, lut),
            "voxels": block.write_roi.size,
        }
