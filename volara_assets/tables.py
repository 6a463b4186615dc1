"""Column tables passed between kernels and storage: fragment nodes and edges."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class NodeTable:
    """One row per fragment.

    ids : (N,) uint64, non-zero fragment ids.
    positions : (N, 3) float64, world-space centroid (z, y, x).
    sizes : (N,) int64, voxel counts.
    attrs : optional extra per-node columns, each (N,).
    """

    ids: np.ndarray
    positions: np.ndarray
    sizes: np.ndarray
    attrs: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.uint64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        n = len(self.ids)
        if len(self.positions) != n or len(self.sizes) != n:
            raise ValueError(
                f"NodeTable: ids ({n}), positions ({len(self.positions)}) and sizes "
                f"({len(self.sizes)}) must have the same length"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> NodeTable:
        return cls(np.zeros(0, np.uint64), np.zeros((0, 3)), np.zeros(0, np.int64))


@dataclass
class EdgeTable:
    """One row per fragment pair, ``u < v``.

    u, v : (E,) uint64.
    scores : one (E,) float64 column per score attribute; NaN where the
        attribute was not observed for that edge (stored as SQL NULL).
    """

    u: np.ndarray
    v: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.u = np.asarray(self.u, dtype=np.uint64).reshape(-1)
        self.v = np.asarray(self.v, dtype=np.uint64).reshape(-1)
        self.scores = {
            k: np.asarray(c, dtype=np.float64).reshape(-1) for k, c in self.scores.items()
        }
        n = len(self.u)
        if len(self.v) != n or any(len(c) != n for c in self.scores.values()):
            raise ValueError("EdgeTable: u, v and every score column must have the same length")
        if n and np.any(self.u >= self.v):
            raise ValueError("EdgeTable: every edge must have u < v")

    def __len__(self) -> int:
        return len(self.u)

    @classmethod
    def empty(cls, attrs: list[str] | tuple[str, ...] = ()) -> EdgeTable:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), {a: np.zeros(0) for a in attrs})
