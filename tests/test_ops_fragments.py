import itertools
from collections import deque

import numpy as np
import pytest

from volara_assets.ops import extract_fragments, finish_block, fragment_nodes, seg_to_affgraph

DIRECT = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def perfect_affs(seg, nhood=DIRECT):
    return (seg_to_affgraph(seg, nhood) * 255).astype(np.uint8)


def two_objects():
    seg = np.zeros((4, 6, 8), dtype=np.uint64)
    seg[:, :, :3] = 1
    seg[:, :, 4:] = 2  # x == 3 is background between them
    return seg


def assert_same_partition(fragments, seg):
    """fragments equals seg up to a bijective relabelling of the non-zero ids."""
    np.testing.assert_array_equal(fragments == 0, seg == 0)
    pairs = {(int(f), int(s)) for f, s in zip(fragments.ravel(), seg.ravel(), strict=True)}
    assert len({f for f, _ in pairs}) == len(pairs) == len({s for _, s in pairs})


# -- extract_fragments ---------------------------------------------------------


@pytest.mark.parametrize("as_float", [False, True])
def test_perfect_affinities_give_the_two_objects(as_float):
    seg = two_objects()
    affs = perfect_affs(seg)
    if as_float:
        affs = affs.astype(np.float32) / 255
    fragments = extract_fragments(affs, DIRECT, [-0.5] * 3)
    assert fragments.dtype == np.uint64
    assert fragments.shape == seg.shape
    assert len(np.unique(fragments[fragments > 0])) == 2
    assert_same_partition(fragments, seg)


def test_long_range_offsets_and_strides_still_split_objects():
    seg = two_objects()
    nhood = [*DIRECT, [0, 0, 3], [0, -3, 0]]
    fragments = extract_fragments(
        perfect_affs(seg, nhood),
        nhood,
        [-0.4, -0.4, -0.4, -0.8, -0.8],
        strides=[[1, 1, 1]] * 3 + [[1, 2, 2]] * 2,
    )
    assert_same_partition(fragments, seg)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_all_zero_affinities_give_no_fragments(dtype):
    fragments = extract_fragments(np.zeros((3, 2, 3, 4), dtype), DIRECT, [-0.5] * 3)
    assert fragments.dtype == np.uint64
    np.testing.assert_array_equal(fragments, np.zeros((2, 3, 4)))


def test_noise_is_reproducible_from_the_seed():
    rng = np.random.default_rng(0)
    affs = rng.random((3, 6, 6, 6))
    a = extract_fragments(affs, DIRECT, [-0.5] * 3, noise_eps=0.1, seed=3)
    b = extract_fragments(affs, DIRECT, [-0.5] * 3, noise_eps=0.1, seed=3)
    np.testing.assert_array_equal(a, b)
    c = extract_fragments(affs, DIRECT, [-0.5] * 3, noise_eps=0.1, seed=4)
    assert not np.array_equal(a, c)


def test_mask_removes_the_masked_object():
    seg = two_objects()
    fragments = extract_fragments(perfect_affs(seg), DIRECT, [-0.5] * 3, mask=(seg == 1) * 7)
    assert (fragments[seg == 2] == 0).all()
    assert len(np.unique(fragments[seg == 1])) == 1 and (fragments[seg == 1] != 0).all()


def test_filter_fragments_drops_the_low_affinity_object():
    seg = two_objects()
    affs = perfect_affs(seg).astype(np.float64) / 255
    affs[:, seg == 2] *= 0.7  # object 2 is confident enough to merge, but weakly
    # Mean of the direct affinities over each object's voxels (the quantity filtered).
    direct = affs[:3].mean(axis=0)
    mean_1, mean_2 = direct[seg == 1].mean(), direct[seg == 2].mean()
    assert mean_2 < mean_1
    threshold = (mean_1 + mean_2) / 2
    kept = extract_fragments(affs, DIRECT, [-0.5] * 3)
    assert_same_partition(kept, seg)
    filtered = extract_fragments(affs, DIRECT, [-0.5] * 3, filter_fragments=threshold)
    assert (filtered[seg == 2] == 0).all()
    np.testing.assert_array_equal(filtered[seg == 1], kept[seg == 1])


@pytest.mark.parametrize(("remove_debris", "small_kept"), [(0, True), (8, True), (9, False)])
def test_remove_debris_drops_fragments_below_the_size(remove_debris, small_kept):
    seg = np.zeros((4, 6, 8), dtype=np.uint64)
    seg[:2, :2, :2] = 1  # 8 voxels
    seg[:, 3:, 3:] = 2  # 60 voxels
    affs = perfect_affs(seg)
    fragments = extract_fragments(affs, DIRECT, [-0.5] * 3, remove_debris=remove_debris)
    assert (fragments[seg == 1] != 0).all() == small_kept
    assert (fragments[seg == 1] == 0).all() == (not small_kept)
    assert (fragments[seg == 2] != 0).all()


def test_invalid_inputs_name_the_field():
    affs = np.zeros((3, 2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"bias: expected one value per neighborhood offset \(3\)"):
        extract_fragments(affs, DIRECT, [-0.5, -0.5])
    with pytest.raises(ValueError, match=r"affs: expected 4 dimensions"):
        extract_fragments(affs[0], DIRECT, [-0.5] * 3)
    with pytest.raises(ValueError, match=r"neighborhood: expected one offset per affinity channel"):
        extract_fragments(affs, DIRECT[:2], [-0.5] * 2)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 2, 2\)"):
        extract_fragments(affs, DIRECT, [-0.5] * 3, mask=np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"affs: expected uint8"):
        extract_fragments(affs.astype(np.int16), DIRECT, [-0.5] * 3)


