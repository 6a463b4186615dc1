"""Block grid: ROIs, keys, neighbours and bricks on a small anisotropic volume."""

import pytest

from volara_assets.geometry import BlockGrid, Roi


def grid(**kw):
    args = dict(
        shape=(50, 120, 90),
        block_size=(20, 50, 50),
        context=(2, 3, 4),
        offset=(290, 0, 520),
        voxel_size=(290, 260, 260),
    )
    args.update(kw)
    return BlockGrid(**args)


def test_grid_shape_and_edge_blocks_are_clipped():
    g = grid()
    assert g.grid_shape == (3, 3, 2)
    assert g.num_blocks == 18
    last = g.block(17)
    assert last.coords == (2, 2, 1)
    assert last.write_roi == Roi((40, 100, 50), (10, 20, 40))
    assert last.read_roi == Roi((38, 97, 46), (14, 26, 48))
    first = g.block(0)
    assert first.read_roi == Roi((-2, -3, -4), (24, 56, 58))


def test_keys_sort_in_z_major_order():
    g = grid(shape=(200, 120, 90), block_size=(10, 50, 50), context=(1, 1, 1))
    keys = [b.key for b in g.blocks()]
    assert keys == sorted(keys)
    assert keys == g.partition_keys
    assert keys[0] == "z00_y00_x00" and keys[-1] == "z19_y02_x01"


def test_neighbours_interior_and_corner():
    g = BlockGrid(shape=(30, 30, 30), block_size=(10, 10, 10), context=(1, 1, 1))
    assert len(g.block_neighbours(13)) == 26
    assert 13 not in g.block_neighbours(13)
    assert g.block_neighbours(0) == [1, 3, 4, 9, 10, 12, 13]


def test_world_coordinates_and_roi_from_world():
    g = grid()
    b = g.block(1)
    assert g.world_roi(b.write_roi) == ((290, 0, 520 + 50 * 260), (20 * 290, 50 * 260, 40 * 260))
    assert g.roi_from_world((290 + 290, 260, 520), (290, 520, 260)) == Roi((1, 1, 0), (1, 2, 1))
    with pytest.raises(ValueError, match="multiples of voxel_size"):
        g.roi_from_world((291, 0, 520), (290, 260, 260))


def test_fragment_ids_map_back_to_their_block():
    g = grid()
    base = g.fragment_id_base(5)
    assert base == 5 * 20 * 50 * 50
    assert g.block_of_fragment([base + 1, base + g.voxels_per_block]).tolist() == [5, 5]


def test_blocks_touching_a_changed_region():
    g = BlockGrid(shape=(30, 30, 30), block_size=(10, 10, 10), context=(2, 2, 2))
    # deep inside block 13 (the centre): only it reads there
    assert g.blocks_touching(Roi((14, 14, 14), (2, 2, 2))) == [13]
    # within 2 voxels of the face to block 22 (z+1): both read it
    assert g.blocks_touching(Roi((18, 14, 14), (1, 1, 1))) == [13, 22]


def test_partitions_a_sub_volume_writes():
    g = BlockGrid(shape=(30, 30, 30), block_size=(10, 10, 10), context=(2, 2, 2))
    # one voxel on each side of the z face between blocks 13 and 22: both write there
    assert g.partitions_writing(Roi((9, 14, 14), (2, 1, 1))) == ["z0_y1_x1", "z1_y1_x1"]
    # ending exactly at the face: context does not count, block 22 writes nothing there
    assert g.partitions_writing(Roi((10, 10, 10), (10, 10, 10))) == ["z1_y1_x1"]
    # clipped to the volume; outside it nothing
    assert g.partitions_writing(Roi((25, 25, 25), (50, 50, 50))) == ["z2_y2_x2"]
    assert g.partitions_writing(Roi((30, 0, 0), (5, 5, 5))) == []
    bricks = BlockGrid(
        shape=(40, 40, 40), block_size=(10, 10, 10), blocks_per_partition=(2, 2, 2)
    )
    assert bricks.partitions_writing(Roi((15, 0, 0), (10, 1, 1))) == ["z0_y0_x0", "z1_y0_x0"]


def test_bricks_group_blocks_into_partitions():
    g = BlockGrid(
        shape=(40, 40, 40),
        block_size=(10, 10, 10),
        context=(1, 1, 1),
        blocks_per_partition=(2, 2, 2),
    )
    assert len(g.partition_keys) == 8
    blocks = g.partition_blocks("z1_y1_x1")
    assert [b.coords for b in blocks][0] == (2, 2, 2) and len(blocks) == 8
    assert g.partition_of_block(blocks[-1].index) == "z1_y1_x1"
    assert len(g.partition_neighbours("z0_y0_x0")) == 7


