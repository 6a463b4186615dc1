"""A pipeline bound to its data: input checks, the block grid, output creation and handles."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from ..config import PipelineConfig, sqlite_file
from ..geometry import BlockGrid
from ..storage.arrays import VolumeArray, create_array, open_array
from ..storage.graph import with_default_driver
from ..storage.handles import ArrayHandle, GraphHandle, LutHandle

FRAGMENT_DTYPE = np.dtype(np.uint64)
#: Bound pipelines of this process, by config JSON (see :func:`bound_pipeline`).
_BOUND: dict[str, BoundPipeline] = {}
#: At most this many are kept: a long-lived process serving edited configs must not grow.
_BOUND_LIMIT = 32


class BoundPipeline:
    """``config`` with its inputs opened and checked.

    Construction fails, before anything is written, when an input is missing or
    does not match the config (channels, dtype, shape, offset, voxel size), when
    an output cannot be written where the config puts it (a folder that cannot
    be made, a LUT path that is a folder, an output array left by another
    config), or when the database driver is not installed. Nothing is created
    here: outputs are made by :meth:`prepare_outputs` or the steps' writers.
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
            for name in ("offset", "voxel_size"):
                want, found = tuple(getattr(affs, name)), tuple(getattr(other, name))
                if found != want:
                    raise ValueError(
                        f"{field}: expected {name} {want} like the affinities, "
                        f"got {found} at {path}"
                    )
        self.grid  # noqa: B018 - builds and validates the grid
        self.check_outputs()

    def check_outputs(self) -> None:
        """Every output can be written where the config puts it; nothing is created."""
        config = self.config
        for field in ("fragments_array", "segments_array"):
            path = getattr(config, field)
            if path is not None:
                _check_creatable(field, path)
                self._check_existing_array(field, path)
        if config.lut_path is not None:
            _check_creatable("lut_path", config.lut_path)
            if Path(config.lut_path).exists() and not Path(config.lut_path).is_file():
                raise ValueError(
                    f"lut_path: {config.lut_path} exists and is not a file (a folder?); "
                    "expected a .npz file path (the LUT is written there)"
                )
        _check_database(config.db_url)

    def _check_existing_array(self, field: str, path: str) -> None:
        """An array left at ``path`` by an earlier config must match this one: blocks of
        two grids or dtypes never mix in one array."""
        if not Path(path).exists():
            return
        try:
            found = open_array(path)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{field}: {path} exists but is not a zarr array of 3 spatial axes ({exc}); "
                f"delete it or set {field} to another path"
            ) from exc
        affs = self.affs_array
        expected = {
            "dtype": FRAGMENT_DTYPE,
            "shape": tuple(affs.spatial_shape),
            "offset": tuple(affs.offset),
            "voxel_size": tuple(affs.voxel_size),
            "chunks": tuple(self.grid.chunk_shape()),
        }
        for name, want in expected.items():
            got = getattr(found, name)
            if got != want:
                why = " (one chunk per block)" if name == "chunks" else ""
                raise ValueError(
                    f"{field}: the array at {path} (from an earlier config?) has {name} "
                    f"{got}, this config needs {want}{why}; delete it (its blocks cannot be "
                    f"reused) or set {field} to another path"
                )

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


def _check_creatable(field: str, path: str) -> None:
    """``path`` exists, or its nearest existing ancestor is a folder we may write in."""
    target = Path(path)
    if target.exists():
        return
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{field}: cannot create {path}: {ancestor} is a file, expected a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(
            f"{field}: cannot create {path}: no permission to write in {ancestor}"
        )


def _check_database(db_url: str) -> None:
    """The URL's driver imports here, and a SQLite file can be created or opened."""
    # The driver GraphStore will use (psycopg2 for a bare postgresql:// URL).
    url = with_default_driver(sa.engine.make_url(db_url))
    safe = url.render_as_string(hide_password=True)
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        raise ValueError(
            f"db_url: the driver of {url.drivername!r} ({safe}) is not installed: {exc}; "
            "install it or name an installed driver (e.g. 'postgresql+psycopg://...')"
        ) from exc
    database = sqlite_file(db_url)
    if database is None:
        return
    _check_creatable("db_url", database)
    if Path(database).exists() and not Path(database).is_file():
        raise ValueError(
            f"db_url: the SQLite database {database} exists and is not a file (a folder?); "
            "expected a file path"
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
