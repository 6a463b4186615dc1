"""Tests of the fragment -> segment lookup table files."""

from __future__ import annotations

import numpy as np
import pytest

from volara_assets.storage import load_lut, save_lut


def test_round_trip(tmp_path):
    lut = np.array([[1, 2, 3, 2**40], [7, 7, 9, 9]], dtype=np.uint64)
    written = save_lut(tmp_path / "luts" / "lut", lut)
    assert written == tmp_path / "luts" / "lut.npz"
    assert sorted(p.name for p in (tmp_path / "luts").iterdir()) == ["lut.npz"]  # no temp left
    with np.load(written) as data:
        assert data.files == ["fragment_segment_lut"]
        assert data["fragment_segment_lut"].dtype == np.int64
    for path in (tmp_path / "luts" / "lut", str(tmp_path / "luts" / "lut.npz")):
        loaded = load_lut(path)
        assert loaded.dtype == np.uint64
        np.testing.assert_array_equal(loaded, lut)


def test_overwrite_replaces(tmp_path):
    save_lut(tmp_path / "lut.npz", np.array([[1], [1]]))
    save_lut(tmp_path / "lut.npz", np.array([[1, 2], [5, 5]]))
    np.testing.assert_array_equal(load_lut(tmp_path / "lut.npz"), [[1, 2], [5, 5]])


def test_empty_lut(tmp_path):
    save_lut(tmp_path / "lut", np.zeros((2, 0), np.uint64))
    assert load_lut(tmp_path / "lut").shape == (2, 0)


def test_loads_volara_file(tmp_path):
    # volara's LUT.save: np.savez_compressed(file, fragment_segment_lut=lut.astype(int)).
    lut = np.array([[3, 4, 5], [3, 3, 5]])
    np.savez_compressed(tmp_path / "volara_lut.npz", fragment_segment_lut=lut.astype(int))
    loaded = load_lut(tmp_path / "volara_lut")
    assert loaded.dtype == np.uint64
    np.testing.assert_array_equal(loaded, [[3, 4, 5], [3, 3, 5]])


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_lut(tmp_path / "nowhere")


def test_bad_shapes_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(2, K\), got shape \(3, 2\)"):
        save_lut(tmp_path / "lut", np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="integer"):
        save_lut(tmp_path / "lut", np.zeros((2, 2), np.float32))
    np.savez(tmp_path / "flat.npz", fragment_segment_lut=np.arange(4))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        load_lut(tmp_path / "flat.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="fragment_segment_lut"):
        load_lut(tmp_path / "other.npz")
    assert not (tmp_path / "lut.npz").exists()
