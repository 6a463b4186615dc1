"""Picklable handles to stored arrays, graphs and LUTs, opened once per worker process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import Roi
from ..tables import EdgeTable, NodeTable
from .arrays import ChunkCache, VolumeArray, open_array
from .graph import GraphStore
from .lut import load_lut

# Per-process caches: a block task must not reopen arrays or engines per block.
_ARRAYS: dict[tuple[str, str], VolumeArray] = {}
_STORES: dict[tuple[Any, ...], GraphStore] = {}
_LUTS: dict[tuple[str, int, int], np.ndarray] = {}
_CHUNK_CACHES: dict[str, ChunkCache] = {}


@dataclass(frozen=True)
class ArrayHandle:
    """A zarr array by path; ``read``/``write`` take voxel ROIs of the spatial grid."""

    path: str

    def open(self, mode: str = "r") -> VolumeArray:
        key = (self.path, mode)
        array = _ARRAYS.get(key)
        if array is None:
            array = _ARRAYS[key] = open_array(self.path, mode=mode)
        return array

    def read(self, roi: Roi) -> np.ndarray:
        return self.open("r").read(roi)

    def read_reusing_chunks(self, roi: Roi, keep: int = 0) -> np.ndarray:
        """``read``, keeping the decoded chunks of the last read (at least ``keep``) for
        the next block's."""
        cache = _CHUNK_CACHES.get(self.path)
        if cache is None:
            cache = _CHUNK_CACHES[self.path] = ChunkCache(self.open("r"))
        return cache.read(roi, keep)

    def write(self, roi: Roi, data: np.ndarray) -> None:
        self.open("r+").write(roi, data)


@dataclass(frozen=True)
class GraphHandle:
    """A SQL fragment graph by URL and declared attribute columns."""

    url: str
    node_attrs: tuple[tuple[str, str], ...] = ()
    edge_attrs: tuple[tuple[str, str], ...] = ()

    def store(self) -> GraphStore:
        key = (os.getpid(), self.url, self.node_attrs, self.edge_attrs)
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = GraphStore(
                self.url, node_attrs=dict(self.node_attrs), edge_attrs=dict(self.edge_attrs)
            )
        return store

    def write_nodes(self, block: int, nodes: NodeTable) -> None:
        self.store().write_nodes(block, nodes)

    def write_edges(self, block: int, edges: EdgeTable) -> None:
        self.store().write_edges(block, edges)


@dataclass(frozen=True)
class LutHandle:
    """A ``.npz`` lookup table by path, loaded once per process and file version."""

    path: str

    def load(self) -> np.ndarray:
        st = os.stat(self.path)
        key = (self.path, st.st_mtime_ns, st.st_size)
        lut = _LUTS.get(key)
        if lut is None:
            _LUTS.clear()
            lut = load_lut(self.path)
            # Sorted by fragment id once per load, so every block's relabel finds
            # its keys already in order.
            lut = _LUTS[key] = np.ascontiguousarray(lut[:, np.argsort(lut[0], kind="stable")])
        return lut
