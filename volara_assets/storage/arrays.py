"""Zarr v3 volumes carrying funlib.persistence metadata: open, create, read and write ROIs."""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from numpy.typing import DTypeLike
from zarr.core.buffer import default_buffer_prototype

from volara_assets.geometry import BlockGrid, Coord, Roi, as_coord

__all__ = [
    "ChunkCache",
    "VolumeArray",
    "create_array",
    "open_array",
    "raise_bad_chunk",
]

# The attribute names funlib.persistence 0.7 writes (its default MetaDataFormat),
# all stored in the array's own ``zarr.json`` under ``attributes``.
OFFSET_ATTR = "offset"
VOXEL_SIZE_ATTR = "voxel_size"
AXIS_NAMES_ATTR = "axis_names"
UNITS_ATTR = "units"
TYPES_ATTR = "types"

_PHYSICAL_TYPES = ("space", "time")
_MODES = ("r", "r+", "a")


def _spatial_mask(types: Sequence[str]) -> list[bool]:
    return [t in _PHYSICAL_TYPES for t in types]


def _strip_channels(values: Sequence[Any] | None, types: Sequence[str]) -> list[Any] | None:
    """Keep the spatial entries of ``values`` if it was given for every axis."""
    if values is None:
        return None
    values = list(values)
    if len(values) == len(types):
        return [v for v, keep in zip(values, _spatial_mask(types), strict=True) if keep]
    return values


def _parse_metadata(path: str, shape: tuple[int, ...], attrs: dict[str, Any]) -> dict[str, Any]:
    """Read geometry from funlib-style attributes, with funlib's defaults.

    The axis types come from ``types`` if present, else from ``axis_names``
    (names ending in ``^`` are channels), else from the length of the spatial
    attributes, else every axis is spatial.
    """
    ndim = len(shape)
    axis_names = attrs.get(AXIS_NAMES_ATTR)
    types = attrs.get(TYPES_ATTR)
    offset = attrs.get(OFFSET_ATTR)
    voxel_size = attrs.get(VOXEL_SIZE_ATTR)
    units = attrs.get(UNITS_ATTR)
    if types is None and axis_names is not None:
        types = ["channel" if str(n).endswith("^") else "space" for n in axis_names]
    if types is None:
        lengths = {len(v) for v in (offset, voxel_size, units) if v is not None}
        if len(lengths) > 1:
            raise ValueError(
                f"{path}: offset {offset}, voxel_size {voxel_size} and units {units} "
                "disagree on the number of spatial axes"
            )
        spatial = lengths.pop() if lengths else ndim
        types = ["channel"] * (ndim - spatial) + ["space"] * spatial
    types = [str(t) for t in types]
    if len(types) != ndim:
        raise ValueError(f"{path}: types {types} do not match the array's {ndim} dimensions")
    mask = _spatial_mask(types)
    num_spatial = sum(mask)
    num_channel = ndim - num_spatial
    if num_spatial != 3:
        raise ValueError(
            f"{path}: expected 3 spatial axes (z, y, x), found {num_spatial} in types {types}"
        )
    if num_channel > 1 or any(mask[:num_channel]):
        raise ValueError(
            f"{path}: expected at most one channel axis, leading, found types {types}"
        )
    offset = _strip_channels(offset, types)
    voxel_size = _strip_channels(voxel_size, types)
    units = _strip_channels(units, types)
    if axis_names is None:
        axis_names = [f"c{i}^" for i in range(num_channel)] + [f"d{i}" for i in range(3)]
    return {
        "offset": as_coord(offset if offset is not None else (0, 0, 0), f"{path} offset"),
        "voxel_size": as_coord(
            voxel_size if voxel_size is not None else (1, 1, 1), f"{path} voxel_size", minimum=1
        ),
        "axis_names": [str(n) for n in axis_names],
        "units": [str(u) for u in units] if units is not None else [""] * 3,
        "types": types,
        "channel_dims": num_channel,
    }


