"""Per-partition digests of segment ids: they change exactly where a segments block would."""

import numpy as np

from volara_assets.geometry import BlockGrid
from volara_assets.runtime.segment_ids import segment_id_digests

# 2 x 1 x 1 blocks of 10 voxels each way: ids of block 0 are 1..1000, of block 1 1001..2000.
GRID = BlockGrid(shape=(20, 10, 10), block_size=(10, 10, 10), context=(1, 1, 1))
IDS = np.array([1, 2, 3, 1001, 1002], dtype=np.uint64)


def lut(*segments: int) -> np.ndarray:
    return np.array([IDS, np.array(segments, dtype=np.uint64)])


def test_a_join_changes_only_the_blocks_whose_ids_move() -> None:
    before = segment_id_digests(GRID, IDS, lut(1, 2, 3, 1001, 1001))
    assert set(before) == {"z0_y0_x0", "z1_y0_x0"}
    # Fragment 3 joins segment 1001 (whose smallest id is now 3): block 1's ids move,
    # block 0's do not (3 keeps id 3).
    joined = segment_id_digests(GRID, IDS, lut(1, 2, 3, 3, 3))
    assert joined["z0_y0_x0"] == before["z0_y0_x0"]
    assert joined["z1_y0_x0"] != before["z1_y0_x0"]
    # Order of the node ids and of the LUT columns does not matter.
    order = np.array([4, 0, 3, 1, 2])
    shuffled = lut(1, 2, 3, 3, 3)[:, order]
    assert segment_id_digests(GRID, IDS[order[::-1]], shuffled) == joined


def test_the_salt_stands_for_rewritten_fragments_and_empty_blocks_have_a_digest() -> None:
    table = lut(1, 1, 1, 1001, 1001)
    plain = segment_id_digests(GRID, IDS, table)
    salted = segment_id_digests(GRID, IDS, table, {"z1_y0_x0": "run-2"})
    assert salted["z0_y0_x0"] == plain["z0_y0_x0"] and salted["z1_y0_x0"] != plain["z1_y0_x0"]
    # Block 1 loses its fragments: its digest changes, block 0's does not.
    only_first = segment_id_digests(GRID, IDS[:3], table)
    assert only_first["z0_y0_x0"] == plain["z0_y0_x0"]
    assert only_first["z1_y0_x0"] != plain["z1_y0_x0"]
    assert (
        segment_id_digests(GRID, np.zeros(0, np.uint64), table)["z1_y0_x0"]
        == (only_first["z1_y0_x0"])
    )


def test_bricks_hash_every_block_of_the_partition() -> None:
    grid = BlockGrid(
        shape=(20, 10, 10),
        block_size=(10, 10, 10),
        context=(1, 1, 1),
        blocks_per_partition=(2, 1, 1),
    )
    assert grid.partition_keys == ["z0_y0_x0"]
    a = segment_id_digests(grid, IDS, lut(1, 2, 3, 1001, 1001))
    b = segment_id_digests(grid, IDS, lut(1, 2, 3, 3, 3))
    assert a != b  # block 1's move is inside the one brick
