"""What one block of each step does: read through handles, call a kernel, write through handles.

Jobs are small picklable dataclasses (a config, a grid and storage handles), so
the same functions run in this process, in a process pool or on Dask workers.
Nothing here knows Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import PipelineConfig
from ..geometry import Block, BlockGrid, Roi
from ..ops.edges import edge_scores
from ..ops.fragments import extract_fragments, finish_block, fragment_nodes, label_counts
from ..ops.relabel import relabel
from ..storage.handles import ArrayHandle, GraphHandle, LutHandle


def _count_segments(fragments: np.ndarray, lut: np.ndarray) -> int:
    """Distinct non-zero segments in a block: relabel its distinct fragments, not its voxels."""
    ids, _ = label_counts(fragments)
    segments = relabel(ids, lut)
    return int(np.unique(segments[segments != 0]).size)


def checked_affinities(affs: np.ndarray, path: str, roi: Roi) -> np.ndarray:
    """``affs`` if its values are affinities; raise naming the array otherwise.

    uint8 is 0..255 by definition. Floats must be probabilities in [0, 1]: a NaN
    makes mwatershed panic (a Rust panic, which no ``except Exception`` catches),
    and values on another scale (0..255 stored as float) segment silently into
    garbage. Checked per block, before the kernel, so that only the blocks
    holding bad values fail.
    """
    if affs.dtype.kind != "f" or affs.size == 0:
        return affs
    lo, hi = float(affs.min()), float(affs.max())  # NaN propagates into both
    if np.isnan(lo) or np.isnan(hi):
        raise ValueError(
            f"affinities {path}: {int(np.isnan(affs).sum())} NaN values in the voxels "
            f"{roi.begin}..{roi.end} this block reads; expected float affinities in [0, 1]"
        )
    if lo < 0.0 or hi > 1.0:
        hint = " (stored as 0..255? store uint8, or divide by 255)" if hi > 1.0 else ""
        raise ValueError(
            f"affinities {path}: values in [{lo:g}, {hi:g}] in the voxels {roi.begin}..{roi.end} "
            f"this block reads; expected float affinities in [0, 1]{hint}"
        )
    return affs


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
        affs = checked_affinities(affs, self.affinities.path, block.read_roi)
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

        The block writes the edges whose smaller id is one of its fragments;
        :meth:`BlockGrid.pair_read` decides what that takes (the same decision
        the edges asset's partition mapping is built from). With forward
        offsets the result is bitwise the one of a full context read, with far
        fewer chunks decoded.
        """
        offsets = [o for group in self.config.score_groups.values() for o in group]
        plan = self.grid.pair_read(block.index, offsets)
        box = plan.box
        labels = np.zeros(box.shape, dtype=np.uint64)
        for piece in plan.fragments:
            # The +x slab lies in the next block's own chunk: kept for its turn.
            labels[piece.relative_to(box.begin).slices] = self.fragments.read_reusing_chunks(
                piece, keep=len(plan.fragments)
            )
        inner = checked_affinities(
            self.affinities.read(plan.affinities), self.affinities.path, plan.affinities
        )
        if plan.affinities == box:
            return labels, inner
        affs = np.zeros((inner.shape[0], *box.shape), dtype=inner.dtype)
        affs[(slice(None), *plan.affinities.relative_to(box.begin).slices)] = inner
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
