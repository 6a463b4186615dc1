"""Input fingerprints: an exact data version per partition, kept up to date incrementally.

Storage logic only (file names, ``stat``, chunk reads, hashes, a cache file); the
Dagster layer turns these versions into observations of the input asset.

A partition's version hashes the voxels inside its read ROI (its blocks' write
ROIs grown by the context), so it changes exactly when one of those voxels does.
Observing stays cheap because the hash is assembled from *sub-fingerprints*: for
every chunk file and every partition whose read ROI meets it, a hash of that
chunk's part inside the read ROI. They live in a small JSON cache next to the
pipeline's outputs (never inside the input, which may be read-only or shared by
pipelines with other grids), keyed by each chunk file's size and mtime. An
observation ``stat``s every chunk file, reads only the chunks whose ``stat``
changed (or that the cache lacks), and rehashes only the partitions those chunks
reach: its cost in voxel reads is proportional to the changed data, not to the
volume. The first observation (no cache) reads the whole input once.

Why a file and not the sensor cursor or the Dagster instance: the versions are
computed by the input sensor (in the daemon), by the observe job (in a run) and
by the UI's "Observe" (in a run), which share no cursor; a file on the storage
that already holds the outputs is reachable from all of them, including Dask or
HPC workers, and deleting it costs one full read, never a wrong version. It is
written atomically (temporary file, then rename); two observers racing keep
either cache, both correct.
"""

import hashlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..geometry import BlockGrid, Roi

__all__ = [
    "ChunkFiles",
    "Observation",
    "array_exists",
    "input_state",
    "observe_input",
    "partition_data_versions",
]

#: Stands for a chunk that was never written (zarr reads its fill value).
_ABSENT = "-"


