"""The tutorial front door's datasets: ``Affs``, ``Labels`` and ``Raw`` zarr arrays by path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from volara_assets.geometry import Coord, Offset
from volara_assets.storage.arrays import VolumeArray, open_array

__all__ = ["Affs", "Dataset", "DatasetArray", "Labels", "Raw", "WorldRoi"]

NEIGHBORHOOD_ATTR = "neighborhood"
"""Array attribute volara writes on affinities: the offset of every channel."""


class WorldRoi(NamedTuple):
    """``(offset, shape)`` of a box in world units (e.g. nm), z, y, x.

    A tuple, so it unpacks as ``offset, shape = roi`` and is accepted wherever a
    world ROI is (``GraphDB.read_graph``, ``GraphMWS(roi=...)``).
    """

    offset: Coord
    shape: Coord

    @property
    def end(self) -> Coord:
        return tuple(o + s for o, s in zip(self.offset, self.shape, strict=True))  # type: ignore[return-value]

    def contains(self, other: WorldRoi) -> bool:
        """Whether ``other`` lies inside this box."""
        return all(a <= b for a, b in zip(self.offset, other.offset, strict=True)) and all(
            a >= b for a, b in zip(self.end, other.end, strict=True)
        )


class DatasetArray:
    """A stored volume that slices like numpy and knows its world geometry.

    Parameters
    ----------
    volume : VolumeArray
        The opened zarr array (see :func:`volara_assets.storage.arrays.open_array`).

    Notes
    -----
    Indexing is in voxels over the full array, channel axis included
    (``affs.array("r")[:, 30]`` is every channel of z-slice 30), and returns a
    numpy array. Writing (``array[...] = values``) needs mode ``"r+"``.
    """

    def __init__(self, volume: VolumeArray) -> None:
        self.volume = volume

    def __repr__(self) -> str:
        return f"DatasetArray({self.volume!r})"

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.volume[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.volume.mode == "r":
            raise PermissionError(f"{self.volume.path}: opened read-only (mode='r'); use mode='r+'")
        self.volume.zarr_array[key] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.volume[...]
        return data if dtype is None else data.astype(dtype)

    @property
    def roi(self) -> WorldRoi:
        """The spatial extent in world units: ``roi.offset``, ``roi.shape``."""
        offset, shape = self.volume.roi
        return WorldRoi(tuple(offset), tuple(shape))  # type: ignore[arg-type]

    @property
    def data(self) -> Any:
        """The underlying ``zarr.Array``."""
        return self.volume.zarr_array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    @property
    def voxel_size(self) -> Coord:
        return self.volume.voxel_size

    @property
    def offset(self) -> Coord:
        return self.volume.offset

    @property
    def axis_names(self) -> list[str]:
        return self.volume.axis_names

    @property
    def units(self) -> list[str]:
        return self.volume.units

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.volume.zarr_array.attrs)


class Dataset(BaseModel):
    """A zarr array by path (``container.zarr/array``), opened on demand.

    Parameters
    ----------
    store : str or Path
        Directory of the array, relative to the working directory or absolute.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Path | str

    @property
    def path(self) -> str:
        """The absolute path of the array (what a pipeline records)."""
        return str(Path(self.store).resolve())

    @property
    def name(self) -> str:
        return Path(self.store).name

    def exists(self) -> bool:
        path = Path(self.store)
        return (path / "zarr.json").is_file() or (path / ".zarray").is_file()

    def array(self, mode: Literal["r", "r+"] = "r") -> DatasetArray:
        """Open the array (``"r"`` to read, ``"r+"`` to write).

        Raises
        ------
        FileNotFoundError
            If no array exists at ``store`` (e.g. the step writing it has not run).
        """
        return DatasetArray(open_array(self.store, mode))

    def drop(self) -> None:
        """Delete the array (its directory) if present."""
        if Path(self.store).exists():
            shutil.rmtree(self.store)


class Raw(Dataset):
    """An intensity volume (optionally with a leading channel axis), e.g. a mask input."""

    dataset_type: Literal["raw"] = "raw"


class Labels(Dataset):
    """An integer label volume: fragments, segments or ground truth."""

    dataset_type: Literal["labels"] = "labels"


class Affs(Dataset):
    """Affinities: one channel per neighborhood offset, ``(C, z, y, x)``.

    Parameters
    ----------
    store : str or Path
        Directory of the array.
    neighborhood : list of (3,) int
        The offset of every channel. May be omitted when the array carries a
        ``neighborhood`` attribute (as volara writes it); when both are given
        they must agree.
    """

    dataset_type: Literal["affs"] = "affs"
    neighborhood: list[Offset] = Field(default_factory=list)

    @model_validator(mode="after")
    def _neighborhood(self) -> Affs:
        stored = None
        if self.exists():
            stored = self.array("r").attrs.get(NEIGHBORHOOD_ATTR)
        if stored is not None:
            stored = [tuple(int(v) for v in o) for o in stored]
            if self.neighborhood and [tuple(o) for o in self.neighborhood] != stored:
                raise ValueError(
                    f"neighborhood: {self.neighborhood} differs from the neighborhood {stored} "
                    f"stored with the affinities at {self.store}"
                )
            if not self.neighborhood:
                object.__setattr__(self, "neighborhood", stored)
        if not self.neighborhood:
            raise ValueError(
                f"neighborhood: required for {self.store} (its array has no "
                f"{NEIGHBORHOOD_ATTR!r} attribute); e.g. [(1, 0, 0), (0, 1, 0), (0, 0, 1)]"
            )
        return self