class VolumeArray:
    """A zarr array of one 3D volume, optionally with one leading channel axis.

    Geometry follows funlib.persistence: ``offset`` and ``voxel_size`` are in
    world units (e.g. nm) and cover the spatial axes only; ``read`` and ``write``
    take a :class:`~volara_assets.geometry.Roi` in voxels relative to the
    array's first voxel.

    Parameters
    ----------
    array : zarr.Array
        The opened array.
    path : str
        Where it lives, as passed to :func:`open_array`.
    mode : str
        The mode it was opened with (``"r"``, ``"r+"`` or ``"a"``); used when
        the object is unpickled in another process.

    Notes
    -----
    Keep one instance per array and process and reuse it for every block:
    opening reads metadata. Instances pickle as ``(path, mode)`` and reopen
    lazily, so they can be sent to process-pool workers.
    """

    def __init__(self, array: zarr.Array, path: str, mode: str = "r") -> None:
        self._array: zarr.Array | None = array
        self._path = path
        self._mode = mode
        self._meta = _parse_metadata(path, tuple(array.shape), dict(array.attrs))

    # -- pickling ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "mode": self._mode, "meta": self._meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = state["path"]
        self._mode = state["mode"]
        self._meta = state["meta"]
        self._array = None

    @property
    def zarr_array(self) -> zarr.Array:
        """The underlying zarr array (reopened on first use after unpickling)."""
        if self._array is None:
            self._array = _open_zarr(self._path, self._mode)
        return self._array

    def __repr__(self) -> str:
        return (
            f"VolumeArray({self._path!r}, shape={self.shape}, dtype={self.dtype}, "
            f"offset={self.offset}, voxel_size={self.voxel_size}, axis_names={self.axis_names})"
        )

    # -- metadata ------------------------------------------------------------
    @property
    def path(self) -> str:
        """The path the array was opened from."""
        return self._path

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def dtype(self) -> np.dtype:
        return self.zarr_array.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Full shape, channel axis included."""
        return tuple(int(s) for s in self.zarr_array.shape)

    @property
    def channel_dims(self) -> int:
        """Number of leading non-spatial axes (0 or 1)."""
        return int(self._meta["channel_dims"])

    @property
    def num_channels(self) -> int | None:
        """Length of the channel axis, or ``None`` for a scalar volume."""
        return self.shape[0] if self.channel_dims else None

    @property
    def spatial_shape(self) -> Coord:
        """Shape of the spatial axes (z, y, x) in voxels."""
        return self.shape[self.channel_dims :]  # type: ignore[return-value]

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape, channel axis included."""
        return tuple(int(c) for c in self.zarr_array.chunks)

    @property
    def spatial_chunks(self) -> Coord:
        return self.chunks[self.channel_dims :]  # type: ignore[return-value]

    @property
    def offset(self) -> Coord:
        """World coordinate of the first voxel (z, y, x)."""
        return self._meta["offset"]

    @property
    def voxel_size(self) -> Coord:
        """World size of one voxel (z, y, x)."""
        return self._meta["voxel_size"]

    @property
    def axis_names(self) -> list[str]:
        """Names of all axes; channel axes end in ``^`` (e.g. ``["offset^", "z", "y", "x"]``)."""
        return list(self._meta["axis_names"])

    @property
    def units(self) -> list[str]:
        """Units of the spatial axes."""
        return list(self._meta["units"])

    @property
    def types(self) -> list[str]:
        """Type of every axis: ``"channel"``, ``"space"`` or ``"time"``."""
        return list(self._meta["types"])

    @property
    def roi(self) -> tuple[Coord, Coord]:
        """``(offset, shape)`` of the spatial extent in world units."""
        shape = tuple(s * v for s, v in zip(self.spatial_shape, self.voxel_size, strict=True))
        return self.offset, shape  # type: ignore[return-value]

    @property
    def volume_roi(self) -> Roi:
        """The whole array as a voxel ROI."""
        return Roi((0, 0, 0), self.spatial_shape)

    def grid(
        self,
        block_size: Sequence[int] | int,
        context: Sequence[int] | int = (0, 0, 0),
        blocks_per_partition: Sequence[int] | int | str = (1, 1, 1),
    ) -> BlockGrid:
        """The block grid over this array's spatial extent.

        Parameters
        ----------
        block_size : (3,) int
            Write size of a block in voxels.
        context : (3,) int
            Voxels read around each block.
        blocks_per_partition : (3,) int or "auto"
            Blocks per Dagster partition along each axis (``"auto"``: see
            :func:`~volara_assets.geometry.auto_blocks_per_partition`).

        Returns
        -------
        BlockGrid
            With this array's spatial shape, offset and voxel size.
        """
        return BlockGrid(
            shape=self.spatial_shape,
            block_size=block_size,  # type: ignore[arg-type]
            context=context,  # type: ignore[arg-type]
            offset=self.offset,
            voxel_size=self.voxel_size,
            blocks_per_partition=blocks_per_partition,  # type: ignore[arg-type]
        )

    # -- data ----------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style indexing of the full array (channel axis included)."""
        return np.asarray(self.zarr_array[key])

    def read(self, roi: Roi) -> np.ndarray:
        """Read a voxel ROI, zero-filling whatever lies outside the array.

        Parameters
        ----------
        roi : Roi
            Voxels relative to the array's first voxel; may reach partly or
            entirely outside the array (e.g. a block's read ROI with context).

        Returns
        -------
        np.ndarray
            ``(C, *roi.shape)`` with a channel axis, else ``roi.shape``, of the
            array's dtype. Only the part inside the array is fetched, in one
            zarr read; nothing larger than the ROI is allocated.
        """
        inside = roi.intersect(self.volume_roi)
        channels = tuple(self.shape[: self.channel_dims])
        try:
            if inside == roi:
                return np.asarray(self.zarr_array[(Ellipsis, *roi.slices)])
            out = np.zeros(channels + tuple(roi.shape), dtype=self.dtype)
            if not inside.empty:
                target = out[(Ellipsis, *inside.relative_to(roi.begin).slices)]
                # Decode straight into the output's view: no second buffer the size of the ROI.
                self.zarr_array.get_basic_selection(
                    (Ellipsis, *inside.slices),
                    out=default_buffer_prototype().nd_buffer.from_numpy_array(target),
                )
        except Exception as exc:
            raise_bad_chunk(self, inside, exc)
            raise
        return out

    def chunk_file(self, coords: Sequence[int]) -> str:
        """Where the chunk at grid position ``coords`` (every axis, channels first) is stored:
        its file for a local array, else its store key."""
        key = self.zarr_array.metadata.encode_chunk_key(tuple(int(c) for c in coords))
        z = self.zarr_array
        root = getattr(z.store, "root", None)
        return str(Path(root) / z.path / key) if root is not None else f"{self._path}/{key}"

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` into a voxel ROI that lies inside the array.

        Parameters
        ----------
        roi : Roi
            Voxels relative to the array's first voxel; must lie inside.
        data : np.ndarray
            ``(C, *roi.shape)`` with a channel axis, else ``roi.shape``. Its
            dtype must cast to the array's dtype within the same kind (e.g.
            float64 -> float32); integers of another signedness or width are
            accepted when every value fits.

        Raises
        ------
        PermissionError
            If the array was opened read-only.
        ValueError
            If the ROI leaves the array, the shape is wrong or the dtype
            cannot hold the data.

        Notes
        -----
        One zarr assignment. Chunks are written whole and atomically (temp file
        then rename), so processes writing disjoint sets of chunks are safe;
        two writers of one chunk are not: outputs are created with one chunk per
        block (:meth:`BlockGrid.chunk_shape`).
        """
        if self._mode == "r":
            raise PermissionError(f"{self._path}: opened read-only (mode='r'); use mode='r+'")
        if roi.empty or not self.volume_roi.contains(roi):
            raise ValueError(
                f"{self._path}: write roi {roi} must be non-empty and inside the array's "
                f"voxel extent {self.volume_roi}"
            )
        data = np.asarray(data)
        expected = tuple(self.shape[: self.channel_dims]) + tuple(roi.shape)
        if data.shape != expected:
            raise ValueError(
                f"{self._path}: data shape {data.shape} does not match roi {roi}; "
                f"expected {expected}"
            )
        _check_castable(data, self.dtype, self._path)
        self.zarr_array[(Ellipsis, *roi.slices)] = data


def raise_bad_chunk(array: VolumeArray, roi: Roi, exc: BaseException) -> None:
    """Re-raise a failed read of ``roi`` naming the first chunk file that cannot be decoded.

    zarr reports a corrupt chunk (e.g. "Zstd decompression error") without saying
    which one; the chunks under ``roi`` are decoded one by one to find it. Returns
    (so the caller re-raises ``exc``) if every chunk decodes on its own.
    """
    if roi.empty:
        return
    chunks = array.chunks
    spatial = chunks[array.channel_dims :]
    channel_ranges = [range(-(-n // c)) for n, c in zip(array.shape, chunks, strict=False)][
        : array.channel_dims
    ]
    ranges = channel_ranges + [
        range(b // c, (e - 1) // c + 1) for b, e, c in zip(roi.begin, roi.end, spatial, strict=True)
    ]
    for coords in itertools.product(*ranges):
        try:
            array.zarr_array.get_block_selection(coords)
        except Exception as chunk_exc:  # noqa: BLE001 - any decoding failure names the file
            raise ValueError(
                f"chunk file {array.chunk_file(coords)} cannot be decoded "
                f"({type(chunk_exc).__name__}: {chunk_exc}); restore or rewrite that chunk"
            ) from exc


def _check_castable(data: np.ndarray, dtype: np.dtype, path: str) -> None:
    if np.can_cast(data.dtype, dtype, casting="same_kind"):
        return
    if data.dtype.kind in "iub" and dtype.kind in "iu":
        if data.size == 0:
            return
        info = np.iinfo(dtype)
        lo, hi = data.min(), data.max()
        if int(lo) >= int(info.min) and int(hi) <= int(info.max):
            return
        raise ValueError(
            f"{path}: data values in [{lo}, {hi}] do not fit the array's dtype {dtype}"
        )
    raise ValueError(f"{path}: cannot write {data.dtype} data into an array of dtype {dtype}")


def _open_zarr(path: str, mode: str) -> zarr.Array:
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    try:
        # "a" would create a missing node; only open what exists.
        array = zarr.open_array(store=path, mode="r" if mode == "r" else "r+")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no zarr array at {path}") from exc
    except zarr.errors.NodeTypeValidationError as exc:
        raise FileNotFoundError(f"no zarr array at {path} (found a zarr group)") from exc
    return array


class ChunkCache:
    """Decoded chunks of one array, reused by the overlapping reads of neighbouring blocks.

    With a context, a block's read ROI touches up to 27 chunks of a
    block-aligned array, 18 of them shared with the next block along x; zarr
    decodes every touched chunk in full on every read. This cache keeps the
    chunks of the last read (least recently used leave first), so in grid
    order each chunk is decoded about once per row of blocks.

    Memory: at most the chunks one read touches, and never more than
    ``max_bytes``: a read whose chunks would not fit goes straight to zarr.
    Entries are keyed by the chunk file's ``(inode, size, mtime, ctime)`` (zarr
    replaces a chunk file on every write), so a chunk rewritten since it was
    cached is decoded again and a long-lived worker never serves a stale input.
    Arrays outside a local directory store, or sharded, are read directly.
    Reads are serialised by a lock, so threads of one worker may share it.
    """

    def __init__(self, array: VolumeArray, max_bytes: int = 256 * 2**20) -> None:
        self.array = array
        self.max_bytes = int(max_bytes)
        z = array.zarr_array
        root = getattr(z.store, "root", None)
        self._dir = None if root is None or z.shards is not None else Path(root) / z.path
        self._chunks: dict[tuple[int, ...], tuple[tuple[Any, ...], np.ndarray]] = {}
        # Every chunk along the channel axis (usually one) backs a spatial chunk.
        n = -(-array.shape[0] // array.chunks[0]) if array.channel_dims else 1
        self._channel_chunks = [(c,) for c in range(n)] if array.channel_dims else [()]
        self._chunk_bytes = int(np.prod(array.chunks[array.channel_dims :])) * int(
            np.prod(array.shape[: array.channel_dims])
        ) * np.dtype(array.dtype).itemsize
        self._lock = threading.Lock()
        self._fills: dict[tuple[int, ...], np.ndarray] = {}
        self.capacity = 0
        self.decoded = 0

    def read(self, roi: Roi, keep: int = 0) -> np.ndarray:
        """Same result as ``array.read(roi)``; hold at least ``keep`` chunks from now on."""
        with self._lock:
            return self._read(roi, keep)

    def _read(self, roi: Roi, keep: int) -> np.ndarray:
        array = self.array
        if self._dir is None:
            return array.read(roi)
        inside = roi.intersect(array.volume_roi)
        channels = tuple(array.shape[: array.channel_dims])
        out = np.zeros(channels + tuple(roi.shape), dtype=array.dtype)
        if inside.empty:
            return out
        chunk = array.spatial_chunks
        ranges = [
            range(b // c, (e - 1) // c + 1)
            for b, e, c in zip(inside.begin, inside.end, chunk, strict=True)
        ]
        touched = int(np.prod([len(r) for r in ranges]))
        if max(touched, keep) * self._chunk_bytes > self.max_bytes:
            return array.read(roi)  # too large to keep: no better than zarr itself
        self.capacity = max(self.capacity, touched, keep)
        wanted = list(itertools.product(*ranges))
        versions = {c: tuple(self._stat(k + c) for k in self._channel_chunks) for c in wanted}
        stale = [c for c in wanted if c not in self._chunks or self._chunks[c][0] != versions[c]]
        if stale:
            self._make_room(wanted, stale)
            self._decode(stale, versions)
        for coords in wanted:
            entry = self._chunks.pop(coords)
            self._chunks[coords] = entry  # most recently used last
            chunk_roi = self._chunk_roi(coords)
            part = chunk_roi.intersect(inside)
            out[(Ellipsis, *part.relative_to(roi.begin).slices)] = entry[1][
                (Ellipsis, *part.relative_to(chunk_roi.begin).slices)
            ]
        if len(self._chunks) > self.capacity:
            self._drop(list(self._chunks)[: len(self._chunks) - self.capacity])
        return out

    def _make_room(self, wanted: list[tuple[int, ...]], stale: list[tuple[int, ...]]) -> None:
        """Drop stale entries and the least recently used unwanted ones *before* decoding,
        so old and new chunks are never held at once beyond ``capacity``."""
        wanted_set = set(wanted)
        unwanted = [c for c in self._chunks if c not in wanted_set]  # least recent first
        excess = unwanted[: max(0, len(unwanted) - (self.capacity - len(wanted)))]
        self._drop([c for c in stale if c in self._chunks] + excess)

    def _decode(self, stale: list[tuple[int, ...]], versions: dict[tuple[int, ...], Any]) -> None:
        """Decode the stale chunks: one zarr call per column of chunks along x.

        zarr decodes the chunks of one call concurrently and each call has a
        fixed cost; in grid order the stale chunks of a read are one such column
        (the next x), so its box is exactly the chunks to keep and the cache
        holds views of it, without a copy.
        """
        chunk = self.array.spatial_chunks
        by_x: dict[int, list[tuple[int, ...]]] = {}
        channels = tuple(self.array.shape[: self.array.channel_dims])
        for coords in stale:
            if all(v is None for v in versions[coords]):
                # Never written: the fill value, without zarr's per-call cost (most
                # chunks of a sparse volume, e.g. a partly acquired one).
                shape = channels + self._chunk_roi(coords).shape
                self._chunks[coords] = (versions[coords], self._fill(shape))
                continue
            by_x.setdefault(coords[2], []).append(coords)
        for x, column in by_x.items():
            lo = [min(c[a] for c in column) for a in range(2)]
            hi = [max(c[a] for c in column) + 1 for a in range(2)]
            box = Roi(
                (lo[0] * chunk[0], lo[1] * chunk[1], x * chunk[2]),
                ((hi[0] - lo[0]) * chunk[0], (hi[1] - lo[1]) * chunk[1], chunk[2]),
            ).intersect(self.array.volume_roi)
            try:
                data = np.asarray(self.array.zarr_array[(Ellipsis, *box.slices)])
            except Exception as exc:
                raise_bad_chunk(self.array, box, exc)
                raise
            exact = len(column) == (hi[0] - lo[0]) * (hi[1] - lo[1])
            for coords in column:
                view = data[(Ellipsis, *self._chunk_roi(coords).relative_to(box.begin).slices)]
                # A box with chunks not kept would be pinned by views: copy instead.
                self._chunks[coords] = (versions[coords], view if exact else view.copy())
                self.decoded += 1

    def _fill(self, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only chunk of the fill value; chunks of one shape share it."""
        found = self._fills.get(shape)
        if found is None:
            fill = self.array.zarr_array.fill_value
            found = np.full(shape, 0 if fill is None else fill, dtype=self.array.dtype)
            found.flags.writeable = False
            self._fills[shape] = found
        return found

    def _drop(self, chunks: list[tuple[int, ...]]) -> None:
        """Forget chunks; views still sharing a box with them are copied so it is freed."""
        bases = [self._chunks.pop(coords)[1].base for coords in chunks]
        bases = [b for b in bases if b is not None]
        if not bases:
            return
        for other, (version, view) in list(self._chunks.items()):
            if any(view.base is b for b in bases):
                self._chunks[other] = (version, view.copy())

    def _chunk_roi(self, coords: tuple[int, ...]) -> Roi:
        chunk = self.array.spatial_chunks
        begin = tuple(i * c for i, c in zip(coords, chunk, strict=True))
        return Roi(begin, chunk).intersect(self.array.volume_roi)  # type: ignore[arg-type]

    def _stat(self, coords: tuple[int, ...]) -> tuple[int, ...] | None:
        key = self.array.zarr_array.metadata.encode_chunk_key(coords)
        try:
            st = os.stat(self._dir / key)  # type: ignore[operator]
        except FileNotFoundError:
            return None  # never written: the fill value
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def open_array(path: str | Path, mode: str = "r") -> VolumeArray:
    """Open an existing zarr array with its funlib.persistence metadata.

    Parameters
    ----------
    path : str or Path
        Directory of the array, e.g. ``"data/demo.zarr/affs"`` (container and
        array name, possibly nested).
    mode : {"r", "r+", "a"}
        ``"r"`` for reading; ``"r+"`` (or ``"a"``) to write blocks.

    Returns
    -------
    VolumeArray

    Raises
    ------
    FileNotFoundError
        If there is no array at ``path``.
    ValueError
        If the metadata does not describe 3 spatial axes and at most one
        leading channel axis.
    """
    path = str(path)
    return VolumeArray(_open_zarr(path, mode), path, "r" if mode == "r" else "r+")


def _write_group_metadata(path: Path) -> None:
    """Mark the ``.zarr`` container and intermediate dirs as zarr v3 groups, if unmarked.

    funlib.persistence writes only the array itself; the group markers let
    ``zarr.open_group`` and viewers browse the container and change nothing
    for funlib. Written by hard link so concurrent creators never clobber one.
    """
    parts = path.parent.parts
    start = next((i for i, p in enumerate(parts) if p.endswith(".zarr")), None)
    if start is None:
        return
    body = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
    for i in range(start, len(parts)):
        directory = Path(*parts[: i + 1])
        target = directory / "zarr.json"
        if target.exists():
            continue
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".zarr.json.{uuid.uuid4().hex}.partial"
        tmp.write_bytes(body)
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)


def _full_axis_metadata(
    axis_names: Sequence[str],
    types: Sequence[str] | None,
    num_channels: int | None,
    channel_axis_name: str,
) -> tuple[list[str], list[str]]:
    ndim = 3 + (num_channels is not None)
    names = [str(n) for n in axis_names]
    if len(names) == 3 and num_channels is not None:
        names = [channel_axis_name, *names]
    if len(names) != ndim:
        raise ValueError(f"axis_names: expected 3 spatial names (or {ndim} in all), got {names}")
    if num_channels is not None and not names[0].endswith("^"):
        raise ValueError(
            f"channel_axis_name: must end in '^' (funlib's channel marker), got {names[0]!r}"
        )
    if any(n.endswith("^") for n in names[-3:]):
        raise ValueError(f"axis_names: spatial axis names must not end in '^', got {names[-3:]}")
    if types is None:
        full_types = ["channel"] * (ndim - 3) + ["space"] * 3
    else:
        full_types = [str(t) for t in types]
        if len(full_types) == 3 and num_channels is not None:
            full_types = ["channel", *full_types]
        if len(full_types) != ndim or any(
            (t in _PHYSICAL_TYPES) != (i >= ndim - 3) for i, t in enumerate(full_types)
        ):
            raise ValueError(
                f"types: expected 'space' or 'time' for the 3 spatial axes and a non-spatial "
                f"type for the channel axis, got {full_types}"
            )
    return names, full_types


def create_array(
    path: str | Path,
    spatial_shape: Sequence[int],
    dtype: DTypeLike,
    *,
    offset: Sequence[int],
    voxel_size: Sequence[int],
    chunks: Sequence[int],
    axis_names: Sequence[str] = ("z", "y", "x"),
    units: Sequence[str] = ("nm", "nm", "nm"),
    types: Sequence[str] | None = None,
    num_channels: int | None = None,
    channel_axis_name: str = "c^",
    fill_value: int | float = 0,
    overwrite: bool = False,
) -> VolumeArray:
    """Create a zarr v3 array with funlib.persistence metadata, or reuse a matching one.

    Parameters
    ----------
    path : str or Path
        Directory of the array, e.g. ``"data/demo.zarr/fragments"``.
    spatial_shape : (3,) int
        Shape in voxels (z, y, x).
    dtype : dtype-like
        Element type.
    offset : (3,) int
        World coordinate of the first voxel, a multiple of ``voxel_size``.
    voxel_size : (3,) int
        World size of a voxel.
    chunks : (3,) int
        Spatial chunk shape; use ``BlockGrid.chunk_shape()`` so that no two
        blocks share a chunk. A channel axis is stored in one chunk.
    axis_names : sequence of str
        The 3 spatial axis names, or all names including the channel axis.
    units : (3,) str
        Units of the spatial axes.
    types : sequence of str, optional
        Axis types (3 spatial, or all); default ``"channel"`` for the channel
        axis and ``"space"`` otherwise.
    num_channels : int, optional
        Length of a leading channel axis; ``None`` for a scalar volume.
    channel_axis_name : str
        Name of the channel axis; must end in ``^`` (e.g. ``"offset^"``).
    fill_value : int or float
        Value of never-written chunks.
    overwrite : bool
        Delete an existing array at ``path`` first.

    Returns
    -------
    VolumeArray
        Opened for writing (mode ``"r+"``).

    Raises
    ------
    ValueError
        On invalid arguments, or if an array already exists at ``path`` (and
        ``overwrite`` is False) whose dtype, shape, offset, voxel_size or
        chunks differ; the message names the field, expected and found values.

    Notes
    -----
    Metadata is stored as funlib.persistence 0.7 ``prepare_ds`` stores it: the
    array's ``zarr.json`` ``attributes`` hold ``axis_names`` and ``types`` for
    every axis and ``units``, ``voxel_size``, ``offset`` (world units) for the
    spatial axes. Creation is create-if-absent and safe to race from many
    processes: losers reuse the winner's array after the same verification.
    ``overwrite=True`` must not be raced.
    """
    path = str(path)
    spatial_shape = as_coord(spatial_shape, "spatial_shape", minimum=1)
    offset = as_coord(offset, "offset")
    voxel_size = as_coord(voxel_size, "voxel_size", minimum=1)
    chunks = as_coord(chunks, "chunks", minimum=1)
    if any(o % v for o, v in zip(offset, voxel_size, strict=True)):
        raise ValueError(f"offset: must be a multiple of voxel_size {voxel_size}, got {offset}")
    units = [str(u) for u in units]
    if len(units) != 3:
        raise ValueError(f"units: expected 3 spatial units, got {units}")
    if num_channels is not None and (int(num_channels) != num_channels or num_channels < 1):
        raise ValueError(f"num_channels: expected a positive integer or None, got {num_channels}")
    dtype = np.dtype(dtype)
    names, full_types = _full_axis_metadata(axis_names, types, num_channels, channel_axis_name)
    channels = () if num_channels is None else (int(num_channels),)
    shape = channels + spatial_shape
    full_chunks = channels + chunks
    expected = {
        "dtype": dtype,
        "shape": shape,
        "offset": offset,
        "voxel_size": voxel_size,
        "chunks": full_chunks,
    }
    attributes = {
        AXIS_NAMES_ATTR: names,
        UNITS_ATTR: units,
        VOXEL_SIZE_ATTR: list(voxel_size),
        OFFSET_ATTR: list(offset),
        TYPES_ATTR: full_types,
    }

    if not overwrite:
        try:
            return _verified(open_array(path, "r+"), expected)
        except FileNotFoundError:
            pass
    _write_group_metadata(Path(path))
    try:
        zarr.create_array(
            store=path,
            shape=shape,
            chunks=full_chunks,
            dtype=dtype,
            fill_value=fill_value,
            attributes=attributes,
            zarr_format=3,
            overwrite=overwrite,
        )
    except zarr.errors.ContainsArrayError:
        pass  # another process won the race; verify its array below
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayAndGroupError) as exc:
        raise ValueError(f"{path}: a zarr group exists there, not an array") from exc
    # Re-read from disk: if a concurrent creator with other geometry wrote last, say so.
    return _verified(open_array(path, "r+"), expected)


def _verified(array: VolumeArray, expected: dict[str, Any]) -> VolumeArray:
    for name, value in expected.items():
        found = getattr(array, name)
        if found != value:
            raise ValueError(
                f"{array.path}: existing array has {name} {found}, expected {value}; "
                "delete it, pass overwrite=True or choose another path"
            )
    return array