class ChunkFiles:
    """The chunk files of a zarr (v2 or v3) array whose trailing three axes are spatial.

    Files are the stored objects: shards when the array is sharded, else chunks.
    """

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.array = zarr.open_array(store=str(self.root), mode="r")
        shards = getattr(self.array, "shards", None)
        chunks = tuple(int(s) for s in (shards or self.array.chunks))
        channel_dims = len(chunks) - 3
        self.channel_chunks = chunks[:channel_dims]
        self.spatial_chunks = chunks[channel_dims:]
        self.spatial_shape = tuple(int(s) for s in self.array.shape[channel_dims:])
        self.channel_grid = [
            range(-(-int(s) // c))
            for s, c in zip(self.array.shape[:channel_dims], chunks[:channel_dims], strict=True)
        ]
        self._encode = self.array.metadata.encode_chunk_key

    def coords_under(self, roi: Roi) -> list[tuple[int, ...]]:
        """Chunk coordinates (channel chunks first) of every file ``roi`` touches."""
        inside = roi.intersect(Roi((0, 0, 0), self.spatial_shape))  # type: ignore[arg-type]
        if inside.empty:
            return []
        ranges = [
            range(b // c, (e - 1) // c + 1)
            for b, e, c in zip(inside.begin, inside.end, self.spatial_chunks, strict=True)
        ]
        return list(itertools.product(*self.channel_grid, *ranges))

    def file(self, coords: tuple[int, ...]) -> Path:
        return self.root / self._encode(coords)

    def metadata_digest(self) -> str:
        """SHA-256 of the array's metadata files (``zarr.json``, or ``.zarray`` + ``.zattrs``)."""
        v3 = self.array.metadata.zarr_format == 3
        names = ("zarr.json",) if v3 else (".zarray", ".zattrs")
        return "".join(
            hashlib.sha256((self.root / n).read_bytes()).hexdigest()
            for n in names
            if (self.root / n).exists()
        )

    def stored(self, roi: Roi) -> tuple[int, int]:
        """How many chunk files under ``roi`` exist, and their bytes (absent = fill value)."""
        count = size = 0
        for coords in self.coords_under(roi):
            try:
                size += self.file(coords).stat().st_size
                count += 1
            except FileNotFoundError:
                pass
        return count, size


@dataclass
class Observation:
    """Versions of one observation and what they cost.

    ``chunks`` chunk files were ``stat``-ed; ``chunks_read`` of them (``bytes_read``
    decoded bytes) were read because they changed or were not in the cache;
    ``partitions_rehashed`` partitions had their version recomputed.
    """

    versions: dict[str, str]
    chunks: int
    chunks_read: int = 0
    bytes_read: int = 0
    partitions_rehashed: int = 0
    seconds: float = 0.0


def _coords_text(coords: tuple[int, ...]) -> str:
    return ".".join(map(str, coords))


def _grid_identity(files: ChunkFiles, grid: BlockGrid) -> str:
    """What the cache is valid for: the array's metadata and the grid's partitions."""
    text = json.dumps(
        [
            files.metadata_digest(),
            files.spatial_chunks,
            grid.shape,
            grid.block_size,
            grid.context,
            grid.blocks_per_partition,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load_cache(path: Path | None, identity: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"identity": identity, "chunks": {}, "versions": {}}
    if path is None or not path.is_file():
        return empty
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):  # a torn or foreign file: start over, never trust it
        return empty
    if not isinstance(cache, dict) or cache.get("identity") != identity:
        return empty
    return cache


def _save_cache(path: Path, cache: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def observe_input(
    path: str | Path, grid: BlockGrid, cache_path: str | Path | None = None
) -> Observation:
    """Exact per-partition versions of the input at ``path``, reusing ``cache_path``.

    Parameters
    ----------
    path : str or Path
        Directory of a zarr (v2 or v3) array whose trailing three axes are the
        grid's spatial axes.
    grid : BlockGrid
        The block grid; partition keys and read ROIs come from it.
    cache_path : str or Path, optional
        The sub-fingerprint cache (created or updated here). Without one every
        chunk is read.

    Returns
    -------
    Observation
        ``versions``: partition key -> 32-hex-digit version, a hash of the
        array's metadata and of every voxel inside the partition's read ROI
        (voxels outside the volume read as the fill value and are left out).
        It changes exactly when a voxel inside the read ROI changes; rewriting
        a chunk with the same values changes nothing.
    """
    start = time.perf_counter()
    files = ChunkFiles(path)
    identity = _grid_identity(files, grid)
    cache_file = Path(cache_path) if cache_path is not None else None
    cache = _load_cache(cache_file, identity)
    chunks: dict[str, list[Any]] = cache["chunks"]
    versions: dict[str, str] = cache["versions"]
    obs = Observation(versions=versions, chunks=0)

    # Partitions without a version yet, and below those whose sub-fingerprints changed.
    touched = set(grid.partition_keys) - set(versions)
    dirty = False  # a chunk's stat changed: remembered even if its voxels did not
    for coords in files.coords_under(grid.volume_roi):
        obs.chunks += 1
        name = _coords_text(coords)
        try:
            st = files.file(coords).stat()
            stat = f"{st.st_size}:{st.st_mtime_ns}"
        except FileNotFoundError:
            stat = _ABSENT
        entry = chunks.get(name)
        if entry is not None and entry[0] == stat:
            continue
        parts = _sub_fingerprints(files, grid, coords, absent=stat == _ABSENT, obs=obs)
        old = {} if entry is None else entry[1]
        touched.update(k for k, v in parts.items() if old.get(k) != v)
        chunks[name] = [stat, parts]
        dirty = True

    meta = files.metadata_digest()
    for key in touched:
        digest = hashlib.sha256(meta.encode())
        for coords in files.coords_under(grid.partition_read_roi(key)):
            name = _coords_text(coords)
            digest.update(f"{name}={chunks[name][1][key]};".encode())
        versions[key] = digest.hexdigest()[:32]
    obs.partitions_rehashed = len(touched)
    obs.versions = {k: versions[k] for k in grid.partition_keys}
    if cache_file is not None and (dirty or touched or not cache_file.is_file()):
        _save_cache(cache_file, cache)
    obs.seconds = time.perf_counter() - start
    return obs


def _sub_fingerprints(
    files: ChunkFiles, grid: BlockGrid, coords: tuple[int, ...], *, absent: bool, obs: Observation
) -> dict[str, str]:
    """Partition key -> hash of chunk ``coords``' voxels inside that partition's read ROI."""
    channel = coords[: len(files.channel_grid)]
    spatial = coords[len(files.channel_grid) :]
    roi = Roi(
        tuple(c * s for c, s in zip(spatial, files.spatial_chunks, strict=True)),  # type: ignore[arg-type]
        files.spatial_chunks,
    ).intersect(grid.volume_roi)
    keys = grid.partitions_reading(roi)
    if absent:
        return dict.fromkeys(keys, _ABSENT)
    selection = tuple(
        slice(c * s, (c + 1) * s) for c, s in zip(channel, files.channel_chunks, strict=True)
    ) + roi.slices
    data = np.asarray(files.array[selection])
    obs.chunks_read += 1
    obs.bytes_read += data.nbytes
    parts = {}
    for key in keys:
        inside = roi.intersect(grid.partition_read_roi(key))
        piece = np.ascontiguousarray(data[(Ellipsis, *inside.relative_to(roi.begin).slices)])
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{inside.begin}{inside.shape}".encode())
        digest.update(piece.tobytes())
        parts[key] = digest.hexdigest()
    return parts


def partition_data_versions(
    path: str | Path, grid: BlockGrid, cache_path: str | Path | None = None
) -> dict[str, str]:
    """Partition key -> exact data version of the input (see :func:`observe_input`)."""
    return observe_input(path, grid, cache_path).versions


def input_state(versions: Mapping[str, str]) -> str:
    """One hash of every partition's version: the input sensor's cursor."""
    text = json.dumps(sorted(versions.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def array_exists(path: str) -> bool:
    """Whether a zarr (v2 or v3) array is stored at ``path``."""
    root = Path(path)
    return (root / "zarr.json").is_file() or (root / ".zarray").is_file()