# -- finish_block ----------------------------------------------------------------


def bfs_components(labels):
    """Reference: 26-connected components of equal non-zero label, ids in raster order."""
    out = np.zeros(labels.shape, dtype=np.uint64)
    steps = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
    n = 0
    for start in itertools.product(*(range(s) for s in labels.shape)):
        if labels[start] == 0 or out[start]:
            continue
        n += 1
        out[start] = n
        queue = deque([start])
        while queue:
            p = queue.popleft()
            for d in steps:
                q = tuple(a + b for a, b in zip(p, d, strict=True))
                if all(0 <= x < s for x, s in zip(q, labels.shape, strict=True)):
                    if labels[q] == labels[start] and not out[q]:
                        out[q] = n
                        queue.append(q)
    return out, n


@pytest.mark.parametrize("seed", range(8))
def test_finish_block_matches_bfs_labeller(seed):
    rng = np.random.default_rng(seed)
    fragments = rng.integers(0, 4, (6, 7, 8)).astype(np.uint64)
    fragments *= rng.random(fragments.shape) < 0.6  # sparse, so components split
    write = (slice(1, 5), slice(0, 7), slice(2, 8))
    id_base = 3 * 4 * 7 * 6
    expected, n = bfs_components(fragments[write])
    expected[expected > 0] += id_base
    out = finish_block(fragments, write, id_base)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, expected)
    nonzero = out[out > 0]
    assert nonzero.min() == id_base + 1 and nonzero.max() == id_base + n
    assert n <= out.size
    np.testing.assert_array_equal(finish_block(fragments, write, id_base), out)  # deterministic


def test_finish_block_hand_example():
    fragments = np.zeros((2, 3, 5), dtype=np.uint64)
    fragments[0, 0, 0] = 5
    fragments[1, 1, 1] = 5  # corner-touching: the same component under 26-connectivity
    fragments[0, 0, 4] = 5  # same id, not touching: a new fragment
    fragments[0, 2, 4] = 9
    out = finish_block(fragments, (slice(0, 2), slice(0, 3), slice(0, 5)), 1000)
    assert out[0, 0, 0] == out[1, 1, 1] == 1001
    assert out[0, 0, 4] == 1002  # ids follow the first voxel in raster order
    assert out[0, 2, 4] == 1003
    assert np.count_nonzero(out) == 4


def test_finish_block_crop_splits_a_fragment_joined_only_in_the_context():
    fragments = np.zeros((1, 3, 5), dtype=np.uint64)
    fragments[0, 0, :] = 4  # a U shape: the bottom row joins the two arms
    fragments[0, :, 0] = 4
    fragments[0, :, 4] = 4
    out = finish_block(fragments, (slice(0, 1), slice(1, 3), slice(0, 5)), 0)
    np.testing.assert_array_equal(out, [[[1, 0, 0, 0, 2], [1, 0, 0, 0, 2]]])


def test_finish_block_rejects_bad_slices():
    with pytest.raises(ValueError, match="write_slices"):
        finish_block(np.zeros((2, 2, 2), np.uint64), (slice(0, 2), slice(0, 3), slice(0, 2)), 0)


# -- fragment_nodes --------------------------------------------------------------


def test_fragment_nodes_exact_centroids_and_sizes():
    fragments = np.zeros((3, 3, 3), dtype=np.uint64)
    fragments[0, 0, 0] = fragments[0, 0, 2] = 7  # mean index (0, 0, 1)
    fragments[2, 1, 0] = fragments[2, 2, 0] = fragments[1, 2, 0] = 5  # (5/3, 5/3, 0)
    big = 2**62 + 3
    fragments[1, 1, 1] = big
    nodes = fragment_nodes(fragments, origin=(100, 200, 300), voxel_size=(40, 4, 2))
    assert nodes.ids.dtype == np.uint64
    assert nodes.ids.tolist() == [5, 7, big]
    assert nodes.sizes.tolist() == [3, 2, 1]
    np.testing.assert_allclose(
        nodes.positions,
        [
            [100 + 40 * 5 / 3, 200 + 4 * 5 / 3, 300],
            [100, 200, 302],
            [140, 204, 302],
        ],
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("base", [0, 2**62])
def test_fragment_nodes_of_a_finished_block_match_a_per_id_reference(base):
    """A block's consecutive ids take the one-pass dense path: exact sizes and centroids."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 6, (5, 9, 11)).astype(np.uint64)
    labels = finish_block(raw, (slice(0, 5), slice(0, 9), slice(0, 11)), base)
    nodes = fragment_nodes(labels, origin=(10, 20, 30), voxel_size=(4, 2, 1))
    ids = np.unique(labels[labels > 0])
    assert nodes.ids.dtype == np.uint64 and nodes.ids.tolist() == ids.tolist()
    assert len(ids) > 20 and ids.min() == base + 1
    for i, fid in enumerate(ids):
        where = np.argwhere(labels == fid)
        assert nodes.sizes[i] == len(where)
        expected = np.array([10, 20, 30]) + np.array([4, 2, 1]) * where.mean(axis=0)
        np.testing.assert_allclose(nodes.positions[i], expected, rtol=0, atol=1e-9)


def test_fragment_nodes_empty():
    nodes = fragment_nodes(np.zeros((2, 2, 2), np.uint64), (0, 0, 0), (1, 1, 1))
    assert len(nodes) == 0
