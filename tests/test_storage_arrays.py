"""Tests of zarr volumes with funlib.persistence metadata (real arrays on disk)."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import warnings

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi as FunlibRoi
from funlib.persistence import open_ds, prepare_ds

from volara_assets.geometry import Roi
from volara_assets.storage import (
    VolumeArray,
    create_array,
    open_array,
)


@pytest.fixture
def labels(tmp_path) -> VolumeArray:
    """A (4, 5, 6) uint64 volume with values 1..120, offset (8, 0, 4), voxel (2, 1, 1)."""
    array = create_array(
        tmp_path / "c.zarr" / "labels",
        (4, 5, 6),
        np.uint64,
        offset=(8, 0, 4),
        voxel_size=(2, 1, 1),
        chunks=(2, 5, 3),
    )
    array.write(Roi((0, 0, 0), (4, 5, 6)), np.arange(1, 121, dtype=np.uint64).reshape(4, 5, 6))
    return array


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "c.zarr" / "affs"
    created = create_array(
        path,
        (6, 8, 10),
        np.float32,
        offset=(580, 260, 0),
        voxel_size=(290, 260, 260),
        chunks=(3, 4, 5),
        num_channels=3,
        channel_axis_name="offset^",
    )
    for array in (created, open_array(path)):
        assert array.path == str(path)
        assert array.dtype == np.float32
        assert array.shape == (3, 6, 8, 10)
        assert array.spatial_shape == (6, 8, 10)
        assert array.channel_dims == 1
        assert array.num_channels == 3
        assert array.chunks == (3, 3, 4, 5)
        assert array.spatial_chunks == (3, 4, 5)
        assert array.offset == (580, 260, 0)
        assert array.voxel_size == (290, 260, 260)
        assert array.axis_names == ["offset^", "z", "y", "x"]
        assert array.units == ["nm", "nm", "nm"]
        assert array.types == ["channel", "space", "space", "space"]
        assert array.roi == ((580, 260, 0), (1740, 2080, 2600))
    # The on-disk layout is funlib.persistence 0.7's: attributes of the array's zarr.json.
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["attributes"] == {
        "axis_names": ["offset^", "z", "y", "x"],
        "units": ["nm", "nm", "nm"],
        "voxel_size": [290, 260, 260],
        "offset": [580, 260, 0],
        "types": ["channel", "space", "space", "space"],
    }
    assert json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["node_type"] == "group"


def test_scalar_volume_has_no_channels(labels):
    assert labels.channel_dims == 0
    assert labels.num_channels is None
    assert labels.axis_names == ["z", "y", "x"]
    assert labels.types == ["space", "space", "space"]


def test_read_inside_and_getitem(labels):
    expected = np.arange(1, 121, dtype=np.uint64).reshape(4, 5, 6)
    np.testing.assert_array_equal(labels.read(Roi((1, 2, 3), (2, 2, 2))), expected[1:3, 2:4, 3:5])
    np.testing.assert_array_equal(labels[3], expected[3])
    np.testing.assert_array_equal(labels[:, 0, 0], [1, 31, 61, 91])


def test_read_partly_outside_zero_fills(labels):
    out = labels.read(Roi((-1, 3, 4), (2, 3, 3)))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint64
    # z=-1 is outside; z=0 holds rows y=3,4 (y=5 outside), columns x=4,5 (x=6 outside).
    expected = np.array(
        [
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[23, 24, 0], [29, 30, 0], [0, 0, 0]],
        ],
        dtype=np.uint64,
    )
    np.testing.assert_array_equal(out, expected)


def test_read_fully_outside_is_zeros(labels):
    out = labels.read(Roi((10, -7, 0), (2, 2, 2)))
    np.testing.assert_array_equal(out, np.zeros((2, 2, 2), np.uint64))


def test_read_with_channels_zero_fills(tmp_path):
    array = create_array(
        tmp_path / "c.zarr" / "affs",
        (2, 2, 2),
        np.uint8,
        offset=(0, 0, 0),
        voxel_size=(1, 1, 1),
        chunks=(2, 2, 2),
        num_channels=2,
    )
    data = np.arange(1, 17, dtype=np.uint8).reshape(2, 2, 2, 2)
    array.write(array.volume_roi, data)
    out = array.read(Roi((1, 1, 1), (2, 1, 1)))
    np.testing.assert_array_equal(out, np.array([[[[8]], [[0]]], [[[16]], [[0]]]], np.uint8))


def test_write_read_block_round_trip(tmp_path):
    array = create_array(
        tmp_path / "c.zarr" / "fragments",
        (8, 8, 8),
        np.uint64,
        offset=(0, 0, 0),
        voxel_size=(4, 4, 4),
        chunks=(4, 4, 4),
    )
    grid = array.grid((4, 4, 4), context=(1, 1, 1))
    block = grid.block(7)  # the last block: z, y, x in [4, 8)
    data = np.full((4, 4, 4), 2**40 + 5, np.uint64)
    array.write(block.write_roi, data)
    np.testing.assert_array_equal(open_array(array.path).read(block.write_roi), data)
    np.testing.assert_array_equal(array.read(grid.block(0).write_roi), np.zeros((4, 4, 4)))
    # Exactly one chunk file was written (the others stay at the fill value).
    chunk_files = sorted(
        p.relative_to(array.path).as_posix()
        for p in (tmp_path / "c.zarr" / "fragments" / "c").rglob("*")
        if p.is_file()
    )
    assert chunk_files == ["c/1/1/1"]


def test_write_validates(labels, tmp_path):
    with pytest.raises(ValueError, match=r"inside the array"):
        labels.write(Roi((3, 0, 0), (2, 1, 1)), np.zeros((2, 1, 1), np.uint64))
    with pytest.raises(ValueError, match=r"expected \(1, 1, 2\)"):
        labels.write(Roi((0, 0, 0), (1, 1, 2)), np.zeros((1, 2, 1), np.uint64))
    with pytest.raises(ValueError, match=r"cannot write float64"):
        labels.write(Roi((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.float64))
    with pytest.raises(ValueError, match=r"do not fit"):
        labels.write(Roi((0, 0, 0), (1, 1, 1)), np.full((1, 1, 1), -1, np.int64))
    # Non-negative int64 labels fit uint64.
    labels.write(Roi((0, 0, 0), (1, 1, 1)), np.full((1, 1, 1), 7, np.int64))
    assert labels[0, 0, 0] == 7
    with pytest.raises(PermissionError, match="read-only"):
        open_array(labels.path).write(Roi((0, 0, 0), (1, 1, 1)), np.ones((1, 1, 1), np.uint64))


def test_open_missing_names_path(tmp_path):
    missing = tmp_path / "c.zarr" / "nothing"
    with pytest.raises(FileNotFoundError, match="nothing"):
        open_array(missing)


def test_create_reuses_matching_array(labels):
    again = create_array(
        labels.path, (4, 5, 6), np.uint64, offset=(8, 0, 4), voxel_size=(2, 1, 1), chunks=(2, 5, 3)
    )
    # Reuse keeps the data.
    assert again[0, 0, 0] == 1 and again[3, 4, 5] == 120


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": np.uint32}, r"dtype uint64, expected uint32"),
        ({"spatial_shape": (4, 5, 7)}, r"shape \(4, 5, 6\), expected \(4, 5, 7\)"),
        ({"offset": (10, 0, 4)}, r"offset \(8, 0, 4\), expected \(10, 0, 4\)"),
        ({"voxel_size": (1, 1, 1)}, r"voxel_size \(2, 1, 1\), expected \(1, 1, 1\)"),
        ({"chunks": (4, 5, 6)}, r"chunks \(2, 5, 3\), expected \(4, 5, 6\)"),
    ],
)
def test_create_mismatch_names_field(labels, change, message):
    args = {
        "spatial_shape": (4, 5, 6),
        "dtype": np.uint64,
        "offset": (8, 0, 4),
        "voxel_size": (2, 1, 1),
        "chunks": (2, 5, 3),
    } | change
    with pytest.raises(ValueError, match=message):
        create_array(labels.path, **args)


def test_create_overwrite_replaces(labels):
    new = create_array(
        labels.path,
        (2, 2, 2),
        np.float32,
        offset=(0, 0, 0),
        voxel_size=(1, 1, 1),
        chunks=(2, 2, 2),
        overwrite=True,
    )
    assert new.shape == (2, 2, 2) and new.dtype == np.float32
    np.testing.assert_array_equal(new[:], np.zeros((2, 2, 2), np.float32))


def test_create_rejects_bad_arguments(tmp_path):
    common = {"offset": (0, 0, 0), "voxel_size": (2, 2, 2), "chunks": (2, 2, 2)}
    with pytest.raises(ValueError, match="offset: must be a multiple of voxel_size"):
        create_array(tmp_path / "a", (4, 4, 4), np.uint8, **common | {"offset": (1, 0, 0)})
    with pytest.raises(ValueError, match="channel_axis_name"):
        create_array(tmp_path / "a", (4, 4, 4), np.uint8, num_channels=2, channel_axis_name="c",
                     **common)
    assert not (tmp_path / "a").exists()


def _create_worker(path: str) -> tuple[int, ...]:
    array = create_array(
        path, (8, 8, 8), np.uint32, offset=(0, 0, 0), voxel_size=(1, 1, 1), chunks=(4, 4, 4)
    )
    return array.shape


def _write_worker(args: tuple[VolumeArray, int]) -> None:
    array, index = args
    block = array.grid((4, 4, 4)).block(index)
    array.write(block.write_roi, np.full((4, 4, 4), index + 1, np.uint32))


def test_concurrent_create_and_block_writes(tmp_path):
    path = str(tmp_path / "c.zarr" / "fragments")
    # forkserver, not fork: earlier tests leave threads (zarr's event loop, Dask)
    # in this process, and forking a threaded process can deadlock the children.
    ctx = mp.get_context("forkserver")
    with ctx.Pool(4) as pool:
        assert pool.map(_create_worker, [path] * 4) == [(8, 8, 8)] * 4
        array = open_array(path, "r+")
        # VolumeArray pickles to workers (reopened there); 8 blocks, 8 chunks, 4 processes.
        pool.map(_write_worker, [(array, i) for i in range(8)])
    data = array[:]
    for block in array.grid((4, 4, 4)).blocks():
        np.testing.assert_array_equal(data[block.write_roi.slices], block.index + 1)


def test_pickle_reopens(labels):
    clone = pickle.loads(pickle.dumps(labels))
    assert clone.offset == (8, 0, 4) and clone.mode == "r+"
    assert clone[1, 1, 1] == labels[1, 1, 1] == 38


def test_open_plain_zarr_defaults(tmp_path):
    zarr.create_array(str(tmp_path / "raw"), shape=(2, 3, 4), chunks=(2, 3, 4), dtype="uint8")
    array = open_array(tmp_path / "raw")
    assert array.offset == (0, 0, 0)
    assert array.voxel_size == (1, 1, 1)
    assert array.axis_names == ["d0", "d1", "d2"]
    assert array.units == ["", "", ""]


# -- funlib.persistence interop ------------------------------------------------


def test_funlib_array_opens_here(tmp_path):
    path = str(tmp_path / "data.zarr" / "affs")
    data = np.random.default_rng(0).random((3, 6, 8, 10), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        written = prepare_ds(
            path,
            (3, 6, 8, 10),
            offset=(290 * 2, 260, 0),
            voxel_size=(290, 260, 260),
            axis_names=["offset^", "z", "y", "x"],
            units=["nm", "nm", "nm"],
            chunk_shape=(3, 3, 4, 5),
            dtype=np.float32,
        )
        written[written.roi] = data
    array = open_array(path)
    assert array.offset == (580, 260, 0)
    assert array.voxel_size == (290, 260, 260)
    assert array.axis_names == ["offset^", "z", "y", "x"]
    assert array.units == ["nm", "nm", "nm"]
    assert array.num_channels == 3 and array.spatial_shape == (6, 8, 10)
    assert array.spatial_chunks == (3, 4, 5)
    assert array.roi == ((580, 260, 0), (1740, 2080, 2600))
    np.testing.assert_array_equal(array.read(array.volume_roi), data)
    voxel = array.read(Roi((5, 7, 9), (1, 1, 1)))
    np.testing.assert_array_equal(voxel[:, 0, 0, 0], data[:, 5, 7, 9])


def test_funlib_array_without_types_opens_here(tmp_path):
    # Older writers kept only axis_names: the '^' suffix marks the channel axis.
    path = tmp_path / "old.zarr" / "affs"
    zarr.create_array(
        str(path),
        shape=(2, 4, 4, 4),
        chunks=(2, 4, 4, 4),
        dtype="float32",
        attributes={
            "axis_names": ["c^", "z", "y", "x"],
            "offset": [40, 0, 0],
            "voxel_size": [40, 4, 4],
            "units": ["nm", "nm", "nm"],
        },
    )
    array = open_array(path)
    assert array.num_channels == 2
    assert array.types == ["channel", "space", "space", "space"]
    assert array.offset == (40, 0, 0) and array.voxel_size == (40, 4, 4)


def test_our_array_opens_in_funlib(tmp_path):
    path = tmp_path / "data.zarr" / "affs"
    array = create_array(
        path,
        (6, 8, 10),
        np.float32,
        offset=(580, 260, 0),
        voxel_size=(290, 260, 260),
        chunks=(3, 4, 5),
        num_channels=3,
        channel_axis_name="offset^",
    )
    data = np.random.default_rng(1).random((3, 6, 8, 10), dtype=np.float32)
    array.write(array.volume_roi, data)
    theirs = open_ds(str(path))
    assert tuple(theirs.roi.offset) == (580, 260, 0)
    assert tuple(theirs.roi.shape) == (1740, 2080, 2600)
    assert tuple(theirs.voxel_size) == (290, 260, 260)
    assert tuple(theirs.offset) == (580, 260, 0)
    assert theirs.axis_names == ["offset^", "z", "y", "x"]
    assert theirs.units == ["nm", "nm", "nm"]
    assert theirs.types == ["channel", "space", "space", "space"]
    np.testing.assert_array_equal(theirs.to_ndarray(theirs.roi), data)
    # A world ROI in funlib reads the same voxels as our voxel ROI.
    np.testing.assert_array_equal(
        theirs.to_ndarray(FunlibRoi((580 + 290, 260 + 2 * 260, 0), (290, 260, 3 * 260))),
        array.read(Roi((1, 2, 0), (1, 1, 3))),
    )
    # funlib's prepare_ds sees our array as compatible and reuses it.
    again = prepare_ds(
        str(path),
        (3, 6, 8, 10),
        offset=(580, 260, 0),
        voxel_size=(290, 260, 260),
        axis_names=["offset^", "z", "y", "x"],
        units=["nm", "nm", "nm"],
        types=["channel", "space", "space", "space"],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(again.to_ndarray(again.roi), data)


def test_chunk_cache_reads_like_read_and_decodes_shared_chunks_once(tmp_path):
    from volara_assets.storage import ChunkCache

    rng = np.random.default_rng(0)
    affs = create_array(
        tmp_path / "c.zarr" / "affs", (12, 30, 40), np.uint8, offset=(0, 0, 0),
        voxel_size=(1, 1, 1), chunks=(4, 10, 10), num_channels=3,
    )
    data = rng.integers(0, 256, (3, 12, 30, 40), dtype=np.uint8)
    affs.write(affs.volume_roi, data)
    grid = affs.grid((4, 10, 10), context=(1, 2, 2))
    cache = ChunkCache(affs)
    touched = 0
    for block in grid.blocks():  # read ROIs reach outside the volume at the borders
        got = cache.read(block.read_roi)
        assert np.array_equal(got, affs.read(block.read_roi))
        touched += sum(
            1 for b in grid.blocks() if not b.write_roi.intersect(block.read_roi).empty
        )
    # 36 chunks, each decoded about once per row of blocks, not once per read.
    assert cache.decoded < touched / 2
    # It holds at most what one read touches (3 x 3 x 3 chunks), not the volume.
    assert cache.capacity == 27 and len(cache._chunks) == 27
    # A chunk rewritten since it was cached is decoded again: never stale.
    roi = grid.block(0).write_roi
    affs.write(roi, np.full((3, *roi.shape), 7, np.uint8))
    assert np.all(cache.read(grid.block(0).read_roi)[:, 1:5, 2:12, 2:12] == 7)
    assert np.array_equal(cache.read(Roi((-3, -3, -3), (2, 2, 2))), np.zeros((3, 2, 2, 2)))


def test_chunk_cache_reads_never_written_chunks_as_the_fill_value(tmp_path):
    from volara_assets.storage import ChunkCache

    affs = create_array(
        tmp_path / "c.zarr" / "affs", (8, 20, 20), np.uint8, offset=(0, 0, 0),
        voxel_size=(1, 1, 1), chunks=(4, 10, 10), num_channels=2, fill_value=7,
    )
    affs.write(Roi((0, 0, 0), (4, 10, 10)), np.ones((2, 4, 10, 10), np.uint8))
    cache = ChunkCache(affs)
    roi = Roi((2, 5, 5), (4, 10, 10))  # one written chunk, seven never written
    got = cache.read(roi)
    assert np.array_equal(got, affs.read(roi))
    assert got[0, 0, 0, 0] == 1 and got[1, -1, -1, -1] == 7
    assert cache.decoded == 1  # only the written chunk went through zarr
    # Writing an absent chunk later is seen (its stat changes from absent).
    affs.write(Roi((4, 10, 10), (4, 10, 10)), np.full((2, 4, 10, 10), 3, np.uint8))
    assert cache.read(roi)[1, -1, -1, -1] == 3


def test_chunk_cache_with_a_chunked_channel_axis_and_a_memory_budget(tmp_path):
    from volara_assets.storage import ChunkCache

    rng = np.random.default_rng(1)
    # One chunk per channel (ours always keep channels together; other tools may not).
    z = zarr.create_array(
        str(tmp_path / "c.zarr" / "affs"), shape=(3, 8, 20, 20), chunks=(1, 4, 10, 10),
        dtype="uint8", attributes={"axis_names": ["c^", "z", "y", "x"]},
    )
    z[...] = rng.integers(0, 256, (3, 8, 20, 20), dtype=np.uint8)
    affs = open_array(tmp_path / "c.zarr" / "affs")
    assert affs.channel_dims == 1 and affs.chunks == (1, 4, 10, 10)
    roi = Roi((2, 5, 5), (4, 10, 10))
    cache = ChunkCache(affs)
    assert np.array_equal(cache.read(roi), affs.read(roi))
    # Rewriting only channel 2 of one chunk is seen: every channel chunk is checked.
    z[2, 0:4, 0:10, 0:10] = 9
    assert np.array_equal(cache.read(roi), affs.read(roi))
    assert np.all(cache.read(roi)[2, :2, :5, :5] == 9)
    # Chunks that would not fit in max_bytes are never kept: straight reads.
    small = ChunkCache(affs, max_bytes=1000)
    assert np.array_equal(small.read(roi), affs.read(roi))
    assert small.decoded == 0 and small.capacity == 0 and not small._chunks