def test_auto_bricks_keep_small_grids_per_block_and_bound_large_ones():
    from volara_assets.geometry import auto_blocks_per_partition

    # Small grids (<= 1024 blocks): one block per partition, whatever the block size.
    assert auto_blocks_per_partition((3, 3, 3), (20, 100, 100)) == (1, 1, 1)
    assert auto_blocks_per_partition((8, 8, 16), (8, 32, 32)) == (1, 1, 1)
    # 8,000 tiny (8, 32, 32) blocks: 4 x 4 x 4 = 2**19 voxels per brick, 125 partitions.
    g = BlockGrid((160, 640, 640), (8, 32, 32), blocks_per_partition="auto")
    assert g.blocks_per_partition == (4, 4, 4) and len(g.partition_keys) == 125
    # Blocks already >= 2**19 voxels on a 300 x 300 x 2 grid: bricks only to stay
    # under 4096 partitions, never thicker than the grid along z.
    g = BlockGrid((64, 38400, 38400), (32, 128, 128), blocks_per_partition="auto")
    assert g.blocks_per_partition == (2, 8, 4)
    assert g.partition_grid_shape == (1, 38, 75)  # 2850 partitions
    # A million blocks: bricks of 8 x 8 x 8, 13**3 = 2197 partitions.
    assert auto_blocks_per_partition((100, 100, 100), (8, 32, 32)) == (8, 8, 8)


@pytest.mark.parametrize(
    "offsets",
    [
        [(1, 0, 0), (0, 1, 0), (0, 0, 1)],
        [(1, 0, 0), (0, 3, 0), (0, 0, 3)],
        [(1, 1, 1), (0, 2, 1)],
        [(0, 0, -1), (1, 0, 0)],
        [(0, 0, 0)],
    ],
)
@pytest.mark.parametrize(
    ("shape", "bricks"),
    [((40, 128, 96), (2, 2, 1)), ((37, 100, 70), (1, 1, 1)), ((17, 33, 200), (3, 1, 2))],
)
def test_partition_pair_reads_equal_the_block_by_block_reads(offsets, shape, bricks):
    # Clipped last blocks, partial last bricks, axes of one or two partitions.
    g = BlockGrid(shape, (8, 32, 32), context=(3, 3, 3), blocks_per_partition=bricks)
    fast = g.partition_pair_reads(offsets)
    reference = g._partition_pair_reads_by_block(offsets, g.partition_keys)
    assert list(fast) == g.partition_keys
    assert fast == reference


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"context": (21, 0, 0)}, "context: must be <= block_size"),
        ({"offset": (100, 0, 0)}, "offset: must be a multiple of voxel_size"),
        ({"block_size": (0, 1, 1)}, "block_size: every entry must be >= 1"),
        ({"shape": (1, 2)}, "shape: expected 3 integers"),
    ],
)
def test_bad_grid_names_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        grid(**kw)


def test_pair_read_forward_offsets_read_own_block_and_upper_face_slabs():
    g = BlockGrid(shape=(30, 30, 30), block_size=(10, 10, 10), context=(2, 2, 2))
    plan = g.pair_read(13, [(1, 0, 0), (0, 1, 0), (0, 0, 2)])
    assert plan.box == Roi((10, 10, 10), (11, 11, 12))
    assert plan.affinities == Roi((10, 10, 10), (10, 10, 10))
    assert plan.fragments == (
        Roi((10, 10, 10), (10, 10, 10)),
        Roi((20, 10, 10), (1, 10, 10)),
        Roi((10, 20, 10), (10, 1, 10)),
        Roi((10, 10, 20), (10, 10, 2)),
    )
    # A negative component can start a pair in an earlier block: the whole read ROI.
    back = g.pair_read(13, [(1, 0, 0), (0, -1, 0)])
    assert back.fragments == (g.block(13).read_roi,) and back.affinities == g.block(13).read_roi


def test_partition_pair_reads_follow_the_read():
    g = BlockGrid(shape=(30, 30, 30), block_size=(10, 10, 10), context=(2, 2, 2))
    centre = "z1_y1_x1"
    # Axis-aligned forward offsets: itself and the three upper face neighbours.
    assert g.partition_pair_reads([(1, 0, 0), (0, 1, 0), (0, 0, 1)])[centre] == {
        "z1_y1_x1",
        "z2_y1_x1",
        "z1_y2_x1",
        "z1_y1_x2",
    }
    # A diagonal forward offset reaches the forward 2 x 2 x 2 box.
    assert g.partition_pair_reads([(1, 1, 1)])[centre] == {
        f"z{z}_y{y}_x{x}" for z in (1, 2) for y in (1, 2) for x in (1, 2)
    }
    # A last block reads only itself; a negative offset needs all 26 neighbours.
    assert g.partition_pair_reads([(1, 0, 0)])["z2_y2_x2"] == {"z2_y2_x2"}
    assert len(g.partition_pair_reads([(-1, 0, 0)])[centre]) == 27


def test_partitions_reading_and_partition_read_roi():
    g = BlockGrid(
        shape=(40, 40, 40),
        block_size=(10, 10, 10),
        context=(2, 2, 2),
        blocks_per_partition=(2, 2, 2),
    )
    assert g.partition_read_roi("z0_y0_x0") == Roi((-2, -2, -2), (24, 24, 24))
    assert g.partitions_reading(Roi((5, 5, 5), (1, 1, 1))) == ["z0_y0_x0"]
    # 1 voxel from the brick's upper x face: the x neighbour's context reads it too.
    assert g.partitions_reading(Roi((5, 5, 19), (1, 1, 1))) == ["z0_y0_x0", "z0_y0_x1"]
