import itertools

import numpy as np
import pytest

from volara_assets.ops import seg_to_affgraph


def brute_force_affs(seg, nhood):
    affs = np.zeros((len(nhood), *seg.shape), dtype=np.int32)
    for c, offset in enumerate(nhood):
        for i in itertools.product(*(range(s) for s in seg.shape)):
            j = tuple(a + o for a, o in zip(i, offset, strict=True))
            if not all(0 <= x < s for x, s in zip(j, seg.shape, strict=True)):
                continue
            affs[(c, *i)] = int(seg[i] != 0 and seg[i] == seg[j])
    return affs


def test_matches_triple_loop_with_negative_and_long_offsets():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 3, (4, 5, 6))
    nhood = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, -2, 1], [-1, 0, -3], [0, 0, 7]]
    affs = seg_to_affgraph(seg, nhood)
    assert affs.dtype == np.int32
    assert affs.shape == (6, 4, 5, 6)
    np.testing.assert_array_equal(affs, brute_force_affs(seg, nhood))
    # An offset longer than the axis has no in-volume pair at all.
    assert not affs[5].any()


def test_2d_and_hand_checked_values():
    seg = np.array([[1, 1, 0], [2, 2, 2]])
    affs = seg_to_affgraph(seg, [[0, 1], [-1, 0]])
    np.testing.assert_array_equal(affs[0], [[1, 0, 0], [1, 1, 0]])
    # (-1, 0): voxel (1, j) with (0, j); only equal non-zero pairs count -> none.
    np.testing.assert_array_equal(affs[1], np.zeros((2, 3)))
    np.testing.assert_array_equal(affs, brute_force_affs(seg, [[0, 1], [-1, 0]]))


def test_offset_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="nhood"):
        seg_to_affgraph(np.zeros((3, 3, 3), int), [[1, 0]])
