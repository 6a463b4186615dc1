"""The fragment -> segment lookup table file (``.npz``, as volara writes it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["LUT_KEY", "load_lut", "lut_path", "save_lut"]

LUT_KEY = "fragment_segment_lut"
"""The array name inside the ``.npz`` file."""


def lut_path(path: str | Path) -> Path:
    """The file a LUT at ``path`` lives in: ``path`` with ``.npz`` appended if missing.

    This is ``np.savez``'s rule, applied to ``str`` and ``Path`` alike.
    """
    path = Path(path)
    return path if path.name.endswith(".npz") else path.with_name(path.name + ".npz")


def _check_lut(lut: np.ndarray, where: str) -> np.ndarray:
    if lut.ndim != 2 or lut.shape[0] != 2:
        raise ValueError(f"{where}: expected a LUT of shape (2, K), got shape {lut.shape}")
    if lut.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected an integer LUT, got dtype {lut.dtype}")
    return lut


def save_lut(path: str | Path, lut: np.ndarray) -> Path:
    """Write a fragment -> segment LUT atomically.

    Parameters
    ----------
    path : str or Path
        Target file; ``.npz`` is appended if missing (see :func:`lut_path`).
        The parent directory is created.
    lut : (2, K) integer np.ndarray
        Row 0 fragment ids, row 1 their segment ids; every value < 2**63.

    Returns
    -------
    Path
        The file written. It holds one int64 array ``fragment_segment_lut``
        (compressed), as volara's ``LUT.save`` writes it, and is written to a
        temporary file in the same directory and renamed into place, so
        readers never see a partial file.
    """
    lut = _check_lut(np.asarray(lut), "lut")
    if lut.dtype.kind == "u" and lut.size and int(lut.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"lut: values must be < 2**63 to store as int64, got {int(lut.max())}")
    target = lut_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **{LUT_KEY: lut.astype(np.int64)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_lut(path: str | Path) -> np.ndarray:
    """Read a fragment -> segment LUT.

    Parameters
    ----------
    path : str or Path
        The file, ``.npz`` appended if missing (see :func:`lut_path`).

    Returns
    -------
    (2, K) np.ndarray of uint64
        Row 0 fragment ids, row 1 segment ids.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it holds no ``fragment_segment_lut`` or not a (2, K) array of
        non-negative integers.
    """
    file = lut_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no lookup table at {file}")
    # allow_pickle=False: an object array in a LUT file would run code when unpickled.
    with np.load(file, allow_pickle=False) as data:
        if LUT_KEY not in data:
            raise ValueError(f"{file}: no array {LUT_KEY!r}; found {sorted(data.files)}")
        try:
            stored = data[LUT_KEY]
        except ValueError as exc:
            raise ValueError(
                f"{file}: {LUT_KEY!r} is a pickled object array, which is never loaded; "
                "expected a (2, K) integer array"
            ) from exc
        lut = _check_lut(stored, str(file))
    if lut.dtype.kind == "i" and lut.size and int(lut.min()) < 0:
        raise ValueError(f"{file}: ids must be non-negative, found {int(lut.min())}")
    return lut.astype(np.uint64)
