"""The tutorial front door's lookup table: a fragment -> segment ``.npz`` file by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from volara_assets.storage.lut import load_lut, lut_path, save_lut

__all__ = ["LUT"]


class LUT(BaseModel):
    """A fragment -> segment lookup table stored as volara's ``.npz``.

    Parameters
    ----------
    path : str or Path
        The file; ``.npz`` is appended when missing (``"cells3d.zarr/lut"`` is
        stored as ``cells3d.zarr/lut.npz``), as volara and ``np.savez`` do.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | str

    @property
    def file(self) -> Path:
        """The ``.npz`` file this table lives in."""
        return lut_path(self.path)

    @property
    def name(self) -> str:
        return self.file.stem

    def exists(self) -> bool:
        return self.file.is_file()

    def load(self) -> np.ndarray | None:
        """The (2, K) uint64 table (fragment ids, segment ids), or ``None`` if not written yet."""
        return load_lut(self.file) if self.exists() else None

    def save(self, lut: np.ndarray) -> Path:
        """Write a (2, K) integer table atomically; returns the file."""
        return save_lut(self.file, lut)

    def drop(self) -> None:
        """Delete the file if present."""
        self.file.unlink(missing_ok=True)
