"""Chunk fingerprints: a data version per partition from the chunk files its blocks read.

Storage logic only (file names, ``stat``, hashes); the Dagster layer turns these
versions into observations of the input asset.
"""

import hashlib
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import zarr

from ..geometry import BlockGrid, Roi

__all__ = ["ChunkFiles", "VersionMode", "array_exists", "input_state", "partition_data_versions"]

VersionMode = Literal["stat", "content"]
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


def partition_data_versions(
    path: str | Path, grid: BlockGrid, mode: VersionMode = "stat"
) -> dict[str, str]:
    """A data version per partition from the chunk files its blocks read.

    A partition reads the read ROIs (write ROI plus context) of its blocks; its
    version is a hash over the array's ``zarr.json`` and, for every stored chunk
    file under those ROIs, its key and a fingerprint. Two fingerprints exist:

    ``"stat"`` (the default, what the sensor and the observation use)
        file size and modification time in nanoseconds. Observing costs one
        ``stat`` per chunk, never reading voxel data, so re-observing a
        terabyte volume on a schedule takes seconds. A chunk rewritten with
        identical bytes counts as changed: a needless recomputation, never a
        missed one. It assumes a POSIX filesystem that updates mtimes, as a
        local or network mount does.
    ``"content"``
        SHA-256 of the chunk file bytes: exact, but reads the whole volume on
        every observation; for small volumes or audits.

    Parameters
    ----------
    path : str or Path
        Directory of a zarr (v2 or v3) array whose trailing three axes are the
        grid's spatial axes.
    grid : BlockGrid
        The block grid; partition keys come from it.
    mode : {"stat", "content"}

    Returns
    -------
    dict
        Partition key -> 32-hex-digit version. A change confined to one chunk
        changes exactly the partitions whose read ROI covers that chunk.
    """
    files = ChunkFiles(path)
    meta = files.metadata_digest()
    fingerprints: dict[tuple[int, ...], str] = {}

    def fingerprint(coords: tuple[int, ...]) -> str:
        found = fingerprints.get(coords)
        if found is None:
            file = files.file(coords)
            try:
                if mode == "content":
                    found = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
                else:
                    st = file.stat()
                    found = f"{st.st_size}:{st.st_mtime_ns}"
            except FileNotFoundError:
                found = _ABSENT
            fingerprints[coords] = found
        return found

    versions: dict[str, str] = {}
    for key in grid.partition_keys:
        coords: set[tuple[int, ...]] = set()
        for block in grid.partition_blocks(key):
            coords.update(files.coords_under(block.read_roi))
        digest = hashlib.sha256(meta.encode())
        for c in sorted(coords):
            digest.update(f"{'.'.join(map(str, c))}={fingerprint(c)};".encode())
        versions[key] = digest.hexdigest()[:32]
    return versions


def input_state(versions: Mapping[str, str]) -> str:
    """One hash of every partition's version: the input sensor's cursor."""
    text = json.dumps(sorted(versions.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def array_exists(path: str) -> bool:
    """Whether a zarr (v2 or v3) array is stored at ``path``."""
    root = Path(path)
    return (root / "zarr.json").is_file() or (root / ".zarray").is_file()


