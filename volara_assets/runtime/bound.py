"""A pipeline bound to its data: input checks, the block grid, output creation and handles."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ..config import PipelineConfig
from ..geometry import BlockGrid
from ..storage.arrays import VolumeArray, create_array, open_array
from ..storage.handles import ArrayHandle, GraphHandle, LutHandle

FRAGMENT_DTYPE = np.dtype(np.uint64)
#: Bound pipelines of this process, by config JSON (see :func:`bound_pipeline`).
_BOUND: dict[str, BoundPipeline] = {}
#: At most this many are kept: a long-lived process serving edited configs must not grow.
_BOUND_LIMIT = 32


class BoundPipeline:
    """``config`` with its inputs opened and checked.

    Construction fails, before anything is written, when an input is missing or
    does not match the config (channels, dtype, shape, voxel size).
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.affinities = ArrayHandle(config.affinities)
        self.mask = ArrayHandle(config.mask) if config.mask else None
        self.ground_truth = ArrayHandle(config.ground_truth) if config.ground_truth else None
        self.fragments = ArrayHandle(config.fragments_array)
        self.segments = ArrayHandle(config.segments_array) if config.segments_array else None
        self.lut = LutHandle(config.lut_path) if config.lut_path else None
        self.graph = GraphHandle(
            config.db_url,
            node_attrs=tuple(sorted(config.node_attrs.items())),
            edge_attrs=tuple(sorted(config.edge_attrs.items())),
        )
        self.check_inputs()

    @cached_property
    def affs_array(self) -> VolumeArray:
        try:
            return open_array(self.config.affinities)
        except FileNotFoundError as exc:
            raise ValueError(f"affinities: no zarr array at {self.config.affinities}") from exc

    @cached_property
    def grid(self) -> BlockGrid:
        return self.affs_array.grid(
            self.config.block_size, self.config.context, self.config.blocks_per_partition
        )

    def check_inputs(self) -> None:
        affs = self.affs_array
        n = len(self.config.neighborhood)
        if len(affs.shape) != 4:
            raise ValueError(
                f"affinities: expected 4 dimensions (offset, z, y, x) at {affs.path}, "
                f"got shape {affs.shape}"
            )
        if affs.shape[0] != n:
            raise ValueError(
                f"affinities: expected {n} channels (one per neighborhood offset), "
                f"got {affs.shape[0]} at {affs.path}"
            )
        if affs.dtype not in (np.uint8, np.float32, np.float64):
            raise ValueError(
                f"affinities: expected dtype uint8, float32 or float64, got {affs.dtype}"
            )
        for field, path in (("mask", self.config.mask), ("ground_truth", self.config.ground_truth)):
            if path is None:
                continue
            try:
                other = open_array(path)
            except FileNotFoundError as exc:
                raise ValueError(f"{field}: no zarr array at {path}") from exc
            if tuple(other.spatial_shape) != tuple(affs.spatial_shape) or other.channel_dims:
                raise ValueError(
                    f"{field}: expected shape {tuple(affs.spatial_shape)} like the affinities, "
                    f"got {tuple(other.shape)} at {path}"
                )
            if tuple(other.voxel_size) != tuple(affs.voxel_size):
                raise ValueError(
                    f"{field}: expected voxel_size {tuple(affs.voxel_size)}, "
                    f"got {tuple(other.voxel_size)}"
                )
        self.grid  # noqa: B018 - builds and validates the grid

    def prepare_outputs(self) -> None:
        """Create the output arrays and tables if absent (idempotent; checks a reused array)."""
        for handle in (self.fragments, self.segments):
            if handle is not None:
                self.create_label_array(handle)
        self.graph.store().create()

    def create_label_array(self, handle: ArrayHandle) -> VolumeArray:
        affs = self.affs_array
        return create_array(
            handle.path,
            affs.spatial_shape,
            FRAGMENT_DTYPE,
            offset=affs.offset,
            voxel_size=affs.voxel_size,
            chunks=self.grid.chunk_shape(),
            axis_names=tuple(affs.axis_names[-3:]),
            units=tuple(affs.units),
        )


def bound_pipeline(config: PipelineConfig | str) -> BoundPipeline:
    """The process's one ``BoundPipeline`` for ``config`` (a model or its JSON).

    The asset factory, the IO managers and the checks of a pipeline all get the
    same object, so inputs are opened and checked once per process. A config
    that differs in any field is another pipeline.
    """
    key = config if isinstance(config, str) else config.model_dump_json()
    found = _BOUND.get(key)
    if found is None:
        model = PipelineConfig.model_validate_json(key) if isinstance(config, str) else config
        found = BoundPipeline(model)
        if len(_BOUND) >= _BOUND_LIMIT:
            _BOUND.pop(next(iter(_BOUND)))
        _BOUND[key] = found
    return found
