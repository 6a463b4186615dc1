"""Tests of the synthetic demo volume and its container."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from volara_assets import demo
from volara_assets.demo import NEIGHBORHOOD, default_chunks, make_volume, write_demo

SHAPE = (24, 64, 64)


@pytest.fixture(scope="module")
def volume() -> dict[str, np.ndarray]:
    return make_volume(SHAPE, seed=0)


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for axis in range(3):
        moved = np.moveaxis(labels, axis, 0)
        a, b = moved[1:].ravel(), moved[:-1].ravel()
        both = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[both], b[both]), np.maximum(a[both], b[both])
        pairs |= set(zip(lo.tolist(), hi.tolist(), strict=True))
    return pairs


def test_shapes_and_dtypes(volume: dict[str, np.ndarray]) -> None:
    assert set(volume) == {"raw", "labels", "mask", "affs", "affs_noisy"}
    assert volume["labels"].shape == SHAPE
    assert volume["raw"].shape == (2, *SHAPE) and volume["raw"].dtype == np.uint8
    assert volume["mask"].shape == SHAPE and volume["mask"].dtype == np.uint8
    assert volume["affs"].shape == (3, *SHAPE) and volume["affs"].dtype == np.uint8
    assert volume["affs_noisy"].shape == (3, *SHAPE) and volume["affs_noisy"].dtype == np.uint8


def test_deterministic_per_seed(volume: dict[str, np.ndarray]) -> None:
    again = make_volume(SHAPE, seed=0)
    for name, array in volume.items():
        np.testing.assert_array_equal(again[name], array, err_msg=name)
    other = make_volume(SHAPE, seed=1)
    for name, array in volume.items():
        assert not np.array_equal(other[name], array), name


def test_ids_consecutive_smallest_dtype(volume: dict[str, np.ndarray]) -> None:
    labels = volume["labels"]
    n = int(labels.max())
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    assert labels.dtype == np.uint8  # n < 256 at this shape
    assert n >= 8


def test_every_object_is_one_6_connected_component(volume: dict[str, np.ndarray]) -> None:
    labels = volume["labels"]
    for index, box in enumerate(ndi.find_objects(labels)):
        _, n = ndi.label(labels[box] == index + 1)  # default structure: 6-connectivity
        assert n == 1, f"object {index + 1} has {n} pieces"


def test_background_fraction_and_touching(volume: dict[str, np.ndarray]) -> None:
    labels = volume["labels"]
    assert 0.15 <= np.mean(labels == 0) <= 0.35
    pairs = _touching_pairs(labels)
    touching = {i for pair in pairs for i in pair}
    assert len(pairs) > 0
    assert len(touching) >= 0.7 * labels.max()


def test_default_shape_statistics() -> None:
    labels = demo._make_labels(demo.DemoParams())[0]
    n = int(labels.max())
    assert 150 <= n <= 400
    assert labels.dtype == np.uint16
    assert 0.2 <= np.mean(labels == 0) <= 0.3
    extents = np.array([[s.stop - s.start for s in box] for box in ndi.find_objects(labels)])
    median = np.median(extents, axis=0)
    assert 8 <= median[0] <= 16 and all(20 <= m <= 45 for m in median[1:])
    # Objects span several (20, 100, 100) blocks: many cross a block face.
    blocks = (20, 100, 100)
    crosses = [
        any(b.start // n != (b.stop - 1) // n for b, n in zip(box, blocks, strict=True))
        for box in ndi.find_objects(labels)
    ]
    assert np.mean(crosses) > 0.3


def test_mask_is_foreground(volume: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(volume["mask"], (volume["labels"] > 0).astype(np.uint8))


def test_raw_channels(volume: dict[str, np.ndarray]) -> None:
    labels, raw = volume["labels"], volume["raw"].astype(float)
    boundary = demo._boundaries(labels)
    interior = (labels > 0) & ~ndi.binary_dilation(boundary, iterations=2)
    assert raw[0][boundary].mean() > raw[0][interior].mean() + 30
    assert raw[1][labels > 0].mean() > raw[1][labels == 0].mean() + 30


def test_affs_match_brute_force(volume: dict[str, np.ndarray]) -> None:
    labels, affs = volume["labels"], volume["affs"]
    assert set(np.unique(affs).tolist()) <= {0, 255}
    rng = np.random.default_rng(0)
    points = rng.integers(0, SHAPE, size=(300, 3))
    # Include voxels on both sides of object faces, where the affinity is 0.
    faces = np.argwhere(demo._boundaries(labels))
    points = np.concatenate([points, faces[rng.integers(0, len(faces), 300)]])
    for z, y, x in points:
        for c, (dz, dy, dx) in enumerate(NEIGHBORHOOD):
            nz, ny, nx = z + dz, y + dy, x + dx
            inside = nz < SHAPE[0] and ny < SHAPE[1] and nx < SHAPE[2]
            same = inside and labels[z, y, x] != 0 and labels[z, y, x] == labels[nz, ny, nx]
            assert affs[c, z, y, x] == (255 if same else 0), (c, z, y, x)


def test_noisy_affs_close_but_not_equal(volume: dict[str, np.ndarray]) -> None:
    affs, noisy = volume["affs"], volume["affs_noisy"]
    assert not np.array_equal(affs, noisy)
    agreement = np.mean((noisy > 127) == (affs > 127))
    assert 0.9 < agreement < 1.0


def test_write_demo_metadata_and_idempotence(tmp_path, volume: dict[str, np.ndarray]) -> None:
    from funlib.persistence import open_ds

    path = write_demo(tmp_path / "demo.zarr", SHAPE, seed=0, chunks=(8, 32, 32))
    assert path == tmp_path / "demo.zarr"
    for name in ("raw", "labels", "mask", "affs", "affs_noisy"):
        ds = open_ds(str(path / name))
        assert tuple(ds.voxel_size) == (290, 260, 260)
        assert tuple(ds.offset) == (0, 0, 0)
        assert list(ds.units) == ["nm", "nm", "nm"]
        channel = {"raw": ["c^"], "affs": ["offset^"], "affs_noisy": ["offset^"]}.get(name, [])
        assert list(ds.axis_names) == [*channel, "z", "y", "x"]
        np.testing.assert_array_equal(ds[ds.roi], volume[name], err_msg=name)
        assert zarr.open_array(str(path / name), mode="r").chunks[-3:] == (8, 32, 32)

    note = json.loads((path / "zarr.json").read_text())["attributes"][demo.ATTRS_KEY]
    assert note["seed"] == 0 and note["shape"] == list(SHAPE)
    assert note["aff_noise_sigma"] == demo.DemoParams().aff_noise_sigma

    stamp = (path / "labels" / "zarr.json").stat().st_mtime_ns
    assert write_demo(path, SHAPE, seed=0, chunks=(8, 32, 32)) == path
    assert (path / "labels" / "zarr.json").stat().st_mtime_ns == stamp

    with pytest.raises(FileExistsError, match="seed"):
        write_demo(path, SHAPE, seed=1, chunks=(8, 32, 32))
    write_demo(path, SHAPE, seed=1, chunks=(8, 32, 32), overwrite=True)
    ds = open_ds(str(path / "labels"))
    np.testing.assert_array_equal(ds[ds.roi], make_volume(SHAPE, seed=1)["labels"])

    # An interrupted rewrite leaves an empty note: never taken for a finished demo.
    demo._write_root_attrs(path, {})
    with pytest.raises(FileExistsError, match="not a complete demo"):
        write_demo(path, SHAPE, seed=1, chunks=(8, 32, 32))


def test_write_demo_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="chunks"):
        write_demo(tmp_path / "a.zarr", SHAPE, chunks=(8, 32))
    with pytest.raises(ValueError, match="shape"):
        write_demo(tmp_path / "b.zarr", (0, 64, 64))
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "other").write_text("x")
    with pytest.raises(FileExistsError, match="not a complete demo"):
        write_demo(tmp_path / "c.zarr", SHAPE)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_default_chunks() -> None:
    assert default_chunks((60, 256, 256)) == (20, 100, 100)
    assert default_chunks((128, 512, 512)) == (32, 128, 128)
    assert default_chunks((10, 64, 64)) == (10, 64, 64)


def test_cli(tmp_path, capsys) -> None:
    path = tmp_path / "cli.zarr"
    args = ["--path", str(path), "--shape", *map(str, SHAPE), "--seed", "0"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote") and "objects" in out and "background" in out
    assert demo.main(args) == 0
    assert capsys.readouterr().out.startswith("kept")
    assert demo.main([*args[:-1], "3"]) == 2
    assert "overwrite" in capsys.readouterr().err
