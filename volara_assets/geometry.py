"""The block grid: the one owner of ROI arithmetic, partition keys and neighbours.

Everything is in voxels relative to the array's first voxel unless a name says
``world``; world coordinates are ``offset + voxel * voxel_size`` (e.g. nm).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

Coord = tuple[int, int, int]
#: A neighbourhood offset, stride or any other (z, y, x) vector of a config.
Offset = Coord

#: ``blocks_per_partition: auto`` keeps one block per partition up to this many blocks:
#: a grid this small costs Dagster little, and per-block partitions recompute least.
AUTO_SINGLE_BLOCK_GRIDS = 1024
#: ... and above it groups blocks into bricks of at least this many voxels, about a
#: second of work for every step of real data on one core (half a (32, 128, 128) block
#: on the benchmark volume), so a partition's bookkeeping (~0.3 s on SQLite) stays small
#: next to its work while a run of a few dozen partitions still takes under a minute.
AUTO_BRICK_VOXELS = 2**19
#: ... and never more partitions than this (Dagster's guidance is 10^4 at most; the code
#: location's load time and snapshot grow with the key count and the halo mapping).
AUTO_MAX_PARTITIONS = 4096


def auto_blocks_per_partition(grid_shape: Sequence[int], block_size: Sequence[int]) -> Coord:
    """The brick ``blocks_per_partition: auto`` chooses for a grid of ``grid_shape`` blocks.

    ``(1, 1, 1)`` for grids of at most :data:`AUTO_SINGLE_BLOCK_GRIDS` blocks.
    Larger grids get the smallest brick, doubled one axis at a time (the one
    with the fewest blocks per brick, never beyond the grid), that holds at
    least :data:`AUTO_BRICK_VOXELS` voxels and leaves at most
    :data:`AUTO_MAX_PARTITIONS` partitions. So bricks are about as many blocks
    along each axis (the block size already carries the anisotropy), e.g.
    (4, 4, 4) for (8, 32, 32) blocks.
    """
    grid = as_coord(grid_shape, "grid_shape", minimum=1)
    voxels = math.prod(as_coord(block_size, "block_size", minimum=1))
    if math.prod(grid) <= AUTO_SINGLE_BLOCK_GRIDS:
        return (1, 1, 1)
    brick = [1, 1, 1]

    def partitions() -> int:
        return math.prod(-(-g // b) for g, b in zip(grid, brick, strict=True))

    while math.prod(brick) * voxels < AUTO_BRICK_VOXELS or partitions() > AUTO_MAX_PARTITIONS:
        growable = [a for a in range(3) if brick[a] < grid[a]]
        if not growable:
            break
        axis = min(growable, key=lambda a: (brick[a], a))
        brick[axis] = min(2 * brick[axis], grid[axis])
    return tuple(brick)  # type: ignore[return-value]


def as_coord(value: Sequence[int] | int, name: str, *, minimum: int | None = None) -> Coord:
    """Validate a 3-vector of integers, naming ``name`` in the error."""
    if isinstance(value, int | np.integer):
        value = (int(value),) * 3
    try:
        values = tuple(int(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name}: expected 3 integers (z, y, x), got {value!r}") from exc
    if len(values) != 3 or any(int(v) != v for v in value):
        raise ValueError(f"{name}: expected 3 integers (z, y, x), got {value!r}")
    if minimum is not None and any(v < minimum for v in values):
        raise ValueError(f"{name}: every entry must be >= {minimum}, got {values}")
    return values  # type: ignore[return-value]


def check_context(context: Sequence[int], block_size: Sequence[int]) -> None:
    """Raise unless ``context <= block_size`` on every axis (a block reads only its neighbours)."""
    if any(c > b for c, b in zip(context, block_size, strict=True)):
        raise ValueError(
            f"context: must be <= block_size {tuple(block_size)} on every axis, "
            f"got {tuple(context)}"
        )


def grid_key(coords: Sequence[int], grid_shape: Sequence[int]) -> str:
    """The key of a block or partition: ``z{z}_y{y}_x{x}``, zero-padded so keys sort z-major."""
    width = len(str(max(grid_shape) - 1))
    return "_".join(f"{a}{c:0{width}d}" for a, c in zip("zyx", coords, strict=True))


@dataclass(frozen=True)
class Roi:
    """An axis-aligned box in voxels: ``begin`` (inclusive) and ``shape``."""

    begin: Coord
    shape: Coord

    @property
    def end(self) -> Coord:
        return tuple(b + s for b, s in zip(self.begin, self.shape, strict=True))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end, strict=True))  # type: ignore[return-value]

    @property
    def empty(self) -> bool:
        return any(s <= 0 for s in self.shape)

    def grow(self, amount: Coord) -> Roi:
        """Grow by ``amount`` voxels on both sides of each axis."""
        return Roi(
            tuple(b - a for b, a in zip(self.begin, amount, strict=True)),  # type: ignore[arg-type]
            tuple(s + 2 * a for s, a in zip(self.shape, amount, strict=True)),  # type: ignore[arg-type]
        )

    def intersect(self, other: Roi) -> Roi:
        begin = tuple(max(a, b) for a, b in zip(self.begin, other.begin, strict=True))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end, strict=True))
        shape = tuple(max(0, e - b) for b, e in zip(begin, end, strict=True))
        return Roi(begin, shape)  # type: ignore[arg-type]

    def contains(self, other: Roi) -> bool:
        return all(
            sb <= ob and oe <= se
            for sb, se, ob, oe in zip(self.begin, self.end, other.begin, other.end, strict=True)
        )

    def relative_to(self, origin: Coord) -> Roi:
        """The same box with ``origin`` as voxel (0, 0, 0)."""
        return Roi(tuple(b - o for b, o in zip(self.begin, origin, strict=True)), self.shape)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Block:
    """One block of the grid.

    ``write_roi`` is the part of the volume this block owns (clipped at the
    volume edge); ``read_roi`` is ``write_roi`` grown by the context, which may
    reach outside the volume (such voxels read as 0).
    """

    index: int
    coords: Coord
    key: str
    write_roi: Roi
    read_roi: Roi


@dataclass(frozen=True)
class PairRead:
    """What one block reads to score the voxel pairs it owns (see :meth:`BlockGrid.pair_read`).

    ``box`` is the region the kernel sees; ``fragments`` the pieces of it whose
    fragment ids are read (the rest of the box is never the end of an owned
    pair and stays 0); ``affinities`` the part whose affinities are read.
    """

    box: Roi
    fragments: tuple[Roi, ...]
    affinities: Roi


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block_size`` voxels tiling a volume of ``shape`` voxels.

    Parameters
    ----------
    shape : (3,) int
        Volume shape in voxels (z, y, x), spatial axes only.
    block_size : (3,) int
        Write size of a block in voxels.
    context : (3,) int
        Voxels read around each block on every side; at most ``block_size`` so
        that a block's halo touches only its 26 direct neighbours.
    offset : (3,) int
        World coordinate of voxel (0, 0, 0), a multiple of ``voxel_size``.
    voxel_size : (3,) int
        World size of a voxel (e.g. nm), anisotropic allowed.
    blocks_per_partition : (3,) int or "auto"
        How many blocks one Dagster partition holds along each axis (a brick);
        ``(1, 1, 1)`` makes every block its own partition; ``"auto"`` picks
        :func:`auto_blocks_per_partition` for this grid (the attribute then holds
        the chosen brick).
    """

    shape: Coord
    block_size: Coord
    context: Coord = (0, 0, 0)
    offset: Coord = (0, 0, 0)
    voxel_size: Coord = (1, 1, 1)
    blocks_per_partition: Coord | Literal["auto"] = (1, 1, 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", as_coord(self.shape, "shape", minimum=1))
        object.__setattr__(self, "block_size", as_coord(self.block_size, "block_size", minimum=1))
        object.__setattr__(self, "context", as_coord(self.context, "context", minimum=0))
        object.__setattr__(self, "offset", as_coord(self.offset, "offset"))
        object.__setattr__(self, "voxel_size", as_coord(self.voxel_size, "voxel_size", minimum=1))
        if self.blocks_per_partition == "auto":
            object.__setattr__(
                self,
                "blocks_per_partition",
                auto_blocks_per_partition(self.grid_shape, self.block_size),
            )
        object.__setattr__(
            self,
            "blocks_per_partition",
            as_coord(self.blocks_per_partition, "blocks_per_partition", minimum=1),
        )
        check_context(self.context, self.block_size)
        if any(o % v for o, v in zip(self.offset, self.voxel_size, strict=True)):
            raise ValueError(
                f"offset: must be a multiple of voxel_size {self.voxel_size}, got {self.offset}"
            )
        if self.num_blocks * self.voxels_per_block >= 2**63:
            raise ValueError(
                f"block_size: {self.num_blocks} blocks of {self.voxels_per_block} voxels "
                "exceed the 2**63 fragment id space"
            )

    # -- the grid ------------------------------------------------------------
    @cached_property
    def grid_shape(self) -> Coord:
        """Number of blocks along (z, y, x)."""
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_size, strict=True))  # type: ignore[return-value]

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def voxels_per_block(self) -> int:
        return math.prod(self.block_size)

    @property
    def volume_roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    def block(self, index: int) -> Block:
        """The block with z-major ``index`` (0 <= index < num_blocks)."""
        index = int(index)
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block index {index} outside [0, {self.num_blocks})")
        # Plain integer arithmetic: called for every block of every partition by steps,
        # observations and checks, where numpy's scalar calls cost more than the work.
        _, gy, gx = self.grid_shape
        z, rest = divmod(index, gy * gx)
        y, x = divmod(rest, gx)
        coords = (z, y, x)
        begin = (z * self.block_size[0], y * self.block_size[1], x * self.block_size[2])
        shape = tuple(
            min(b + s, v) - b
            for b, s, v in zip(begin, self.block_size, self.shape, strict=True)
        )
        write = Roi(begin, shape)  # type: ignore[arg-type]
        c = self.context
        read = Roi(
            (begin[0] - c[0], begin[1] - c[1], begin[2] - c[2]),
            (shape[0] + 2 * c[0], shape[1] + 2 * c[1], shape[2] + 2 * c[2]),
        )
        return Block(index, coords, self.block_key(coords), write, read)

    def blocks(self) -> Iterator[Block]:
        for index in range(self.num_blocks):
            yield self.block(index)

    def block_index(self, coords: Sequence[int]) -> int:
        z, y, x = (int(c) for c in coords)
        _, gy, gx = self.grid_shape
        if not all(0 <= c < g for c, g in zip((z, y, x), self.grid_shape, strict=True)):
            raise ValueError(f"block coords {tuple(coords)} outside the grid {self.grid_shape}")
        return (z * gy + y) * gx + x

    def block_key(self, coords: Sequence[int]) -> str:
        return grid_key(coords, self.grid_shape)

    def block_neighbours(self, index: int) -> list[int]:
        """Indices of the up to 26 blocks that touch ``index`` (face, edge or corner)."""
        return self._neighbours(self.block(index).coords, self.grid_shape, self.block_index)

    def forward_reach(
        self, index: int, reach: Sequence[int], *, axis_aligned: bool
    ) -> tuple[Roi, list[Roi]]:
        """What a block must read to see every voxel pair it starts, for forward offsets.

        With offsets whose components are all >= 0 and at most ``reach`` per
        axis, a pair ``(i, i + offset)`` starting in the write ROI ends in the
        box ``[write.begin, write.end + reach)`` (clipped to the volume).
        Returns that box and the pieces to read inside it: for ``axis_aligned``
        offsets (one non-zero component each) the write ROI plus one slab of
        ``reach[axis]`` voxels past each upper face, so a block-aligned chunk
        store decodes 4 chunks instead of 8 (or 27 for a symmetric context);
        otherwise the whole box. Voxels of the box outside the pieces are never
        the end of such a pair.
        """
        reach = as_coord(reach, "reach", minimum=0)
        write = self.block(index).write_roi
        box = Roi(write.begin, tuple(s + r for s, r in zip(write.shape, reach, strict=True)))  # type: ignore[arg-type]
        box = box.intersect(self.volume_roi)
        if not axis_aligned:
            return box, [box]
        pieces = [write]
        for axis in range(3):
            begin = list(write.begin)
            shape = list(write.shape)
            begin[axis] = write.end[axis]
            shape[axis] = box.end[axis] - write.end[axis]
            slab = Roi(tuple(begin), tuple(shape))  # type: ignore[arg-type]
            if not slab.empty:
                pieces.append(slab)
        return box, pieces

    def pair_read(self, index: int, offsets: Sequence[Sequence[int]]) -> PairRead:
        """What block ``index`` reads to score every voxel pair ``(i, i + offset)`` it owns.

        The one decision behind both the edges job's read and the edges asset's
        partition mapping (:meth:`partition_pair_reads`), so they never disagree.

        With every offset forward (all components >= 0, as mwatershed's), a pair
        joining a fragment of this block to one of a later block starts in this
        block, so the affinities of the write ROI and the fragments of
        :meth:`forward_reach` (write ROI plus slabs past its upper faces, or the
        whole forward box for diagonal offsets) give every pair. An offset with a
        negative component can start a pair in an earlier block: then the block
        reads its whole read ROI (write ROI grown by the context) of both.
        """
        used = {as_coord(o, "offset") for o in offsets}
        block = self.block(index)
        if any(c < 0 for o in used for c in o):
            roi = block.read_roi
            return PairRead(box=roi, fragments=(roi,), affinities=roi)
        reach = tuple(max((o[axis] for o in used), default=0) for axis in range(3))
        axis_aligned = all(sum(c != 0 for c in o) == 1 for o in used)
        box, pieces = self.forward_reach(index, reach, axis_aligned=axis_aligned)
        return PairRead(box=box, fragments=tuple(pieces), affinities=block.write_roi)

    # -- fragment ids ----------------------------------------------------------
    def fragment_id_base(self, index: int) -> int:
        """Ids of block ``index`` are ``base + 1 .. base + voxels_per_block``."""
        return index * self.voxels_per_block

    def block_of_fragment(self, ids: np.ndarray) -> np.ndarray:
        """The index of the block that produced each (non-zero) fragment id."""
        ids = np.asarray(ids, dtype=np.uint64)
        return ((ids - np.uint64(1)) // np.uint64(self.voxels_per_block)).astype(np.int64)

    # -- world coordinates -----------------------------------------------------
    def to_world(self, voxel: np.ndarray) -> np.ndarray:
        """Voxel coordinates (..., 3), possibly fractional, to world coordinates."""
        return np.asarray(self.offset, dtype=np.float64) + np.asarray(voxel) * np.asarray(
            self.voxel_size, dtype=np.float64
        )

    def world_roi(self, roi: Roi) -> tuple[Coord, Coord]:
        """``(offset, shape)`` of ``roi`` in world units."""
        begin = tuple(
            o + b * v for o, b, v in zip(self.offset, roi.begin, self.voxel_size, strict=True)
        )
        shape = tuple(s * v for s, v in zip(roi.shape, self.voxel_size, strict=True))
        return begin, shape  # type: ignore[return-value]

    @property
    def voxel_origin(self) -> Coord:
        """The volume's first voxel in world voxel units (world offset / voxel size)."""
        return tuple(o // v for o, v in zip(self.offset, self.voxel_size, strict=True))  # type: ignore[return-value]

    def centre(self, roi: Roi) -> tuple[float, float, float]:
        """The centre of ``roi`` in world voxel units (what a viewer's position is in)."""
        return tuple(  # type: ignore[return-value]
            o + b + s / 2 for o, b, s in zip(self.voxel_origin, roi.begin, roi.shape, strict=True)
        )

    @property
    def volume_centre(self) -> tuple[float, float, float]:
        return self.centre(self.volume_roi)

    def partition_centre(self, key: str) -> tuple[float, float, float]:
        """The centre of partition ``key``'s write ROIs, in world voxel units."""
        return self.centre(self.partition_roi(key))

    def roi_from_world(self, offset: Sequence[int], shape: Sequence[int]) -> Roi:
        """The voxel ROI of a world ``(offset, shape)``; both must be voxel-aligned."""
        offset = as_coord(offset, "roi offset")
        shape = as_coord(shape, "roi shape", minimum=0)
        rel = tuple(o - g for o, g in zip(offset, self.offset, strict=True))
        if any(r % v or s % v for r, s, v in zip(rel, shape, self.voxel_size, strict=True)):
            raise ValueError(
                f"roi: offset {offset} and shape {shape} must be multiples of voxel_size "
                f"{self.voxel_size} relative to the volume offset {self.offset}"
            )
        return Roi(
            tuple(r // v for r, v in zip(rel, self.voxel_size, strict=True)),  # type: ignore[arg-type]
            tuple(s // v for s, v in zip(shape, self.voxel_size, strict=True)),  # type: ignore[arg-type]
        )

    def blocks_touching(self, roi: Roi) -> list[int]:
        """Indices of blocks whose read ROI intersects ``roi`` (voxels)."""
        lo = [
            max(0, (b - c) // s)
            for b, c, s in zip(roi.begin, self.context, self.block_size, strict=True)
        ]
        hi = [
            min(g - 1, (e - 1 + c) // s)
            for e, c, s, g in zip(
                roi.end, self.context, self.block_size, self.grid_shape, strict=True
            )
        ]
        if roi.empty or any(h < low for low, h in zip(lo, hi, strict=True)):
            return []
        ranges = [range(low, h + 1) for low, h in zip(lo, hi, strict=True)]
        return [self.block_index(c) for c in itertools.product(*ranges)]

    # -- partitions (bricks of blocks) -----------------------------------------
    @cached_property
    def partition_grid_shape(self) -> Coord:
        return tuple(  # type: ignore[return-value]
            -(-g // p) for g, p in zip(self.grid_shape, self.blocks_per_partition, strict=True)
        )

    @cached_property
    def partition_keys(self) -> list[str]:
        """Partition keys in z-major order (they also sort that way as strings)."""
        shape = self.partition_grid_shape
        return [grid_key(c, shape) for c in itertools.product(*(range(g) for g in shape))]

    @cached_property
    def _partition_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.partition_keys)}

    def _partition_coords(self, key: str) -> Coord:
        try:
            index = self._partition_index[key]
        except KeyError:
            raise KeyError(f"partition key {key!r} is not in this grid") from None
        return tuple(int(c) for c in np.unravel_index(index, self.partition_grid_shape))  # type: ignore[return-value]

    def partition_blocks(self, key: str) -> list[Block]:
        """The blocks of partition ``key`` in z-major order."""
        pc = self._partition_coords(key)
        ranges = [
            range(c * p, min((c + 1) * p, g))
            for c, p, g in zip(pc, self.blocks_per_partition, self.grid_shape, strict=True)
        ]
        return [self.block(self.block_index(c)) for c in itertools.product(*ranges)]

    def partition_roi(self, key: str) -> Roi:
        """The bounding box of partition ``key``'s write ROIs."""
        blocks = self.partition_blocks(key)
        begin = tuple(min(b.write_roi.begin[d] for b in blocks) for d in range(3))
        end = tuple(max(b.write_roi.end[d] for b in blocks) for d in range(3))
        return Roi(begin, tuple(e - b for b, e in zip(begin, end, strict=True)))  # type: ignore[arg-type]

    def partition_of_block(self, index: int) -> str:
        coords = self.block(index).coords
        pc = tuple(c // p for c, p in zip(coords, self.blocks_per_partition, strict=True))
        return self.partition_keys[int(np.ravel_multi_index(pc, self.partition_grid_shape))]

    def partitions_writing(self, roi: Roi) -> list[str]:
        """Keys of the partitions with a block whose *write* ROI intersects ``roi`` (voxels).

        What a sub-volume run over ``roi`` materializes, in z-major order; context
        is not counted (a block whose context alone reaches ``roi`` writes nothing there).
        """
        roi = roi.intersect(self.volume_roi)
        if roi.empty:
            return []
        ranges = [
            range(b // s, (e - 1) // s + 1)
            for b, e, s in zip(roi.begin, roi.end, self.block_size, strict=True)
        ]
        keys = {self.partition_of_block(self.block_index(c)) for c in itertools.product(*ranges)}
        return [k for k in self.partition_keys if k in keys]

    def partition_neighbours(self, key: str) -> list[str]:
        """Keys of the up to 26 partitions that touch ``key``."""
        shape = self.partition_grid_shape
        return [
            self.partition_keys[i]
            for i in self._neighbours(
                self._partition_coords(key),
                shape,
                lambda c: int(np.ravel_multi_index(tuple(c), shape)),
            )
        ]

    def blocks_writing(self, roi: Roi) -> list[int]:
        """Indices of the blocks whose write ROI intersects ``roi`` (voxels)."""
        inside = roi.intersect(self.volume_roi)
        if inside.empty:
            return []
        ranges = [
            range(b // s, (e - 1) // s + 1)
            for b, e, s in zip(inside.begin, inside.end, self.block_size, strict=True)
        ]
        return [self.block_index(c) for c in itertools.product(*ranges)]

    def partition_pair_reads(self, offsets: Sequence[Sequence[int]]) -> dict[str, set[str]]:
        """For every partition, the partitions whose fragments its pair scoring reads.

        Derived from :meth:`pair_read`, the read the edges job performs: a
        partition depends on the partitions owning the fragments any of its
        blocks reads (itself and, with forward offsets, 3 face neighbours, or 7
        for diagonal ones; with negative offsets up to 26).

        A read reaches at most one block past its own (context <= block_size),
        so which neighbours a partition reads is the same for every partition,
        minus those outside the volume. The neighbour steps are therefore taken
        from :meth:`pair_read` once, on the middle partition of a 3 x 3 x 3 grid of
        the same bricks, then applied to every partition at once: a per-block loop
        over 10^5 blocks took seconds of every code location load.
        """
        bricks = self.blocks_per_partition
        probe = BlockGrid(
            shape=tuple(3 * p * b for p, b in zip(bricks, self.block_size, strict=True)),
            block_size=self.block_size,
            context=self.context,
            blocks_per_partition=bricks,
        )
        centre = probe.partition_keys[13]
        middle = np.array(probe._partition_coords(centre))
        steps = {
            tuple(int(c) for c in np.array(probe._partition_coords(k)) - middle)
            for k in probe._partition_pair_reads_by_block(offsets, [centre])[centre]
        }
        shape = self.partition_grid_shape
        coords = np.indices(shape).reshape(3, -1)
        keys = self.partition_keys
        reads: list[set[str]] = [set() for _ in keys]
        for step in sorted(steps):
            moved = coords + np.array(step)[:, None]
            valid = np.all((moved >= 0) & (moved < np.array(shape)[:, None]), axis=0)
            targets = np.ravel_multi_index(tuple(moved[:, valid]), shape)
            sources = np.flatnonzero(valid).tolist()
            for source, target in zip(sources, targets.tolist(), strict=True):
                reads[source].add(keys[target])
        return dict(zip(keys, reads, strict=True))

    def _partition_pair_reads_by_block(
        self, offsets: Sequence[Sequence[int]], partition_keys: Sequence[str]
    ) -> dict[str, set[str]]:
        """:meth:`partition_pair_reads` of ``partition_keys``, block by block (the reference)."""
        return {
            key: {
                self.partition_of_block(i)
                for block in self.partition_blocks(key)
                for piece in self.pair_read(block.index, offsets).fragments
                for i in self.blocks_writing(piece)
            }
            for key in partition_keys
        }

    def partition_read_roi(self, key: str) -> Roi:
        """The union of partition ``key``'s blocks' read ROIs: its bounding box grown by the
        context (a brick is a box, so growing each block and growing the brick agree)."""
        return self.partition_roi(key).grow(self.context)

    def partitions_reading(self, roi: Roi) -> list[str]:
        """Keys of the partitions whose read ROI intersects ``roi``, in z-major order."""
        keys = {self.partition_of_block(i) for i in self.blocks_touching(roi)}
        return sorted(keys, key=self._partition_index.__getitem__)

    @staticmethod
    def _neighbours(coords: Coord, shape: Coord, to_index) -> list[int]:
        out = []
        for delta in itertools.product((-1, 0, 1), repeat=3):
            if delta == (0, 0, 0):
                continue
            c = tuple(a + d for a, d in zip(coords, delta, strict=True))
            if all(0 <= x < g for x, g in zip(c, shape, strict=True)):
                out.append(to_index(c))
        return sorted(out)

    def chunk_shape(self) -> Coord:
        """Chunk shape for output arrays: one block per chunk, so no two blocks share one."""
        return self.block_size
